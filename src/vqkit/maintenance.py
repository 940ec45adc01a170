"""Data-dependent codebook maintenance: k-means++ init and dead-code re-seeding candidates.

Both give the same result on every rank. k-means init (once, eager) gathers embeddings from all ranks
(``all_gather_rows``) and draws with a generator seeded from rank 0 (``shared_generator``).
Re-seeding runs every training step, so it is shape-static and free of host syncs (it compiles into
the training graph): every rank draws a fixed number of candidates from its own valid rows with its own
RNG, the candidates are all-gathered, and each slot takes a rank's candidate by a fixed rule.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from . import distributed as dist_utils
from .dtypes import accumulation_dtype
from .search import nearest_code

__all__ = ["shared_generator", "kmeans_plusplus", "kmeans", "gather_embeddings", "replacement_candidates"]


def shared_generator(device: torch.device) -> torch.Generator:
    """A generator seeded from the global RNG of rank 0 (one broadcast), identical on every rank."""
    seed = torch.randint(0, 2**62, (1,), dtype=torch.int64).to(device)
    dist_utils.broadcast_(seed, src=0)
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed.item()))
    return gen


def gather_embeddings(z: Tensor, weight: Tensor | None, max_rows: int) -> Tensor:
    """Valid rows of ``z (N, D)`` from every rank, at most ``max_rows`` per rank (random subset).

    The local subset uses the local RNG (ranks may differ); the gathered result is the same everywhere.
    """
    if weight is not None:
        z = z[weight > 0]
    if z.shape[0] > max_rows:
        z = z[torch.randperm(z.shape[0], device=z.device)[:max_rows]]
    return dist_utils.all_gather_rows(z.float().contiguous())


def kmeans_plusplus(x: Tensor, k: int, generator: torch.Generator, metric: str = "euclidean") -> Tensor:
    """k-means++ seeding: ``x (N, D)`` -> ``(k, D)`` centers, each drawn with probability ~ D(x)^2.

    For large ``k`` centers are drawn in ``ceil(k / 256)``-sized batches per round (256 rounds), which keeps
    the D^2 weighting with a bounded number of passes over the data.
    """
    n = x.shape[0]
    if n == 0:
        raise ValueError("x: k-means needs at least one embedding, got 0 rows")
    per_round = max(1, math.ceil(k / 256))
    first = torch.randint(0, n, (1,), generator=generator, device=x.device)
    centers = [x[first]]
    best = nearest_code(x, centers[0], metric).distances
    chosen = 1
    while chosen < k:
        m = min(per_round, k - chosen)
        probs = best.clamp_min(0.0)
        if not bool(probs.sum() > 0):  # every point already is a center: fall back to uniform
            probs = torch.ones_like(probs)
        pick = torch.multinomial(probs, m, replacement=m > int((probs > 0).sum()), generator=generator)
        new = x[pick]
        centers.append(new)
        best = torch.minimum(best, nearest_code(x, new, metric).distances)
        chosen += m
    return torch.cat(centers)[:k]


def kmeans(
    x: Tensor,
    k: int,
    generator: torch.Generator,
    iters: int = 10,
    metric: str = "euclidean",
) -> Tensor:
    """k-means (Lloyd) from k-means++ seeds; spherical for ``metric="cosine"``.

    Args:
        x: ``(N, D)`` points. With ``N < k`` the centers are the points (repeated) plus small noise.
        k: number of centers; generator: random source (share it across ranks for identical results).
        iters: Lloyd iterations; an empty cluster keeps its center.
    Returns:
        ``(k, D)`` fp32 centers.
    """
    x = x.float()
    if metric == "cosine":
        x = F.normalize(x, dim=-1)
    if x.shape[0] < k:
        pick = torch.randint(0, x.shape[0], (k,), generator=generator, device=x.device)
        pick[: x.shape[0]] = torch.arange(x.shape[0], device=x.device)
        scale = x.std() if x.shape[0] > 1 else x.new_tensor(1.0)
        noise = torch.randn(k, x.shape[1], generator=generator, device=x.device) * 0.01 * scale
        centers = x[pick] + noise
        return F.normalize(centers, dim=-1) if metric == "cosine" else centers
    return lloyd_steps(x, kmeans_plusplus(x, k, generator, metric), iters, metric)


def lloyd_steps(x: Tensor, centers: Tensor, iters: int, metric: str = "euclidean") -> Tensor:
    """``iters`` Lloyd steps on ``x (N, D)`` from ``centers (k, D)`` (same dtype): each center moves to the mean
    of its points (normalized for ``metric="cosine"``); a center without points stays where it is."""
    k = centers.shape[0]
    for _ in range(iters):
        idx = nearest_code(x, centers, metric).indices
        counts = torch.zeros(k, device=x.device).index_add_(0, idx, torch.ones_like(idx, dtype=torch.float32))
        sums = torch.zeros_like(centers).index_add_(0, idx, x)
        means = sums / counts.clamp_min(1.0)[:, None]
        if metric == "cosine":
            means = F.normalize(means, dim=-1)
        centers = torch.where(counts[:, None] > 0, means, centers)
    return centers


def replacement_candidates(z: Tensor, weight: Tensor | None, count: int, noise: float = 0.01,
                           row_weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``count`` candidate codes drawn from the valid rows of ``z``, identical on every rank (shape-static).

    Each rank draws ``count`` rows (with replacement) from its rows with ``weight > 0`` and adds Gaussian noise of
    ``noise`` times the batch's spread (the root mean squared deviation from the batch mean, per dimension), so
    codes re-seeded near one embedding do not coincide, at any offset of the data. Under torch.distributed the candidates are all-gathered and slot
    ``r`` takes the candidate of the first rank, in the order ``r % W, r % W + 1, ...``, whose batch had a
    valid row: the result is the same everywhere and draws from every rank.

    Args:
        z: ``(N, D)`` detached embeddings (rows with weight 0 are never drawn).
        weight: optional ``(N,)`` row weights (0 = masked).
        count: number of candidates.
        noise: relative noise scale.
        row_weight: optional ``(N,)`` non-negative sampling weights of the rows (default: uniform over the
            valid rows); where every valid row has weight 0 the draw is uniform over the valid rows.
    Returns:
        ``(count, D)`` candidates in >= fp32 and a bool scalar: True if any rank had a valid row.
    """
    n, d = z.shape
    acc = accumulation_dtype(z)
    if n == 0:
        cand = z.new_zeros(count, d, dtype=acc)
        ok = torch.zeros((), dtype=torch.bool, device=z.device)
    else:
        # one sampler with and without weights, so a run draws the same whether padding is marked or not
        valid = torch.ones(n, dtype=torch.bool, device=z.device) if weight is None else weight > 0
        ok = valid.any()
        probs = torch.where(ok, valid.to(acc), torch.ones(n, dtype=acc, device=z.device))
        if row_weight is not None:  # shape-static: fall back to the uniform draw when no valid row has weight
            weighted = probs * row_weight.to(acc).clamp_min(0.0)
            probs = torch.where(weighted.sum() > 0, weighted, probs)
        idx = torch.multinomial(probs, count, replacement=True)
        rows = z[idx].to(acc)
        # noise relative to the batch's spread about its mean (a row's norm would grow with the data's offset)
        w = valid.to(acc)
        n_valid = w.sum().clamp_min(1.0)
        zf = z.to(acc)
        mean = (w @ zf) / n_valid
        spread = ((w @ (zf - mean).square()).sum() / (n_valid * d)).sqrt()
        eps = torch.randn(rows.shape, dtype=acc, device=z.device)
        cand = rows + noise * spread * eps
    if not dist_utils.is_distributed():
        return cand, ok
    world = dist_utils.world_size()
    all_cand = dist_utils.all_gather_equal(cand)  # (W, count, D)
    all_ok = dist_utils.all_gather_equal(ok.reshape(1).to(acc)).reshape(world) > 0
    slots = torch.arange(count, device=z.device)
    order = (torch.arange(world, device=z.device)[None, :] - slots[:, None]) % world  # (count, W)
    order = torch.where(all_ok[None, :], order, world)
    src = order.argmin(1)
    return all_cand[src, slots], all_ok.any()
