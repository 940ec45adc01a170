"""Diagnostics for discrete bottlenecks: usage, perplexity, dead codes, quantization error, misalignment.

All functions are pure, shape-static (no ``bincount`` with data-dependent length, so they trace under
``torch.compile``) and return detached float32 tensors.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "MAX_HISTOGRAM_CODES",
    "code_counts",
    "distinct_counts",
    "usage",
    "perplexity",
    "index_stats",
    "misalignment",
    "ste_error",
]

#: largest codebook a stat histograms with K bins; larger (implicit) codebooks count distinct indices by
#: sorting instead (O(N log N), no K-sized buffer).
MAX_HISTOGRAM_CODES = 2**20


def code_counts(indices: Tensor, codebook_size: int, mask: Tensor | None = None) -> Tensor:
    """Histogram of code assignments.

    Args:
        indices: int64 ``(...)`` code indices in ``[0, codebook_size)``.
        codebook_size: K.
        mask: optional bool ``(...)``, True = count this position.
    Returns:
        float32 ``(K,)`` counts.
    """
    flat = indices.reshape(-1)
    weights = torch.ones_like(flat, dtype=torch.float32) if mask is None else mask.reshape(-1).float()
    counts = torch.zeros(codebook_size, dtype=torch.float32, device=indices.device)
    return counts.index_add_(0, flat, weights)


def usage(counts: Tensor) -> Tensor:
    """Fraction of codes with a nonzero count: ``(K,) -> ()``."""
    return (counts > 0).float().mean()


def perplexity(counts: Tensor) -> Tensor:
    """``exp(entropy)`` of the assignment frequencies over the last axis: ``(..., K) -> (...)``;
    1 = collapse, K = uniform."""
    total = counts.sum(-1, keepdim=True).clamp_min(1e-12)
    p = counts / total
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(-1)
    return entropy.exp()


def distinct_counts(indices: Tensor, mask: Tensor | None = None) -> Tensor:
    """Counts of the distinct values of ``indices (N,)`` (masked rows excluded), without a K-sized
    histogram: float32 ``(N,)``, one nonzero entry per distinct value (shape-static: sort + run ids)."""
    flat = indices.reshape(-1)
    w = torch.ones_like(flat, dtype=torch.float32) if mask is None else mask.reshape(-1).float()
    if mask is not None:  # masked rows sort into their own run of weight 0
        flat = torch.where(mask.reshape(-1), flat, flat.new_full((), -1))
    order = torch.argsort(flat)
    s, w = flat[order], w[order]
    starts = torch.ones_like(s, dtype=torch.bool)
    starts[1:] = s[1:] != s[:-1]
    run = torch.cumsum(starts.to(torch.int64), 0) - 1
    return torch.zeros_like(w).index_add_(0, run, w)


def index_stats(indices: Tensor, sizes: tuple[int, ...], shared: bool = False,
                mask: Tensor | None = None) -> dict[str, Tensor]:
    """``usage`` (the fraction of all codes used) and ``perplexity`` (the mean per-column perplexity) of a
    batch of indices.

    Args:
        indices: int64 ``(..., C)`` with ``C = len(sizes)`` trailing columns (or ``(...)`` for one column).
        sizes: codes each column can take (see :class:`~vqkit.quantizers.base.IndexLayout`).
        shared: the columns index one codebook: usage and perplexity are pooled over them.
        mask: optional bool ``(...)`` (the leading shape; True = count this position).
    Codebooks up to :data:`MAX_HISTOGRAM_CODES` are histogrammed, larger ones counted by sorting.
    """
    cols = indices.reshape(-1, len(sizes))
    m = None if mask is None else mask.reshape(-1, 1).expand_as(cols)
    if shared:
        cols, m, sizes = cols.reshape(-1, 1), None if m is None else m.reshape(-1, 1), sizes[:1]
    used, ps = [], []
    for c, k in enumerate(sizes):
        mc = None if m is None else m[:, c]
        counts = code_counts(cols[:, c], k, mc) if k <= MAX_HISTOGRAM_CODES else distinct_counts(cols[:, c], mc)
        used.append((counts > 0).sum().float())
        ps.append(perplexity(counts))
    return {"usage": torch.stack(used).sum() / float(sum(sizes)), "perplexity": torch.stack(ps).mean()}


def misalignment(z: Tensor, codebook: Tensor, quantized: Tensor | None = None) -> dict[str, Tensor]:
    """Moment gaps between embeddings P, codebook C and assigned codes Q (Huh et al. 2023).

    Args:
        z: ``(N, D)`` embeddings.
        codebook: ``(K, D)`` effective code vectors.
        quantized: optional ``(N, D)`` assigned codes.
    Returns:
        ``mean_gap`` = ||E[z] - E[c]|| / sqrt(D) and ``std_ratio`` = mean_d std_c / std_z (1 = aligned),
        plus ``q_mean_gap`` / ``q_std_ratio`` for the assigned codes when given.
    """
    z = z.detach().float()
    c = codebook.detach().float()
    d = z.shape[-1]
    z_mean, z_std = z.mean(0), z.std(0, unbiased=False).clamp_min(1e-12)
    out = {
        "mean_gap": (z_mean - c.mean(0)).norm() / d**0.5,
        "std_ratio": (c.std(0, unbiased=False) / z_std).mean(),
    }
    if quantized is not None:
        q = quantized.detach().float()
        out["q_mean_gap"] = (z_mean - q.mean(0)).norm() / d**0.5
        out["q_std_ratio"] = (q.std(0, unbiased=False) / z_std).mean()
    return out


def ste_error(z: Tensor, quantized: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean squared distance ``||z - q||^2`` per vector: how wrong the straight-through gradient is.

    Args:
        z, quantized: ``(N, D)``.
        mask: optional bool ``(N,)``.
    """
    err = (z.detach().float() - quantized.detach().float()).pow(2).sum(-1)
    if mask is None:
        return err.mean()
    m = mask.float()
    return (err * m).sum() / m.sum().clamp_min(1.0)
