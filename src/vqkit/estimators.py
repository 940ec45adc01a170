"""Gradient estimators: how the gradient of the task loss crosses the non-differentiable code choice.

All estimators return a tensor whose forward value is *exactly* the code ``q`` (no ``z + (q - z)``
round-off), so the training output equals ``decode(indices)``. They differ in the backward pass:

* :func:`straight_through`: ``dL/dz = dL/dout`` (identity); with ``nu > 0`` the *synchronized* update of
  Huh et al. 2023 also sends ``nu * dL/dout`` to the selected code vectors (summed over their inputs),
  i.e. ``out = z + sg(q - z) + nu * q - sg(nu * q)``.
* :func:`rotation_trick`: Fifty et al. 2024: ``out = sg(lambda * R) z`` where ``R`` rotates ``z`` onto ``q``
  and ``lambda = ||q|| / ||z||``, so ``dL/dz = lambda * R^T dL/dout``; ``nu`` adds the same code term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .dtypes import accumulation_dtype

__all__ = ["straight_through", "straight_through_with_loss", "rotation_trick", "estimate", "ESTIMATORS"]

ESTIMATORS = ("ste", "rotation")


def _with_code_gradient(out: Tensor, q: Tensor, nu: float) -> Tensor:
    if nu == 0.0:
        return out
    return out + nu * (q - q.detach())


class _StraightThrough(torch.autograd.Function):
    """Value ``q`` (one copy, no arithmetic); backward: ``dL/dz = g``, ``dL/dq = nu * g``.

    The copy is deliberate: returning ``q.view_as(q)`` gives wrong input gradients once the quantizer is
    compiled (torch 2.13, AOTAutograd's handling of a Function output that aliases its input, see
    tests/test_compile.py::test_compiled_training_step_matches_eager).
    """

    @staticmethod
    def forward(z: Tensor, q: Tensor, nu: float) -> Tensor:
        return q.clone()

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.nu = inputs[2]

    @staticmethod
    def backward(ctx, grad: Tensor):
        nu = ctx.nu
        if not ctx.needs_input_grad[1] or nu == 0.0:
            return grad, None, None
        return grad, (grad if nu == 1.0 else grad * nu), None


def straight_through(z: Tensor, q: Tensor, nu: float = 0.0) -> Tensor:
    """Straight-through output (optionally synchronized).

    Args:
        z: ``(N, D)`` encoder vectors (receive the identity gradient).
        q: ``(N, D)`` selected codes; with ``nu > 0`` they must be differentiable w.r.t. the codebook.
        nu: synchronized-update weight (0 = plain STE).
    Returns:
        ``(N, D)`` tensor equal to ``q`` in value, in ``q``'s dtype. One ``autograd.Function``: the forward
        is one copy (``out = z + sg(q - z) + nu * q - sg(nu * q)`` took five passes over ``(N, D)``), the
        backward passes ``g`` to ``z`` and ``nu * g`` to ``q`` (no pass at all when ``nu`` is 0 or 1).
    """
    return _StraightThrough.apply(z.to(q.dtype), q, float(nu))


#: elements of the reused buffer in which ``z - q`` is formed chunk by chunk (1 MiB of fp32).
_DIFF_CHUNK = 2**18


def _row_chunks(n: int, d: int):
    rows = max(1, _DIFF_CHUNK // max(d, 1))
    return ((s, min(s + rows, n)) for s in range(0, n, rows)), rows


class _GatherSTELoss(torch.autograd.Function):
    """Gather + (synchronized) straight-through output + commitment/codebook loss in one op.

    Forward: ``q = codes[indices]`` (the one gather, which is the output) and ``mse = mean((z - q)^2)``,
    with ``z - q`` formed chunk by chunk in a small reused buffer. Backward, with ``g`` the task gradient on
    the output and ``s = 2 dL/dtotal / count``: ``dz = g + cw * s * (z - q)`` (the one ``(N, D)`` gradient
    written), and ``dcodes = nu * index_add(g) - bw * s * index_add(z - q)`` (what ``F.embedding``'s backward
    would do with the per-row gradient, as scatter-adds into ``(K, D)``, leaving out the ``g`` of padding rows,
    weight 0; the residual ``z - q`` is formed once and shared by both terms, or chunk by chunk through the
    small buffer when ``dz`` does not need it).
    So one step writes two fresh ``(N, D)`` tensors (``q`` and ``dz``) where the unfused
    ``embedding + straight_through + vq_loss`` graph wrote about 16; on CPU every fresh large tensor also
    costs page faults. Nothing but ``z``, ``q`` (which the graph holds anyway) and the indices is saved.
    """

    @staticmethod
    def forward(z, codes, indices, weight, nu, cw, bw):
        q = F.embedding(indices, codes)
        n, d = q.shape
        acc = accumulation_dtype(z, q)
        zf, qf = z.to(acc), q.to(acc)
        chunks, rows = _row_chunks(n, d)
        buf = torch.empty(min(rows, n), d, dtype=acc, device=q.device)
        sq = q.new_zeros((), dtype=acc)
        for s, e in chunks:
            b = buf[: e - s]
            torch.sub(zf[s:e], qf[s:e], out=b)
            if weight is None:
                sq = sq + torch.dot(b.view(-1), b.view(-1))
            else:
                sq = sq + (b.square().sum(-1) * weight[s:e]).sum()
        if weight is None:
            denom = q.new_tensor(float(max(n * d, 1)), dtype=acc)
        else:
            denom = (weight.sum() * d).clamp_min(1.0)
        mse = sq / denom
        return q, mse * (cw + bw), mse, denom

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        z, codes, indices, weight, nu, cw, bw = inputs
        q, _, mse, denom = output
        ctx.save_for_backward(z, q, indices, weight, denom)
        ctx.nu, ctx.cw, ctx.bw = nu, cw, bw
        ctx.z_dtype, ctx.codes_shape, ctx.codes_dtype = z.dtype, codes.shape, codes.dtype
        ctx.mark_non_differentiable(mse, denom)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, g_out, g_total, g_mse, g_denom):
        z, q, indices, weight, denom = ctx.saved_tensors
        need_z, need_codes = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        acc = denom.dtype
        s = None if g_total is None else 2.0 * g_total.to(acc) / denom
        commit = s is not None and need_z and ctx.cw != 0.0
        codebook = s is not None and need_codes and ctx.bw != 0.0
        # the (weighted) residual z - q, formed once when dz needs it and shared with the codebook term
        diff = None
        if commit:
            diff = torch.sub(z.to(acc), q.to(acc))
            if weight is not None:
                diff.mul_(weight[:, None])
        dcodes = None
        if need_codes:
            if codebook:  # -bw * s * sum_{i -> k} (z_i - q_i)
                dcodes = torch.zeros(ctx.codes_shape, dtype=acc, device=q.device)
                if diff is not None:
                    dcodes.index_add_(0, indices, diff)
                else:  # no dz to share: scatter z - q chunk by chunk through a small buffer
                    _scatter_residual_(dcodes, z.to(acc), q.to(acc), indices, weight)
                dcodes.mul_(s * -ctx.bw)
            if g_out is not None and ctx.nu != 0.0:
                if dcodes is None:
                    dcodes = torch.zeros(ctx.codes_shape, dtype=acc, device=q.device)
                g = g_out.to(acc)
                if weight is not None:  # padding rows: their outputs are meaningless, never a code's gradient
                    g = g * (weight != 0)[:, None]
                dcodes.index_add_(0, indices, g, alpha=ctx.nu)
            if dcodes is not None:
                dcodes = dcodes.to(ctx.codes_dtype)
        dz = None
        if need_z:
            if diff is None:
                dz = g_out
            else:  # dz = g + cw * s * (z - q), in place in the residual buffer
                dz = diff.mul_(s * ctx.cw)
                if g_out is not None:
                    dz.add_(g_out.to(acc))
            dz = None if dz is None else dz.to(ctx.z_dtype)
        return dz, dcodes, None, None, None, None, None


def _scatter_residual_(out: Tensor, z: Tensor, q: Tensor, indices: Tensor, weight: Tensor | None) -> None:
    """``out.index_add_(0, indices, weight * (z - q))`` without a full ``(N, D)`` temporary."""
    n, d = q.shape
    chunks, rows = _row_chunks(n, d)
    buf = torch.empty(min(rows, n), d, dtype=out.dtype, device=out.device)
    for s0, e in chunks:
        b = buf[: e - s0]
        torch.sub(z[s0:e], q[s0:e], out=b)
        if weight is not None:
            b.mul_(weight[s0:e, None])
        out.index_add_(0, indices[s0:e], b)


def straight_through_with_loss(
    z: Tensor, codes: Tensor, indices: Tensor, nu: float, commitment_weight: float, codebook_weight: float,
    weight: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``straight_through(z, codes[indices], nu)`` and ``vq_loss(z, codes[indices], ...)`` as one op.

    Args:
        z: ``(N, D)`` encoder vectors; codes: ``(K, D)`` effective codes (differentiable);
        indices: ``(N,)`` int64 assignments; nu: synchronized-update weight;
        commitment_weight, codebook_weight: loss weights; weight: optional ``(N,)`` row weights.
    Returns:
        ``(out, total_loss, mse)``: ``out`` equals ``codes[indices]`` in value (``codes``' dtype) with the
        straight-through gradients; ``total_loss`` as :func:`vqkit.losses.vq_loss`; ``mse`` detached (the
        commitment and codebook terms are equal in value).
    """
    out, total, mse, _ = _GatherSTELoss.apply(z, codes, indices, weight, float(nu), float(commitment_weight),
                                                 float(codebook_weight))
    return out, total, mse


def rotation_trick(z: Tensor, q: Tensor, nu: float = 0.0, eps: float = 1e-8) -> Tensor:
    """Rotation-trick output (Fifty et al. 2024), value equal to ``q``.

    With ``e^ = z / ||z||``, ``q^ = q / ||q||``, ``r = (e^ + q^) / ||e^ + q^||``:
    ``R z = z - 2 r (r . z) + 2 q^ (e^ . z)``; all of ``r, q^, e^, lambda`` are constants for autograd.

    Args:
        z, q: ``(N, D)``; nu: synchronized-update weight.
    """
    z = z.to(q.dtype)
    qd = q.detach()
    z_norm = z.detach().norm(dim=-1, keepdim=True).clamp_min(eps)
    q_norm = qd.norm(dim=-1, keepdim=True)
    e_hat = z.detach() / z_norm
    q_hat = qd / q_norm.clamp_min(eps)
    r = F.normalize(e_hat + q_hat, dim=-1, eps=eps)
    rotated = z - 2.0 * r * (r * z).sum(-1, keepdim=True) + 2.0 * q_hat * (e_hat * z).sum(-1, keepdim=True)
    rotated = rotated * (q_norm / z_norm)
    return _with_code_gradient(qd + (rotated - rotated.detach()), q, nu)


def estimate(estimator: str, z: Tensor, q: Tensor, nu: float = 0.0) -> Tensor:
    """The output of estimator ``"ste"`` (:func:`straight_through`) or ``"rotation"`` (:func:`rotation_trick`)."""
    if estimator == "rotation":
        return rotation_trick(z, q, nu)
    return straight_through(z, q, nu)
