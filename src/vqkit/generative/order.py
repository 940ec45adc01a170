"""Deterministic data order and per-step random generators: pure functions of ``(seed, step)``.

Nothing about them needs saving to resume a run: step ``s`` always sees the same batch and the same
random draws. The example stream is the concatenation of per-epoch permutations (epoch ``e``
shuffled with a generator seeded from ``(seed, e)``); step ``s`` takes positions ``[s * B, (s + 1) * B)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["batch_indices", "step_generator"]

_MIX = 1_000_003


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> Tensor:
    """Indices ``(batch_size,)`` int64 into ``n`` examples for step ``step`` (0-based)."""
    if n < 1 or batch_size < 1:
        raise ValueError(f"n, batch_size: expected ints >= 1, got {n}, {batch_size}")
    parts, start, remaining = [], step * batch_size, batch_size
    while remaining:
        epoch, offset = divmod(start, n)
        take = min(remaining, n - offset)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * _MIX + epoch))
        parts.append(perm[offset:offset + take])
        start, remaining = start + take, remaining - take
    return torch.cat(parts)


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A fresh CPU generator for the random draws of step ``step`` (``stream`` separates uses)."""
    return torch.Generator().manual_seed((seed * _MIX + step) * 7919 + stream + 2**40)
