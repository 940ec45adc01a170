"""Codebook parameterizations: how the *effective* code vectors c_k are made from stored weights.

Every codebook maps raw weights ``w`` (K x D) to effective codes ``c`` (K x D) with ``forward()``,
and can write effective values back (``set_codes_``) by inverting its transform, so that k-means
init, dead-code replacement and alternating steps all work in the effective space the search sees.

* :class:`Codebook`: ``c_k = w_k`` (learned by gradient).
* :class:`AffineCodebook`: ``c_k = (1 + a * s_g) * w_k + a * b_g`` with shared, zero-initialized
  ``s, b`` per group of codes g and learning-rate multiplier ``a`` (Huh et al. 2023).
* :class:`RunningAffineCodebook`: ``c_k = scale * w_k + shift`` with ``scale = sqrt(Var[z] / Var[w])``,
  ``shift = E[z] - scale * E[w]`` from EMA moments of the embeddings z and of the weights.
* :class:`EMACodebook`: ``c_k = w_k`` with ``w`` a buffer set to EMA cluster means (VQ-VAE-2 style).

Statistics that depend on data (running moments, EMA sums, code counts) are all-reduced through
:mod:`vqkit.distributed`, so every rank holds the same codebook.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import distributed as dist_utils

__all__ = [
    "Codebook",
    "AffineCodebook",
    "RunningAffineCodebook",
    "EMACodebook",
    "assignment_sums",
]


def assignment_sums(z: Tensor, indices: Tensor, weight: Tensor | None, size: int) -> tuple[Tensor, Tensor]:
    """Per-code assignment counts and embedding sums, summed over ranks.

    Args:
        z: ``(N, D)`` embeddings (detached).
        indices: ``(N,)`` int64 assigned codes.
        weight: optional ``(N,)`` float weights (0 for masked positions).
        size: K.
    Returns:
        ``counts (K,)`` and ``sums (K, D)``, fp32.
    """
    z = z.float()
    if weight is not None:
        z = z * weight[:, None]
        w = weight
    else:
        w = torch.ones(z.shape[0], dtype=torch.float32, device=z.device)
    counts = torch.zeros(size, dtype=torch.float32, device=z.device).index_add_(0, indices, w)
    sums = torch.zeros(size, z.shape[1], dtype=torch.float32, device=z.device).index_add_(0, indices, z)
    dist_utils.all_reduce_sum_(counts, sums)
    return counts, sums


class Codebook(nn.Module):
    """Plain codebook, ``c_k = w_k``.

    Args:
        size: number of codes K.
        dim: code dimension D.
        groups: number of contiguous code groups (only affine variants use it).
    """

    trainable = True

    def __init__(self, size: int, dim: int, groups: int = 1) -> None:
        super().__init__()
        if size % groups != 0:
            raise ValueError(f"affine_groups: expected a divisor of codebook_size={size}, got {groups}")
        self.size, self.dim, self.groups = size, dim, groups
        self.weight = nn.Parameter(torch.randn(size, dim))

    def forward(self) -> Tensor:
        """Effective codes ``(K, D)``."""
        return self.weight

    def affine_map(self) -> tuple[Tensor, Tensor] | None:
        """Detached ``(alpha, beta)``, each ``(G, D)``, with ``c = alpha * w + beta``; None = identity."""
        return None

    def to_raw(self, values: Tensor, indices: Tensor) -> Tensor:
        """Raw weights that produce effective ``values (n, D)`` for codes ``indices (n,)``."""
        m = self.affine_map()
        if m is None:
            return values
        g = self.group_of(indices)
        return (values - m[1][g]) / m[0][g]

    @torch.no_grad()
    def set_codes_(self, indices: Tensor, values: Tensor) -> None:
        """Make the effective codes ``indices (n,)`` equal ``values (n, D)``."""
        self.weight[indices] = self.to_raw(values.float(), indices).to(self.weight.dtype)

    def update_statistics_(self, z: Tensor, weight: Tensor | None) -> None:
        """Hook for data-dependent transforms (running affine). ``z (N, D)`` detached."""

    @torch.no_grad()
    def alternating_step_(self, counts: Tensor, sums: Tensor, lr: float) -> None:
        """One inner codebook step on the codebook loss ``sum_i ||z_i - c_{k_i}||^2``.

        Each used code moves a fraction ``lr`` of the way to the mean of its assigned embeddings (the
        exact minimizer of the loss for fixed assignments; ``lr=1`` is a Lloyd step). With ``c = alpha * w
        + beta`` that is ``w <- lerp(w, (mean - beta) / alpha, lr)`` on the raw weights, done in place on
        ``sums`` and ``w`` (no ``(K, D)`` temporaries; unused codes keep bit-identical weights).
        Shape-static (no host sync), so it traces under ``torch.compile``.

        Args:
            counts: ``(K,)`` assignment counts; sums: ``(K, D)`` fp32 assigned-embedding sums, **consumed**
                (overwritten with the raw-space targets).
            lr: step size in ``(0, 1]``.
        """
        target = sums.div_(counts.clamp_min(1.0)[:, None])
        m = self.affine_map()
        if m is not None:
            tv = target.view(self.groups, -1, self.dim)
            tv.sub_(m[1][:, None]).div_(m[0][:, None])
        w = self.weight
        step = torch.where(counts > 0, lr, 0.0).to(w.dtype)[:, None]
        w.lerp_(target.to(w.dtype), step)

    def group_of(self, indices: Tensor) -> Tensor:
        """Group id of each code index."""
        return indices // (self.size // self.groups)


class AffineCodebook(Codebook):
    """Learned affine re-parameterization ``c_k = (1 + a * s_g) * w_k + a * b_g``.

    ``s, b`` are ``(G, D)``, zero-initialized (identity at start), shared by the ``K / G`` codes of each
    group, so every step updates the whole codebook densely. ``a = affine_lr`` multiplies their
    gradients, which the optimizer sees as an ``a``-times larger step on the shared parameters.
    """

    def __init__(self, size: int, dim: int, groups: int = 1, affine_lr: float = 1.0) -> None:
        super().__init__(size, dim, groups)
        if not affine_lr > 0:
            raise ValueError(f"affine_lr: expected a positive float, got {affine_lr}")
        self.affine_lr = float(affine_lr)
        self.scale = nn.Parameter(torch.zeros(groups, dim))
        self.shift = nn.Parameter(torch.zeros(groups, dim))

    def transform(self) -> tuple[Tensor, Tensor]:
        """``(alpha, beta)``, each ``(G, D)``, with ``c = alpha * w + beta``."""
        return 1.0 + self.affine_lr * self.scale, self.affine_lr * self.shift

    def forward(self) -> Tensor:
        alpha, beta = self.transform()
        w = self.weight.view(self.groups, self.size // self.groups, self.dim)
        return torch.addcmul(beta[:, None], w, alpha[:, None]).reshape(self.size, self.dim)

    def affine_map(self) -> tuple[Tensor, Tensor]:
        alpha, beta = (t.detach().float() for t in self.transform())
        alpha = torch.where(alpha.abs() < 1e-6, torch.where(alpha < 0, -1e-6, 1e-6), alpha)  # finite inverse
        return alpha, beta

    @torch.no_grad()
    def alternating_step_(self, counts: Tensor, sums: Tensor, lr: float) -> None:
        """Shift block, then code block (block coordinate descent on the codebook loss).

        Shift block: each group's shift moves by ``lr`` times the mean residual ``z_i - c_{k_i}`` of the
        embeddings assigned to its codes (the exact minimizer in ``b`` for ``lr=1``), so the *whole* group,
        used and unused codes alike, follows the embeddings. Then each used code takes the step of
        :meth:`Codebook.alternating_step_`. The scale is left to the outer optimizer: its least-squares
        fit over the assigned pairs shrinks toward zero whenever the fit is poor (regression dilution),
        which pulls the unused codes into the mean and costs codebook usage (measured on digits).
        """
        g, d = self.groups, self.dim
        alpha, beta = (t.detach().float() for t in self.transform())
        # sum over the group's assigned pairs of z_i - c_{k_i} = sum_k sums_k - alpha * sum_k n_k w_k - n beta,
        # formed from (G, D) reductions: no (K, D) temporary
        n = counts.view(g, 1, -1)
        weighted_w = torch.bmm(n, self.weight.detach().float().view(g, -1, d)).squeeze(1)
        total = n.sum(-1)
        residual = (sums.view(g, -1, d).sum(1) - alpha * weighted_w - total * beta) / total.clamp_min(1.0)
        self.shift.add_(residual, alpha=lr / self.affine_lr)
        super().alternating_step_(counts, sums, lr)


class RunningAffineCodebook(Codebook):
    """Affine transform from running statistics: ``c_k = scale_g * w_k + shift_g``.

    ``scale = sqrt(Var[z] / (Var[w_g] + 1e-8))`` and ``shift = E[z] - scale * E[w_g]`` per dimension, from
    EMA (``momentum``) moments of the embeddings (all-reduced across ranks) and of each group's weights,
    updated on every training forward; the first update copies the batch moments. Variances are biased.
    Identity until the first update.
    """

    def __init__(self, size: int, dim: int, groups: int = 1, momentum: float = 0.1) -> None:
        super().__init__(size, dim, groups)
        if not 0 < momentum <= 1:
            raise ValueError(f"affine_momentum: expected a float in (0, 1], got {momentum}")
        self.momentum = float(momentum)
        self.register_buffer("z_mean", torch.zeros(dim))
        self.register_buffer("z_var", torch.ones(dim))
        self.register_buffer("w_mean", torch.zeros(groups, dim))
        self.register_buffer("w_var", torch.ones(groups, dim))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.int64))

    def transform(self) -> tuple[Tensor, Tensor]:
        scale = (self.z_var / (self.w_var + 1e-8)).sqrt()
        return scale, self.z_mean - scale * self.w_mean

    def forward(self) -> Tensor:
        scale, shift = self.transform()
        w = self.weight.view(self.groups, self.size // self.groups, self.dim)
        return torch.addcmul(shift[:, None], w, scale[:, None]).reshape(self.size, self.dim)

    def affine_map(self) -> tuple[Tensor, Tensor]:
        scale, shift = self.transform()
        return scale.clamp_min(1e-12), shift

    @torch.no_grad()
    def update_statistics_(self, z: Tensor, weight: Tensor | None) -> None:
        z = z.float()
        if weight is None:
            weight = torch.ones(z.shape[0], dtype=torch.float32, device=z.device)
        moments = torch.stack([(z * weight[:, None]).sum(0), (z * z * weight[:, None]).sum(0)])
        count = weight.sum().reshape(1)
        dist_utils.all_reduce_sum_(moments, count)
        w = self.weight.detach().float().view(self.groups, -1, self.dim)
        w_mean, w_var = w.mean(1), w.var(1, unbiased=False)
        n = count.clamp_min(1.0)
        z_mean = moments[0] / n
        z_var = (moments[1] / n - z_mean**2).clamp_min(0.0)
        # first update copies, later ones are EMAs; a batch without valid rows leaves z moments alone
        m = torch.where(self.num_updates == 0, 1.0, self.momentum)
        m_z = torch.where(count > 0, m, 0.0)
        self.z_mean.lerp_(z_mean, m_z)
        self.z_var.lerp_(z_var, m_z)
        self.w_mean.lerp_(w_mean, m)
        self.w_var.lerp_(w_var, m)
        self.num_updates.add_(1)


class EMACodebook(Codebook):
    """Codebook updated by exponential moving averages of cluster statistics, not by gradients.

    ``N_k <- d N_k + (1 - d) n_k``, ``M_k <- d M_k + (1 - d) sum_{i -> k} z_i``, ``w_k = M_k / N~_k`` with
    Laplace-smoothed ``N~_k``; ``n_k`` and the sums are all-reduced over ranks.
    """

    trainable = False

    def __init__(self, size: int, dim: int, decay: float, eps: float = 1e-5) -> None:
        super().__init__(size, dim, 1)
        if not 0 < decay < 1:
            raise ValueError(f"ema_decay: expected a float in (0, 1), got {decay}")
        self.decay, self.eps = float(decay), float(eps)
        w = self.weight.detach().clone()
        del self.weight
        self.register_buffer("weight", w)
        self.register_buffer("cluster_size", torch.ones(size))
        self.register_buffer("embed_sum", w.clone())

    @torch.no_grad()
    def set_codes_(self, indices: Tensor, values: Tensor) -> None:
        values = values.to(self.weight.dtype)
        self.weight[indices] = values
        self.cluster_size[indices] = 1.0
        self.embed_sum[indices] = values

    @torch.no_grad()
    def ema_update_(self, counts: Tensor, sums: Tensor) -> None:
        """Fold one batch's (all-reduced) ``counts (K,)`` and ``sums (K, D)`` into the codebook."""
        self.cluster_size.lerp_(counts, 1.0 - self.decay)
        self.embed_sum.lerp_(sums, 1.0 - self.decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (total + self.size * self.eps) * total
        self.weight.copy_(self.embed_sum / smoothed[:, None])
