"""Which training examples each step uses: a stateless function of (seed, step).

The stream is the concatenation of per-epoch permutations of the training set (epoch ``e`` shuffled
with a generator seeded from ``(seed, e)``); step ``s`` takes positions ``[s * B, (s + 1) * B)``. Nothing
needs saving to resume, and under torch.distributed every rank computes the same global batch and
takes its own contiguous slice of ``B / world_size`` examples.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["BatchStream"]


class BatchStream:
    """Global batches of indices into a dataset of ``n`` examples.

    Args:
        n: dataset size (>= 1).
        batch_size: global batch B.
        seed: shuffling seed.
        rank, world_size: this process's slice of each batch (B must be divisible by ``world_size``).
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if n < 1:
            raise ValueError(f"dataset: expected at least one training example, got {n}")
        if batch_size % world_size:
            raise ValueError(f"batch_size: the global batch {batch_size} must be divisible by the number of "
                             f"ranks {world_size} (each rank takes batch_size / world_size examples)")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.int64)

    def _permutation(self, epoch: int) -> Tensor:
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=gen)
        return self._perm

    def global_batch(self, step: int) -> Tensor:
        """Indices ``(B,)`` of step ``step`` (0-based)."""
        start, parts = step * self.batch_size, []
        remaining = self.batch_size
        while remaining:
            epoch, offset = divmod(start, self.n)
            take = min(remaining, self.n - offset)
            parts.append(self._permutation(epoch)[offset:offset + take])
            start, remaining = start + take, remaining - take
        return torch.cat(parts)

    def local_batch(self, step: int) -> Tensor:
        """This rank's contiguous slice ``(B / world_size,)`` of the global batch."""
        per = self.batch_size // self.world_size
        return self.global_batch(step)[self.rank * per:(self.rank + 1) * per]
