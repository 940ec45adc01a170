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

import torch.nn.functional as F
from torch import Tensor

__all__ = ["straight_through", "rotation_trick", "ESTIMATORS"]

ESTIMATORS = ("ste", "rotation")


def _with_code_gradient(out: Tensor, q: Tensor, nu: float) -> Tensor:
    if nu == 0.0:
        return out
    return out + nu * (q - q.detach())


def straight_through(z: Tensor, q: Tensor, nu: float = 0.0) -> Tensor:
    """Straight-through output (optionally synchronized).

    Args:
        z: ``(N, D)`` encoder vectors (receive the identity gradient).
        q: ``(N, D)`` selected codes; with ``nu > 0`` they must be differentiable w.r.t. the codebook.
        nu: synchronized-update weight (0 = plain STE).
    Returns:
        ``(N, D)`` tensor equal to ``q`` in value, in ``q``'s dtype.
    """
    z = z.to(q.dtype)
    return _with_code_gradient(q.detach() + (z - z.detach()), q, nu)


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
