"""Diagnostics for discrete bottlenecks: usage, perplexity, dead codes, quantization error, misalignment.

All functions are pure, shape-static (no ``bincount`` with data-dependent length, so they trace under
``torch.compile``) and return detached float32 tensors.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "code_counts",
    "usage",
    "perplexity",
    "codebook_stats",
    "misalignment",
    "ste_error",
]


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
    """``exp(entropy)`` of the assignment frequencies: ``(K,) -> ()``; 1 = collapse, K = uniform."""
    total = counts.sum().clamp_min(1e-12)
    p = counts / total
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return entropy.exp()


def codebook_stats(indices: Tensor, codebook_size: int, mask: Tensor | None = None) -> dict[str, Tensor]:
    """``usage`` (fraction of codes used) and ``perplexity`` of one batch of indices."""
    counts = code_counts(indices.detach(), codebook_size, mask)
    return {"usage": usage(counts), "perplexity": perplexity(counts)}


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
