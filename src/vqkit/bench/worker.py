"""One benchmark case in a fresh process: ``python -m vqkit.bench.worker '<json spec>'``.

Prints one line ``VQKIT_BENCH_RESULT {json}``. Memory: ``baseline`` is the resident set after importing
torch, allocating the inputs and building the layer; the peak of the *timed* steps is read from
``VmHWM`` after resetting it (``/proc/self/clear_refs``) at the end of the warm-up, so it excludes the
warm-up's one-off work (k-means init); the warm-up's own peak is reported separately.
"""

from __future__ import annotations

import gc
import json
import statistics
import sys
import time

PREFIX = "VQKIT_BENCH_RESULT "


def choose_reps(step_seconds: float, budget: float, lo: int, hi: int, huge: float = 15.0) -> int:
    """Timed repeats for a case whose (warm) step takes ``step_seconds``: about ``budget`` seconds in all,
    clamped to ``[lo, hi]``; only huge cells (a step over ``huge`` seconds) get fewer than ``lo``."""
    if step_seconds > huge:
        return max(1, min(lo, int(2 * huge // step_seconds)))
    return int(min(hi, max(lo, budget // max(step_seconds, 1e-9))))


def run(spec: dict) -> dict:
    import torch

    from . import system
    from .cases import build

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    device = torch.device(spec.get("device", "cpu"))
    t_build = time.perf_counter()
    step, info = build(spec, device)
    t_build = time.perf_counter() - t_build
    gc.collect()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    baseline = system.rss_bytes()

    warm_times = []
    for _ in range(spec.get("warmup", 1)):
        t0 = time.perf_counter()
        step()
        warm_times.append(time.perf_counter() - t0)
    if spec.get("warmup", 1) < 2 and warm_times[0] < spec.get("second_warmup_below", 30.0):
        t0 = time.perf_counter()  # a second warm-up: the first may include one-off work (k-means init)
        step()
        warm_times.append(time.perf_counter() - t0)
    warm_peak = system.peak_rss_bytes()
    reset_ok = system.reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    reps = spec.get("reps") or choose_reps(warm_times[-1], spec.get("budget_s", 6.0), spec.get("min_reps", 3),
                                           spec.get("max_reps", 9))
    times = []
    before = system.cpu_snapshot()
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    after = system.cpu_snapshot()
    peak = system.peak_rss_bytes()
    out = {
        "spec": spec,
        "info": info,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "times_s": times,
        "reps": reps,
        "warmup_s": warm_times,
        "build_s": t_build,
        "baseline_rss": baseline,
        "peak_rss": peak,
        "peak_extra": peak - baseline if reset_ok else None,
        "warmup_peak_extra": warm_peak - baseline,
        "peak_reset": reset_ok,
        "others_cpu": system.others_cpu_fraction(before, after),
        "own_cpu_util": (after[2] - before[2]) / max(1e-9, (after[0] - before[0]) * torch.get_num_threads()),
        "threads": torch.get_num_threads(),
        "loadavg": system.loadavg(),
    }
    if device.type == "cuda":
        out["cuda_peak_allocated"] = torch.cuda.max_memory_allocated(device)
    return out


def main() -> int:
    spec = json.loads(sys.argv[1])
    result = run(spec)
    print(PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
