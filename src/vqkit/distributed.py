"""The few collectives the quantizers need; no-ops without an initialized process group.

Whether to synchronize is decided at call time (``is_distributed()``), never cached at construction:
models are often built before ``torch.distributed.init_process_group``. Callers must enter these
collectives on every rank in the same order every step (also when a rank's batch is empty or fully
masked), which is why every function here accepts empty tensors.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "is_distributed",
    "world_size",
    "rank",
    "all_reduce_sum_",
    "broadcast_",
    "all_gather_rows",
    "all_gather_equal",
]


def is_distributed() -> bool:
    """True when a process group with more than one rank is initialized right now."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def all_reduce_sum_(*tensors: Tensor) -> None:
    """In-place sum over ranks of every tensor (one collective per tensor, same order on all ranks)."""
    if not is_distributed():
        return
    for t in tensors:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)


def broadcast_(*tensors: Tensor, src: int = 0) -> None:
    """In-place broadcast of every tensor from rank ``src``."""
    if not is_distributed():
        return
    for t in tensors:
        dist.broadcast(t, src=src)


def all_gather_rows(x: Tensor) -> Tensor:
    """Concatenate ``(n_r, D)`` row blocks of every rank (n_r may differ, may be 0) in rank order.

    Returns ``(sum_r n_r, D)``, identical on every rank.
    """
    if not is_distributed():
        return x
    ws = dist.get_world_size()
    n = torch.tensor([x.shape[0]], dtype=torch.int64, device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(ws)]
    dist.all_gather(sizes, n)
    sizes_l = [int(s.item()) for s in sizes]
    n_max = max(sizes_l)
    padded = x.new_zeros((n_max, *x.shape[1:]))
    padded[: x.shape[0]] = x
    gathered = [torch.empty_like(padded) for _ in range(ws)]
    dist.all_gather(gathered, padded.contiguous())
    return torch.cat([g[:s] for g, s in zip(gathered, sizes_l)], dim=0)


def all_gather_equal(x: Tensor) -> Tensor:
    """Stack the same-shaped ``x`` of every rank: ``(W, *x.shape)`` (``x[None]`` without a process group)."""
    if not is_distributed():
        return x[None]
    ws = dist.get_world_size()
    out = x.new_empty(ws * x.numel())
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # the name before torch 2.13
    gather(out, x.reshape(-1).contiguous())
    return out.view(ws, *x.shape)
