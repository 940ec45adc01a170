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

from .dtypes import accumulation_dtype

__all__ = ["VQLoss", "vq_loss", "masked_mse"]


class VQLoss(NamedTuple):
    """``total`` = weighted sum; ``commitment`` and ``codebook`` are the unweighted terms (equal in value)."""

    total: Tensor
    commitment: Tensor
    codebook: Tensor


def masked_mse(a: Tensor, b: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean of ``(a - b)^2`` over ``(N, D)`` elements, rows weighted by ``weight (N,)`` (0 = masked)."""
    acc = accumulation_dtype(a, b)
    sq = (a.to(acc) - b.to(acc)).pow(2)
    if weight is None:
        return sq.mean() if sq.numel() > 0 else sq.sum()
    return (sq.sum(-1) * weight).sum() / (weight.sum() * a.shape[-1]).clamp_min(1.0)


class _VQLossFn(torch.autograd.Function):
    """``total = (cw + bw) * mse(z, q)``; backward ``dz = cw * dmse/dz``, ``dq = bw * dmse/dq``.

    One pass for ``diff = z - q`` (kept for backward), one read for the sum of squares; the backward writes
    ``dz`` and ``dq`` in one pass each. (Two ``masked_mse`` calls and their autograd took ~16 passes.)
    """

    @staticmethod
    def forward(z: Tensor, q: Tensor, weight: Tensor | None, cw: float, bw: float):
        acc = accumulation_dtype(z, q)
        diff = z.to(acc) - q.to(acc)
        if weight is None:
            flat = diff.reshape(-1)
            denom = diff.new_tensor(float(max(flat.numel(), 1)))
            sq = torch.dot(flat, flat) if flat.numel() else flat.sum()
        else:
            sq = (diff.square().sum(-1) * weight).sum()
            denom = (weight.sum() * diff.shape[-1]).clamp_min(1.0)
        mse = sq / denom
        return mse * (cw + bw), mse, diff, denom

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        z, q, weight, cw, bw = inputs
        _, _, diff, denom = output
        ctx.save_for_backward(diff, weight, denom)
        ctx.cw, ctx.bw, ctx.dtypes = cw, bw, (z.dtype, q.dtype)
        ctx.mark_non_differentiable(output[1], output[2], output[3])
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, g_total: Tensor, g_mse, g_diff, g_denom):
        if g_total is None:
            return None, None, None, None, None
        diff, weight, denom = ctx.saved_tensors
        scale = 2.0 * g_total / denom
        if weight is not None:
            diff = diff * weight[:, None]
        dz = dq = None
        if ctx.needs_input_grad[0] and ctx.cw != 0.0:
            dz = (diff * (scale * ctx.cw)).to(ctx.dtypes[0])
        if ctx.needs_input_grad[1] and ctx.bw != 0.0:
            dq = (diff * (scale * -ctx.bw)).to(ctx.dtypes[1])
        return dz, dq, None, None, None


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
    total, mse, _, _ = _VQLossFn.apply(z, q, weight, float(commitment_weight), float(codebook_weight))
    mse = mse.detach()
    return VQLoss(total, mse, mse)
