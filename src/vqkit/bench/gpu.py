"""CUDA kernel benchmark: the fused Triton search against cuBLAS and ``cdist`` + argmin.

Runs only with a CUDA device and triton; otherwise returns ``{"skipped": reason}``. Goals (issue 5):
within 1.2x of the cuBLAS matmul of the same shape (the matmul alone, no argmin), and >= 3x faster than
``torch.cdist`` + ``argmin`` at K = 65536.
"""

from __future__ import annotations

import itertools

import torch

__all__ = ["kernel_benchmark", "kernel_markdown"]


def _time_cuda(fn, reps: int = 20) -> float:
    fn()
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) / 1e3)
    times.sort()
    return times[len(times) // 2]


def kernel_benchmark(quick: bool = False, log=print) -> dict:
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    from ..search import nearest_code, triton_available

    if not triton_available():
        return {"skipped": "triton is not importable"}
    dev = torch.device("cuda")
    prev_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # compare fp32 with fp32 (the kernel never uses TF32)
    ns = [4096, 32768] if quick else [4096, 32768, 131072]
    ks = [512, 65536] if quick else [512, 8192, 65536]
    ds = [64] if quick else [8, 64, 256]
    dtypes = [torch.float32, torch.bfloat16]
    rows = []
    try:
        for n, k, d, dt in itertools.product(ns, ks, ds, dtypes):
            x = torch.randn(n, d, device=dev, dtype=dt)
            c = torch.randn(k, d, device=dev, dtype=dt)
            ct = c.t()
            row = {"n": n, "k": k, "d": d, "dtype": str(dt).replace("torch.", "")}
            row["cublas_mm_s"] = _time_cuda(lambda: x @ ct)
            row["triton_s"] = _time_cuda(lambda: nearest_code(x, c, backend="triton"))
            row["torch_chunked_s"] = _time_cuda(lambda: nearest_code(x, c, backend="torch"), reps=5)
            if 4 * n * k * 2 < 0.6 * torch.cuda.mem_get_info(dev)[0]:
                row["cdist_argmin_s"] = _time_cuda(lambda: torch.cdist(x.float(), c.float()).argmin(1), reps=5)
            same = (nearest_code(x, c, backend="triton").indices == nearest_code(x, c, backend="torch").indices)
            row["index_agreement"] = same.float().mean().item()
            rows.append(row)
            log(f"  cuda N={n} K={k} D={d} {row['dtype']}: triton {row['triton_s'] * 1e3:.2f} ms, "
                f"cuBLAS mm {row['cublas_mm_s'] * 1e3:.2f} ms")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev_tf32
    return {"device": torch.cuda.get_device_name(dev), "rows": rows}


def kernel_markdown(res: dict) -> list[str]:
    if "skipped" in res:
        return [f"Not run: {res['skipped']}."]
    out = [f"Device: {res['device']}. Times in ms (CUDA events, median).", "",
           "| N | K | D | dtype | cuBLAS mm | triton fused | /mm | torch chunked | cdist+argmin | cdist/triton | "
           "index agreement |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        cd = r.get("cdist_argmin_s")
        cd_ms = "-" if cd is None else f"{cd * 1e3:.3f}"
        cd_ratio = "-" if cd is None else f"{cd / r['triton_s']:.1f}"
        out.append(f"| {r['n']} | {r['k']} | {r['d']} | {r['dtype']} | {r['cublas_mm_s'] * 1e3:.3f} | "
                   f"{r['triton_s'] * 1e3:.3f} | {r['triton_s'] / r['cublas_mm_s']:.2f} | "
                   f"{r['torch_chunked_s'] * 1e3:.3f} | {cd_ms} | {cd_ratio} | {r['index_agreement']:.5f} |")
    return out
