"""How many intra-op threads a training process should use.

PyTorch's default (one thread per logical CPU of the machine) oversubscribes when the process may run
on fewer CPUs (``taskset``, a container's cpuset or CPU quota) or when other processes keep some cores
busy: OpenMP's parallel regions then wait at every barrier for a descheduled thread, and small models
slow down by 3-10x. ``vqkit train / ablate / report`` therefore pick the count themselves
(``--threads auto``, the default):

1. ``--threads N`` uses N threads;
2. otherwise an ``OMP_NUM_THREADS`` set in the environment is honoured (``torchrun`` sets it to 1 for
   several processes per machine);
3. otherwise ``auto``: the CPUs this process may run on (``os.sched_getaffinity``, capped by a cgroup CPU
   quota), minus the cores other processes kept busy during a short sample of ``/proc/stat`` at start,
   at least 1.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch

__all__ = ["allowed_cpus", "busy_cores", "available_cores", "choose_threads", "set_threads"]

_SAMPLE_S = 0.2


def allowed_cpus() -> set[int]:
    """CPUs this process may run on (its affinity mask; all CPUs where affinity is unknown)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return set(range(os.cpu_count() or 1))


def _cgroup_quota() -> float | None:
    """CPUs granted by a cgroup CPU quota (v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``), None when unlimited."""
    try:
        text = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if text and text[0] != "max":
            return int(text[0]) / int(text[1])
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        if quota > 0 and period > 0:
            return quota / period
    except (OSError, ValueError):
        pass
    return None


def _cpu_times(cpus: set[int]) -> dict[int, tuple[int, int]] | None:
    """``{cpu: (busy jiffies, total jiffies)}`` from ``/proc/stat``; None where unavailable."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    out = {}
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        cpu = int(name[3:])
        if cpu in cpus:
            values = [int(v) for v in fields[:8]]
            idle = values[3] + values[4]  # idle + iowait
            out[cpu] = (sum(values) - idle, sum(values))
    return out or None


def busy_cores(cpus: set[int] | None = None, sample_s: float = _SAMPLE_S) -> float:
    """How many of ``cpus`` (default: :func:`allowed_cpus`) other processes keep busy, in cores, measured
    over ``sample_s`` seconds while this process sleeps (0.0 where ``/proc/stat`` is unavailable)."""
    cpus = allowed_cpus() if cpus is None else cpus
    before = _cpu_times(cpus)
    if before is None:
        return 0.0
    time.sleep(sample_s)
    after = _cpu_times(cpus) or {}
    busy = 0.0
    for cpu, (b0, t0) in before.items():
        if cpu in after:
            b1, t1 = after[cpu]
            if t1 > t0:
                busy += (b1 - b0) / (t1 - t0)
    return busy


def available_cores(sample: bool = True) -> int:
    """CPUs in this process's affinity mask (capped by a cgroup quota), minus the cores other processes
    keep busy (when ``sample``), at least 1."""
    cpus = allowed_cpus()
    n = len(cpus)
    quota = _cgroup_quota()
    if quota is not None:
        n = min(n, max(1, math.floor(quota)))
    if sample and n > 1:
        n -= int(busy_cores(cpus) + 0.5)
    return max(1, n)


def choose_threads(requested: int | str | None = "auto") -> tuple[int, str]:
    """The intra-op thread count for ``requested`` (an int, ``"auto"`` or None = auto) and why."""
    if requested not in (None, "auto"):
        n = int(requested)
        if n < 1:
            raise ValueError(f"--threads: expected an int >= 1 or 'auto', got {requested!r}")
        return n, "--threads"
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"OMP_NUM_THREADS: expected an int >= 1, got {env!r}") from None
        if n >= 1:
            return n, "OMP_NUM_THREADS"
    cpus = len(allowed_cpus())
    n = available_cores()
    why = f"auto: {cpus} CPU(s) available to this process"
    if n < cpus:
        why += f", {cpus - n} busy with other work or over the CPU quota"
    return n, why


def set_threads(requested: int | str | None = "auto") -> tuple[int, str]:
    """Set torch's intra-op thread count from :func:`choose_threads`; returns ``(threads, reason)``."""
    n, why = choose_threads(requested)
    torch.set_num_threads(n)
    return n, why
