"""Machine description, process memory and CPU-contention probes (Linux ``/proc``; degrade elsewhere)."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

__all__ = [
    "machine_info",
    "loadavg",
    "mem_available",
    "rss_bytes",
    "peak_rss_bytes",
    "reset_peak_rss",
    "cpu_snapshot",
    "others_cpu_fraction",
    "wait_until_quiet",
]


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _status_kib(field: str) -> int | None:
    for line in _read("/proc/self/status").splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def rss_bytes() -> int:
    """Current resident set size of this process."""
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    return peak_rss_bytes()  # best effort off Linux


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (since start or the last :func:`reset_peak_rss`)."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def reset_peak_rss() -> bool:
    """Reset the peak RSS to the current RSS (Linux >= 4.0: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def loadavg() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except OSError:
        return None


def mem_available() -> int | None:
    """``MemAvailable`` in bytes."""
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def cpu_snapshot() -> tuple[float, float, float]:
    """``(wall, busy CPU seconds of the whole machine, CPU seconds of this process)``."""
    busy = float("nan")
    line = _read("/proc/stat").splitlines()[:1]
    if line and line[0].startswith("cpu "):
        v = [int(t) for t in line[0].split()[1:]]
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        busy = (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")
    t = os.times()
    return time.perf_counter(), busy, t.user + t.system


def others_cpu_fraction(before: tuple[float, float, float], after: tuple[float, float, float]) -> float:
    """Share of the machine's CPUs used by *other* processes between two snapshots (0 = quiet)."""
    wall = after[0] - before[0]
    ncpu = os.cpu_count() or 1
    if wall <= 0:
        return float("nan")
    return max(0.0, ((after[1] - before[1]) - (after[2] - before[2])) / (wall * ncpu))


def wait_until_quiet(max_load: float, timeout: float, poll: float = 15.0, log=print) -> tuple[bool, float]:
    """Sleep until the 1-minute load average is below ``max_load`` (or ``timeout`` seconds pass)."""
    start = time.time()
    while True:
        la = loadavg()
        if la is None or la[0] < max_load:
            return True, time.time() - start
        if time.time() - start > timeout:
            return False, time.time() - start
        log(f"  waiting for a quiet machine: load {la[0]:.2f} >= {max_load} ...")
        time.sleep(poll)


def _cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _caches() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    keep = [ln.split(":", 1) for ln in out.splitlines() if ln.strip().startswith(("L1d", "L2", "L3"))]
    return ", ".join(f"{k.strip()} {v.strip()}" for k, v in keep)


def _git_commit() -> str | None:
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / ".git").exists():
            try:
                out = subprocess.run(["git", "-C", str(parent), "rev-parse", "--short", "HEAD"], capture_output=True,
                                     text=True, timeout=10)
                dirty = subprocess.run(["git", "-C", str(parent), "status", "--porcelain", "--untracked-files=no"],
                                       capture_output=True, text=True, timeout=10).stdout.strip()
                return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else None
            except (OSError, subprocess.SubprocessError):
                return None
    return None


def machine_info() -> dict:
    """What the numbers were measured on."""
    import torch

    try:
        from importlib.metadata import version

        peer = version("vector-quantize-pytorch")
    except Exception:  # noqa: BLE001 - not installed
        peer = None
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    mem_total = None
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            mem_total = int(line.split()[1]) * 1024
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "caches": _caches(),
        "mem_total_bytes": mem_total,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "mkl": torch.backends.mkl.is_available(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "vector_quantize_pytorch": peer,
        "vqkit_commit": _git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
