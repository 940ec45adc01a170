"""Every code path of the tuned torch search against brute force: chunk plans, blocked argmin, padding,
code blocks, the augmented matmul, dtypes, ties, and the custom op used under torch.compile.

Speed lives in the benchmark (``vqkit bench``); these tests check correctness only.
"""

import pytest
import torch
import torch.nn.functional as F

from vqkit.search import DEFAULT_MEMORY_BUDGET, SearchPlan, nearest_code, plan_search


def brute(x, codes, metric="euclidean"):
    x, codes = x.double().reshape(-1, x.shape[-1]), codes.double()
    if metric == "cosine":
        x, codes = F.normalize(x, dim=-1), F.normalize(codes, dim=-1)
    d = torch.cdist(x, codes).pow(2)
    return d.argmin(1), d


def assert_nearest(res, x, codes, metric="euclidean", tol=1e-4):
    """Indices equal brute force, except where two codes are within ``tol`` (relative) of each other."""
    ref, d = brute(x, codes, metric)
    idx = res.indices.reshape(-1)
    assert idx.dtype == torch.int64 and int(idx.min()) >= 0 and int(idx.max()) < codes.shape[0]
    rows = torch.arange(idx.numel())
    gap = (d[rows, idx] - d[rows, ref]).abs()
    scale = d[rows, ref].abs().clamp_min(1.0)
    assert bool((gap <= tol * scale).all()), f"{int((idx != ref).sum())} rows pick a farther code"
    assert (idx == ref).float().mean() > 0.99
    torch.testing.assert_close(res.distances.reshape(-1).double(), d[rows, ref], atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("k", [1, 5, 255, 256, 300, 1000, 4096, 4097, 5000])
@pytest.mark.parametrize("d", [3, 16, 17, 64])
def test_auto_plan_matches_brute_force(metric, k, d):
    g = torch.Generator().manual_seed(k * 100 + d)
    x = torch.randn(333, d, generator=g)
    codes = torch.randn(k, d, generator=g)
    assert_nearest(nearest_code(x, codes, metric), x, codes, metric)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("rows,code_chunk", [(1, None), (7, None), (64, 64), (50, 256), (1000, 1024), (3, 4352)])
@pytest.mark.parametrize("d", [8, 48])
def test_forced_chunks_and_code_blocks(metric, rows, code_chunk, d):
    g = torch.Generator().manual_seed(rows + d)
    x = torch.randn(200, d, generator=g)
    codes = torch.randn(4200, d, generator=g)  # reduce block 256, padded to 4352
    res = nearest_code(x, codes, metric, chunk_size=rows, code_chunk_size=code_chunk)
    assert_nearest(res, x, codes, metric)


def test_code_blocks_with_plain_min_and_partial_reduce_blocks():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(97, 12, generator=g)
    for k, block in ((200, 7), (200, 64), (700, 128), (700, 320), (9000, 2560)):
        codes = torch.randn(k, 12, generator=g)
        assert_nearest(nearest_code(x, codes, code_chunk_size=block), x, codes)


def test_small_memory_budget_splits_the_codes():
    plan = plan_search(10_000, 65536, 64, memory_budget=2**20)
    assert plan.code_block < plan.padded_codes and plan.block_bytes <= 2**20
    g = torch.Generator().manual_seed(6)
    x = torch.randn(100, 8, generator=g)
    codes = torch.randn(6000, 8, generator=g)
    small = plan_search(100, 6000, 8, memory_budget=128 * 1024)
    assert small.code_block == 2048 and small.rows == 16
    assert_nearest(nearest_code(x, codes, memory_budget=128 * 1024), x, codes)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("k", [100, 600, 5000])
def test_dtypes_are_searched_in_fp32(dtype, k):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(256, 24, generator=g).to(dtype)
    codes = torch.randn(k, 24, generator=g).to(dtype)
    res = nearest_code(x, codes)
    # at least fp32; fp64 inputs are searched in fp64
    assert res.distances.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert_nearest(res, x, codes)


def test_mixed_input_and_codebook_dtypes():
    g = torch.Generator().manual_seed(8)
    x = torch.randn(128, 32, generator=g).bfloat16()
    codes = torch.randn(700, 32, generator=g)
    assert_nearest(nearest_code(x, codes), x, codes)


@pytest.mark.parametrize("code_chunk", [None, 256, 1024])
def test_ties_go_to_lowest_index_across_blocks(code_chunk):
    g = torch.Generator().manual_seed(9)
    codes = torch.randn(5000, 6, generator=g) * 10
    target = torch.tensor([0.5, -0.25, 0.0, 1.0, 2.0, -1.0])
    for i in (4999, 3000, 1300, 700):  # in different reduce blocks and code blocks
        codes[i] = target
    x = target.repeat(12, 1)
    res = nearest_code(x, codes, code_chunk_size=code_chunk, chunk_size=5)
    assert res.indices.tolist() == [700] * 12


def test_ties_within_one_reduce_block():
    codes = torch.randn(512, 4) * 10
    codes[70] = codes[65] = codes[127] = torch.ones(4)
    assert nearest_code(torch.ones(3, 4), codes).indices.tolist() == [65] * 3


def test_padding_never_wins_even_for_far_queries():
    g = torch.Generator().manual_seed(10)
    codes = torch.randn(4097, 4, generator=g)  # padded to 4352 with +inf scores
    x = torch.randn(64, 4, generator=g) * 1e4  # huge norms
    assert_nearest(nearest_code(x, codes), x, codes)
    codes2 = torch.zeros(300, 4)  # all ties: lowest index
    assert nearest_code(torch.randn(9, 4), codes2).indices.tolist() == [0] * 9


def test_nan_input_gives_in_range_indices():
    x = torch.randn(50, 8)
    x[3, 2] = float("nan")
    for k in (10, 300, 5000):
        res = nearest_code(x, torch.randn(k, 8))
        assert int(res.indices.min()) >= 0 and int(res.indices.max()) < k
        assert torch.isnan(res.distances[3])


@pytest.mark.parametrize("n,k,d", [(1, 1, 1), (32768, 65536, 8), (32768, 65536, 256), (4096, 512, 64),
                                   (10**6, 8192, 64), (100, 2**20, 16)])
@pytest.mark.parametrize("budget", [2**16, 2**20, DEFAULT_MEMORY_BUDGET])
def test_plan_respects_the_budget_and_not_n(n, k, d, budget):
    plan = plan_search(n, k, d, memory_budget=budget)
    assert isinstance(plan, SearchPlan)
    assert plan.block_bytes <= max(budget, 4 * plan.reduce_block)  # one reduce block is the smallest unit
    assert 1 <= plan.rows <= n and plan.code_block <= plan.padded_codes
    if plan.reduce_block:
        assert plan.padded_codes % plan.reduce_block == 0 and plan.code_block % plan.reduce_block == 0
    big = plan_search(100 * n, k, d, memory_budget=budget)
    assert big.block_bytes <= max(budget, 4 * big.reduce_block)


def test_plan_shapes():
    assert plan_search(32768, 512, 8).augmented and not plan_search(32768, 512, 64).augmented
    assert plan_search(32768, 8192, 64).reduce_block == 256
    assert plan_search(32768, 512, 64).reduce_block == 64
    assert plan_search(32768, 100, 64).reduce_block == 0
    assert plan_search(5, 8192, 64).rows == 5


def test_bad_chunk_arguments_are_named():
    x, c = torch.randn(4, 3), torch.randn(5, 3)
    with pytest.raises(ValueError, match="chunk_size"):
        nearest_code(x, c, chunk_size=0)
    with pytest.raises(ValueError, match="code_chunk_size"):
        nearest_code(x, c, code_chunk_size=-1)
    with pytest.raises(ValueError, match="memory_budget"):
        nearest_code(x, c, memory_budget=0)
    with pytest.raises(ValueError, match="backend"):
        nearest_code(x, c, backend="cuda")
    with pytest.raises(ValueError, match="one device"):
        nearest_code(x, c.to("meta"))


def test_triton_backend_without_triton_or_cuda_raises(monkeypatch):
    import vqkit.search as search

    monkeypatch.setattr(search, "triton_available", lambda: False)
    with pytest.raises(RuntimeError, match="triton"):
        nearest_code(torch.randn(4, 3), torch.randn(5, 3), backend="triton")


def test_auto_backend_uses_torch_on_cpu(monkeypatch):
    import vqkit.search as search

    called = []
    monkeypatch.setattr(search, "_torch_search", lambda *a: called.append(1) or (torch.zeros(4, dtype=torch.int64),
                                                                                  torch.zeros(4)))
    nearest_code(torch.randn(4, 3), torch.randn(5, 3))
    assert called


def test_custom_op_matches_eager_and_passes_opcheck():
    g = torch.Generator().manual_seed(11)
    x, codes = torch.randn(300, 16, generator=g), torch.randn(700, 16, generator=g)
    idx, dist = torch.ops.vqkit.nearest_code(x, codes, "euclidean", "torch", 0, 0, DEFAULT_MEMORY_BUDGET)
    ref = nearest_code(x, codes)
    assert torch.equal(idx, ref.indices)
    torch.testing.assert_close(dist, ref.distances)
    small = (x[:20, :4].contiguous(), codes[:300, :4].contiguous(), "cosine", "torch", 7, 256, 2**20)
    torch.library.opcheck(torch.ops.vqkit.nearest_code.default, small,
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


def test_search_does_not_track_gradients_or_autocast():
    x = torch.randn(64, 8, requires_grad=True)
    codes = torch.randn(300, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        res = nearest_code(x, codes)
    assert not res.indices.requires_grad and not res.distances.requires_grad
    assert res.distances.dtype == torch.float32
    assert_nearest(res, x.detach(), codes.detach())


# ---------------------------------------------------------------------------------------------
# the benchmark harness (vqkit bench): a smoke test of one in-process case and of the report
# ---------------------------------------------------------------------------------------------


def test_bench_worker_and_report_smoke():
    from vqkit.bench.report import evaluate_targets, to_markdown
    from vqkit.bench.worker import choose_reps, run

    assert choose_reps(0.001, 6.0, 3, 9) == 9 and choose_reps(3.0, 6.0, 3, 9) == 3
    assert choose_reps(20.0, 6.0, 3, 9) == 1
    results = []
    for kind in ("floor", "floor_chunked", "vqkit_plain", "vqkit_paper"):
        r = run({"kind": kind, "n": 64, "k": 512, "d": 8, "reps": 1, "warmup": 1, "second_warmup_below": 0})
        assert r["median_s"] > 0 and r["baseline_rss"] > 0 and r["reps"] == 1
        r["status"] = "ok"
        results.append(r)
    data = {"command": "test", "grid": "quick", "machine": {"date": "-", "cpu_model": "cpu", "cpus_usable": 1,
            "cpu_count": 1, "caches": "", "mem_total_bytes": 2**30, "platform": "", "torch": torch.__version__,
            "torch_threads": 1, "mkl": True, "cpu_capability": "", "python": "", "vector_quantize_pytorch": None,
            "cuda": None, "vqkit_commit": None}, "settings": {"max_others_cpu": 0.15, "retries": 0, "min_reps": 1,
            "budget_s": 1.0}, "descriptions": {}, "results": results + [
                {"spec": {"kind": "peer_ema", "n": 64, "k": 512, "d": 8}, "status": "skipped", "reason": "x"}]}
    md = to_markdown(data)
    assert "| 64 | 512 | 8 |" in md and "skipped" in md
    assert any(t["worst"] is not None for t in evaluate_targets(data))
