"""Commitment and codebook losses.

``L = commitment_weight * mean((z - sg(q))^2) + codebook_weight * mean((sg(z) - q)^2)``, means over the
valid (unmasked) elements. The paper's convention (Huh et al. 2023) is ``(1 - beta, beta)`` with
``beta = 0.95``; the classic VQ-VAE loss ``||sg(z) - e||^2 + 0.25 ||z - sg(e)||^2`` is
``commitment_weight=0.25, codebook_weight=1.0``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["VQLoss", "vq_loss", "masked_mse"]


class VQLoss(NamedTuple):
    """``total`` = weighted sum; ``commitment`` and ``codebook`` are the unweighted terms (equal in value)."""

    total: Tensor
    commitment: Tensor
    codebook: Tensor


def masked_mse(a: Tensor, b: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean of ``(a - b)^2`` over ``(N, D)`` elements, rows weighted by ``weight (N,)`` (0 = masked)."""
    sq = (a.float() - b.float()).pow(2)
    if weight is None:
        return sq.mean() if sq.numel() > 0 else sq.sum()
    return (sq.sum(-1) * weight).sum() / (weight.sum() * a.shape[-1]).clamp_min(1.0)


def vq_loss(
    z: Tensor,
    q: Tensor,
    commitment_weight: float,
    codebook_weight: float,
    weight: Tensor | None = None,
) -> VQLoss:
    """Commitment + codebook loss.

    Args:
        z: ``(N, D)`` encoder vectors (get the commitment gradient).
        q: ``(N, D)`` selected codes (get the codebook gradient).
        commitment_weight, codebook_weight: term weights.
        weight: optional ``(N,)`` row weights, 0 for masked positions.
    """
    commitment = masked_mse(z, q.detach(), weight)
    codebook = masked_mse(z.detach(), q, weight)
    total = commitment_weight * commitment + codebook_weight * codebook
    return VQLoss(total, commitment.detach(), codebook.detach())
