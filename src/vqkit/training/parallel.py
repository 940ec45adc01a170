"""Process-group setup for ``torchrun`` launches, and the per-rank device.

``vqkit train`` under ``torchrun --nproc_per_node=N`` reads ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK`` from
the environment and initializes the default process group itself (gloo on CPU, nccl on CUDA) when
``WORLD_SIZE > 1``; if the caller already initialized one, it is used and left alone.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .. import distributed as dist_utils

__all__ = ["DistContext", "setup", "teardown", "resolve_device"]


@dataclass
class DistContext:
    """``rank`` / ``world_size`` of this process, its ``device``, and whether we own the process group."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` -> ``cuda:<local_rank>`` when CUDA is available, else ``cpu``; ``"cuda"`` -> ``cuda:<local_rank>``."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        device = f"cuda:{local_rank}"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} requested but CUDA is not available; use device = \"cpu\" or \"auto\"")
    return torch.device(device)


def setup(device: str) -> DistContext:
    """Join (or create, from ``torchrun``'s environment) the process group and pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    owns = False
    if not (dist.is_available() and dist.is_initialized()) and world > 1:
        dev = resolve_device(device, local_rank)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        owns = True
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    # rank and world size as the quantizers see them (vqkit.distributed is the one place that asks)
    return DistContext(dist_utils.rank(), dist_utils.world_size(), local_rank, dev, owns)


def teardown(ctx: DistContext, *, clean: bool = True) -> None:
    """Destroy the process group if :func:`setup` created it.

    First the garbage collector frees what still holds the group (a DistributedDataParallel reducer lives in
    reference cycles: left to the interpreter's exit, gloo's worker threads can be destroyed while joinable,
    which aborts the process); then, after a clean run (``clean``), every rank waits at a barrier so that no
    rank closes its connections while another still talks over them. After an exception the barrier is
    skipped: a rank that raised must not wait for ranks that may never arrive.
    """
    if not (ctx.owns_group and dist.is_initialized()):
        return
    gc.collect()
    if clean:
        dist.barrier()
    dist.destroy_process_group()
