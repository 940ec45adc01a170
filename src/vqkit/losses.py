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


# ----------------------------------------------------------------------------------------------
# codebook regularizers
# ----------------------------------------------------------------------------------------------


def orthogonal_loss(codes: Tensor) -> Tensor:
    """Orthogonal codebook regularization (ViT-VQGAN, Yu et al. 2022): ``||C^ C^T - I||_F^2 / K^2`` on the
    l2-normalized codes ``C^`` ``(K, D)``, computed without the ``K x K`` Gram matrix.

    ``||C^ C^T||_F^2 = ||C^T C^||_F^2`` (a ``D x D`` product) and ``tr(C^ C^T) = K``, so the loss is
    ``(||C^T C^||_F^2 - K) / K^2``: 0 when the codes are orthonormal (possible only for K <= D), and in general
    the mean squared cosine similarity between distinct codes. Returns a scalar in >= fp32.
    """
    k = codes.shape[0]
    c = torch.nn.functional.normalize(codes.to(accumulation_dtype(codes)), dim=-1)
    gram = c.t() @ c
    return ((gram * gram).sum() - k) / (k * k)


class _SoftAssignmentEntropy(torch.autograd.Function):
    """``H(p_bar)``, ``p_bar = sum_i w_i softmax_k((2 z_i . c_k - b_k) / tau) / sum_i w_i``, row chunk by row
    chunk: memory ``O(rows x K)``, never ``N x K`` (the backward recomputes each chunk's softmax).

    With ``g_k = -(log p_bar_k + 1)`` (``dH / dp_bar``) and ``A_ik = w_i / W * p_ik (g_k - sum_j p_ij g_j)``
    (``dH / dlogit``): ``dz_i = 2 / tau * sum_k A_ik c_k``, ``dc_k = 2 / tau * (sum_i A_ik z_i - [b] (sum_i A_ik) c_k)``.
    """

    @staticmethod
    def forward(z, codes, weight, tau, with_bias, rows):
        bias = (codes * codes).sum(-1) if with_bias else codes.new_zeros(codes.shape[0])
        total = z.new_zeros(codes.shape[0])
        wsum = z.new_zeros(())
        for s in range(0, z.shape[0], rows):
            logits = (2.0 * (z[s:s + rows] @ codes.t()) - bias) / tau
            p = torch.softmax(logits, dim=-1)
            w = None if weight is None else weight[s:s + rows]
            total = total + (p.sum(0) if w is None else w @ p)
            wsum = wsum + (p.shape[0] if w is None else w.sum())
        p_bar = total / wsum.clamp_min(1e-12)
        entropy = -(p_bar * p_bar.clamp_min(1e-30).log()).sum()
        return entropy, p_bar, wsum

    @staticmethod
    def setup_context(ctx, inputs, output):
        z, codes, weight, tau, with_bias, rows = inputs
        _, p_bar, wsum = output
        ctx.save_for_backward(z, codes, weight, p_bar, wsum)
        ctx.tau, ctx.with_bias, ctx.rows = tau, with_bias, rows
        ctx.mark_non_differentiable(p_bar, wsum)

    @staticmethod
    def backward(ctx, g_entropy, g_pbar, g_wsum):
        z, codes, weight, p_bar, wsum = ctx.saved_tensors
        tau, rows = ctx.tau, ctx.rows
        bias = (codes * codes).sum(-1) if ctx.with_bias else codes.new_zeros(codes.shape[0])
        g = -(p_bar.clamp_min(1e-30).log() + 1.0) * g_entropy
        dz = torch.empty_like(z) if ctx.needs_input_grad[0] else None
        dc = torch.zeros_like(codes) if ctx.needs_input_grad[1] else None
        a_sum = codes.new_zeros(codes.shape[0])
        for s in range(0, z.shape[0], rows):
            zc = z[s:s + rows]
            p = torch.softmax((2.0 * (zc @ codes.t()) - bias) / tau, dim=-1)
            a = p * (g - (p * g).sum(-1, keepdim=True))
            a = a / wsum.clamp_min(1e-12) if weight is None else a * (weight[s:s + rows, None] / wsum.clamp_min(1e-12))
            if dz is not None:
                dz[s:s + rows] = (2.0 / tau) * (a @ codes)
            if dc is not None:
                dc += (2.0 / tau) * (a.t() @ zc)
                a_sum += a.sum(0)
        if dc is not None and ctx.with_bias:
            dc -= (2.0 / tau) * a_sum[:, None] * codes
        return dz, dc, None, None, None, None


def soft_assignment_entropy(
    z: Tensor,
    codes: Tensor,
    temperature: float = 1.0,
    metric: str = "euclidean",
    weight: Tensor | None = None,
    memory_budget: int = 32 * 2**20,
) -> Tensor:
    """Entropy of the batch-averaged soft code assignment, ``H(mean_i softmax_k(-d(z_i, c_k) / temperature))``.

    The codebook diversity regularizer maximizes it (a uniform average assignment uses every code). Computed
    exactly in row chunks of at most ``memory_budget`` bytes of ``rows x K`` logits, in >= fp32, about the
    codebook mean (as the search) so large offsets do not cancel.

    Args:
        z: ``(N, D)`` vectors; codes: ``(K, D)``; both may require grad.
        temperature: softmax temperature (> 0).
        metric: ``"euclidean"`` (``d = ||z - c||^2``) or ``"cosine"`` (``d = 2 - 2 cos``).
        weight: optional ``(N,)`` row weights (0 = padding).
    Returns:
        scalar entropy in nats, in ``[0, log K]``.
    """
    from .search import search_center

    acc = accumulation_dtype(z, codes)
    z, codes = z.to(acc), codes.to(acc)
    if metric == "cosine":
        z, codes = torch.nn.functional.normalize(z, dim=-1), torch.nn.functional.normalize(codes, dim=-1)
    else:
        center = search_center(codes.detach())
        z, codes = z - center, codes - center
    rows = max(1, memory_budget // (4 * 3 * codes.shape[0]))
    entropy, _, _ = _SoftAssignmentEntropy.apply(z, codes, None if weight is None else weight.to(acc),
                                                 float(temperature), metric != "cosine", rows)
    return entropy
