"""The fused Triton search: under Triton's CPU interpreter when triton is installed (no GPU needed), and on
CUDA (``-m cuda``, skipped without a device). Indices must equal the torch path except where two codes are
(near-)tied: the two paths sum the distance terms in different orders."""

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

HAS_TRITON = importlib.util.find_spec("triton") is not None
HAS_CUDA = torch.cuda.is_available()
SRC = str(Path(__file__).resolve().parents[1] / "src")


def _gap_ok(x, codes, idx, ref, metric, tol):
    x, codes = x.double(), codes.double()
    if metric == "cosine":
        x, codes = F.normalize(x, dim=-1), F.normalize(codes, dim=-1)
    d = torch.cdist(x, codes).pow(2)
    rows = torch.arange(x.shape[0], device=x.device)
    gap = (d[rows, idx] - d[rows, ref]).abs()
    return bool((gap <= tol * d[rows, ref].abs().clamp_min(1.0)).all())


_INTERPRETER_SCRIPT = textwrap.dedent(
    """
    import os, sys
    os.environ["TRITON_INTERPRET"] = "1"
    sys.path.insert(0, {src!r})
    import torch
    import torch.nn.functional as F
    from vqkit.kernels.triton_search import triton_nearest_code
    from vqkit.search import nearest_code

    def gap_ok(x, codes, idx, ref, metric, tol):
        x, codes = x.double(), codes.double()
        if metric == "cosine":
            x, codes = F.normalize(x, dim=-1), F.normalize(codes, dim=-1)
        d = torch.cdist(x, codes).pow(2)
        rows = torch.arange(x.shape[0])
        return bool(((d[rows, idx] - d[rows, ref]).abs() <= tol * d[rows, ref].abs().clamp_min(1.0)).all())

    g = torch.Generator().manual_seed(0)
    checked = 0
    for n, k, d in [(37, 100, 5), (64, 300, 32), (130, 700, 16), (5, 3, 7), (1, 64, 40)]:
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            x = torch.randn(n, d, generator=g).to(dtype)
            codes = torch.randn(k, d, generator=g).to(dtype)
            for metric in ("euclidean", "cosine"):
                for splits in (None, 1, 3):
                    idx, dist = triton_nearest_code(x, codes, metric, splits=splits)
                    ref = nearest_code(x, codes, metric, backend="torch")
                    assert idx.dtype == torch.int64 and dist.dtype == torch.float32
                    assert gap_ok(x.float(), codes.float(), idx, ref.indices, metric, 1e-5), (n, k, d, dtype, metric)
                    assert (idx == ref.indices).float().mean() > 0.98
                    torch.testing.assert_close(dist, ref.distances, atol=1e-3, rtol=1e-4)
                    checked += 1
    # a large shared offset (spread 1): the centered kernel picks the fp64 brute-force nearest code
    for offset in (1e3, 1e4):
        x = torch.randn(300, 16, generator=g) + offset
        codes = torch.randn(128, 16, generator=g) + offset
        idx, dist = triton_nearest_code(x, codes, splits=2)
        ref = torch.cdist(x.double(), codes.double()).pow(2)
        rows = torch.arange(300)
        assert bool(((ref[rows, idx] - ref.min(1).values) <= 1e-3 * ref.min(1).values).all()), offset
        torch.testing.assert_close(dist.double(), ref.min(1).values, atol=offset * 1e-4, rtol=1e-3)
    # ties: lowest index, within a tile, across tiles and across splits
    codes = torch.randn(700, 8, generator=g) * 10
    for i in (650, 300, 70, 65):
        codes[i] = 1.0
    for splits in (1, 3):
        assert triton_nearest_code(torch.ones(4, 8), codes, splits=splits)[0].tolist() == [65] * 4
    # dispatch: backend="triton" on CPU tensors runs the kernel under the interpreter
    x = torch.randn(20, 8, generator=g)
    assert torch.equal(nearest_code(x, codes, backend="triton").indices, nearest_code(x, codes).indices)
    empty = triton_nearest_code(torch.zeros(0, 8), codes)
    assert empty[0].shape == (0,)
    print("INTERPRETER_OK", checked)
    """
)


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_kernel_under_triton_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _INTERPRETER_SCRIPT.format(src=SRC)], capture_output=True,
                          text=True, timeout=600, env=env)
    assert proc.returncode == 0 and "INTERPRETER_OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]


@pytest.mark.cuda
@pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON), reason="needs a CUDA device and triton")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,k,d", [(1, 7, 3), (1000, 512, 64), (4096, 8192, 8), (333, 65536, 256), (20000, 3000, 100)])
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_cuda_kernel_matches_torch_path(dtype, n, k, d, metric):
    from vqkit.search import nearest_code

    g = torch.Generator(device="cuda").manual_seed(n + k + d)
    x = torch.randn(n, d, device="cuda", generator=g).to(dtype)
    codes = torch.randn(k, d, device="cuda", generator=g).to(dtype)
    res = nearest_code(x, codes, metric)  # auto: the Triton kernel on CUDA
    ref = nearest_code(x, codes, metric, backend="torch")
    assert res.indices.dtype == torch.int64 and res.indices.device.type == "cuda"
    assert (res.indices == ref.indices).float().mean() > 0.99
    assert _gap_ok(x.float(), codes.float(), res.indices, ref.indices, metric, 1e-5)
    torch.testing.assert_close(res.distances, ref.distances, atol=1e-2, rtol=1e-4)


@pytest.mark.cuda
@pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON), reason="needs a CUDA device and triton")
@pytest.mark.parametrize("offset", [1e2, 1e3, 1e4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_kernel_exact_at_large_offsets(offset, dtype):
    from vqkit.kernels.triton_search import triton_nearest_code

    g = torch.Generator(device="cuda").manual_seed(int(offset))
    x = (torch.randn(2000, 16, device="cuda", generator=g) + offset).to(dtype)
    codes = (torch.randn(128, 16, device="cuda", generator=g) + offset).to(dtype)
    idx, dist = triton_nearest_code(x, codes)
    ref = torch.cdist(x.double(), codes.double()).pow(2)
    rows = torch.arange(2000, device="cuda")
    best = ref.min(1).values
    assert bool(((ref[rows, idx] - best) <= 1e-3 * best.clamp_min(1e-3)).all())


@pytest.mark.cuda
@pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON), reason="needs a CUDA device and triton")
def test_cuda_ties_splits_and_vector_quantizer():
    from vqkit import VectorQuantizer
    from vqkit.kernels.triton_search import triton_nearest_code

    codes = torch.randn(70000, 16, device="cuda") * 10
    for i in (69999, 40000, 1000, 300):
        codes[i] = 1.0
    for splits in (None, 1, 7):
        assert triton_nearest_code(torch.ones(5, 16, device="cuda"), codes, splits=splits)[0].tolist() == [300] * 5
    vq = VectorQuantizer(16, 1024).cuda()
    out = vq(torch.randn(4, 100, 16, device="cuda"))
    assert out.indices.shape == (4, 100) and out.quantized.is_cuda
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = vq(torch.randn(4, 100, 16, device="cuda"))
    compiled = torch.compile(vq.eval(), fullgraph=True)
    x = torch.randn(2, 50, 16, device="cuda")
    assert torch.equal(compiled(x).indices, vq(x).indices)
