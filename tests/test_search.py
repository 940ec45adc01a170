import pytest
import torch
import torch.nn.functional as F

from vqkit.search import chunk_rows, nearest_code


def brute_force(x, codes, metric):
    x, codes = x.float().reshape(-1, x.shape[-1]), codes.float()
    if metric == "cosine":
        x, codes = F.normalize(x, dim=-1), F.normalize(codes, dim=-1)
    d = torch.cdist(x.double(), codes.double()).pow(2)
    return d.argmin(1), d.min(1).values.float()


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("shape,k", [((7, 5), 3), ((3, 50, 16), 64), ((2, 4, 6, 8), 257), ((1000, 32), 1000)])
@pytest.mark.parametrize("chunk", [None, 1, 13])
def test_matches_cdist_argmin(metric, shape, k, chunk):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g)
    codes = torch.randn(k, shape[-1], generator=g)
    res = nearest_code(x, codes, metric, chunk_size=chunk)
    ref_idx, ref_dist = brute_force(x, codes, metric)
    assert res.indices.shape == shape[:-1] and res.indices.dtype == torch.int64
    assert res.distances.dtype == torch.float32
    assert torch.equal(res.indices.reshape(-1), ref_idx)
    torch.testing.assert_close(res.distances.reshape(-1), ref_dist, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_are_searched_in_fp32(metric, dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(512, 32, generator=g).to(dtype)
    codes = torch.randn(300, 32, generator=g).to(dtype)
    res = nearest_code(x, codes, metric, chunk_size=100)
    ref_idx, _ = brute_force(x, codes, metric)  # fp64 on the same (rounded) values
    assert torch.equal(res.indices.reshape(-1), ref_idx)
    assert res.distances.dtype == torch.float32


def test_fp16_large_norms_do_not_overflow():
    g = torch.Generator().manual_seed(2)
    codes = (torch.randn(64, 16, generator=g) * 300).half()  # squared norms ~ 1.4e6 >> 65504
    x = (codes[torch.arange(64).flip(0)].float() + torch.randn(64, 16, generator=g)).half()
    res = nearest_code(x, codes)
    assert torch.isfinite(res.distances).all()
    assert torch.equal(res.indices, torch.arange(64).flip(0))


def test_autocast_does_not_lower_search_precision():
    g = torch.Generator().manual_seed(3)
    x, codes = torch.randn(2048, 64, generator=g), torch.randn(512, 64, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        res = nearest_code(x, codes)
    assert torch.equal(res.indices, brute_force(x, codes, "euclidean")[0])


def test_ties_go_to_lowest_index():
    codes = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    x = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    assert nearest_code(x, codes).indices.tolist() == [0, 0]


def test_chunk_rows_follows_budget():
    assert chunk_rows(1024, memory_budget=4 * 1024 * 10) == 10
    assert chunk_rows(10**9, memory_budget=1) == 1


def test_empty_input():
    res = nearest_code(torch.zeros(0, 4), torch.randn(3, 4))
    assert res.indices.shape == (0,) and res.distances.shape == (0,)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="metric"):
        nearest_code(torch.randn(2, 3), torch.randn(4, 3), "manhattan")
    with pytest.raises(ValueError, match=r"x: expected shape \(\.\.\., 3\)"):
        nearest_code(torch.randn(2, 5), torch.randn(4, 3))
    with pytest.raises(ValueError, match="codebook"):
        nearest_code(torch.randn(2, 3), torch.randn(3))
    with pytest.raises(TypeError, match="floating"):
        nearest_code(torch.ones(2, 3, dtype=torch.int64), torch.randn(4, 3))
