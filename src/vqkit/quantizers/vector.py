"""Vector quantizers: :class:`VectorQuantizer`, :class:`GroupedVectorQuantizer`,
:class:`ResidualVectorQuantizer`.

The :class:`VectorQuantizer` implements the three techniques of Huh et al. 2023, *Straightening Out the
Straight-Through Estimator*, on by default (DESIGN section 2: users keep defaults):

1. affine re-parameterization of the codebook (``affine="learned"`` with ``affine_lr``, or ``"running"``),
2. alternating optimization (``alternating_steps`` inner codebook steps before the output is formed),
3. the synchronized commitment update (``sync_nu``),

plus k-means++ initialization, dead-code replacement, EMA codebooks, the cosine metric, low-dimensional
codebooks with projections and the rotation-trick estimator.

The default set: ``affine="learned", affine_lr=10, sync_nu=1.0, alternating_steps=1, alternating_lr=1.0,
kmeans_init=True, dead_code_steps=100``, loss weights ``(0.05, 0.95)`` (the paper's beta = 0.95). Pass
explicit flags for ablations, e.g. the plain straight-through baseline is ``VectorQuantizer(dim, K,
affine=None, sync_nu=0.0, alternating_steps=0, kmeans_init=False, dead_code_steps=0)`` (see
:data:`PLAIN_STE`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import distributed as dist_utils
from ..codebooks import AffineCodebook, Codebook, EMACodebook, RunningAffineCodebook, assignment_sums
from ..estimators import ESTIMATORS, rotation_trick, straight_through, straight_through_with_loss
from ..losses import vq_loss
from ..maintenance import gather_embeddings, kmeans, sample_replacements, shared_generator
from ..metrics import code_counts, perplexity, usage
from ..search import DEFAULT_MEMORY_BUDGET, METRICS, SearchResult, nearest_code
from .base import (
    QuantizerOutput,
    Quantizer,
    check_choice,
    check_finite,
    check_input,
    check_mask,
    check_positive_int,
    move_channel_last,
    restore_channel_dim,
)

__all__ = [
    "VectorQuantizer",
    "GroupedVectorQuantizer",
    "ResidualVectorQuantizer",
    "VQResult",
    "PLAIN_STE",
]

AFFINES = (None, "learned", "running")

#: keyword arguments that turn every fix off: the plain straight-through VQ-VAE baseline.
PLAIN_STE = dict(affine=None, sync_nu=0.0, alternating_steps=0, kmeans_init=False, dead_code_steps=0)

#: window used for the ``dead_codes`` statistic when replacement is off (the paper's typical T).
DEAD_CODE_WINDOW = 20

#: decay of the running assignment counts behind ``dead_code_threshold``.
USAGE_EMA_DECAY = 0.8


class VQResult:
    """Result of :meth:`VectorQuantizer.quantize_vectors` on flat vectors.

    ``codes`` ``(N, Dc)``: selected effective codes, differentiable w.r.t. the codebook parameters;
    ``indices`` ``(N,)``; ``loss`` scalar; ``stats`` detached scalars.
    """

    __slots__ = ("codes", "indices", "loss", "stats")

    def __init__(self, codes: Tensor, indices: Tensor, loss: Tensor, stats: dict[str, Tensor]) -> None:
        self.codes, self.indices, self.loss, self.stats = codes, indices, loss, stats


def _flatten(quantizer: Quantizer, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None, torch.Size]:
    """``x`` -> ``(N, dim)`` channel-last rows, ``(N,)`` float row weights (or None), leading shape."""
    check_input("x", x, quantizer.dim, quantizer.channel_dim)
    x_last = move_channel_last(x, quantizer.channel_dim)
    lead = x_last.shape[:-1]
    check_mask(mask, lead)
    weight = None if mask is None else mask.reshape(-1).float()
    return x_last.reshape(-1, quantizer.dim), weight, lead


def _unflatten(quantizer: Quantizer, out: Tensor, lead: torch.Size, dtype: torch.dtype) -> Tensor:
    return restore_channel_dim(out.to(dtype).reshape(*lead, out.shape[-1]), quantizer.channel_dim)


def _estimate(estimator: str, z: Tensor, codes: Tensor, nu: float) -> Tensor:
    if estimator == "rotation":
        return rotation_trick(z, codes, nu)
    return straight_through(z, codes, nu)


def _mean_stats(stats: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    return {k: torch.stack([s[k] for s in stats]).mean() for k in stats[0]}


class VectorQuantizer(Quantizer):
    """Vector quantizer with the fixes of Huh et al. 2023 on by default.

    Args:
        dim: input channels D_in.
        codebook_size: number of codes K.
        codebook_dim: code dimension D; when it differs from ``dim`` the input is projected in and the
            output projected back with learned linear maps.
        metric: ``"euclidean"`` (squared L2) or ``"cosine"`` (inputs and codes l2-normalized; the output
            is the unit-norm code).
        commitment_weight: weight of ``mean((z - sg(c))^2)`` (pulls the encoder to its codes).
        codebook_weight: weight of ``mean((sg(z) - c)^2)`` (pulls codes to the encoder). The default
            ``(0.05, 0.95)`` is the paper's ``beta = 0.95``; the classic VQ-VAE is ``(0.25, 1.0)``.
        sync_nu: synchronized update weight: the task gradient reaches the selected codes times ``nu``.
        affine: ``"learned"`` (shared scale/shift trained with a multiplier ``affine_lr``), ``"running"``
            (scale/shift from running moments) or ``None``.
        affine_lr: learning-rate multiplier ``a`` of the learned affine parameters.
        affine_groups: number of contiguous code groups with their own scale/shift (divides K).
        alternating_steps: inner codebook steps taken before the output is formed (training only).
        alternating_lr: inner step size in ``(0, 1]``: each step is block coordinate descent on the
            codebook loss, moving the affine shift (all codes of a group by the mean residual) and then
            each used code (toward its assigned-embedding mean) this fraction of the way to their optimum;
            ``1.0`` is an exact Lloyd-style step.
        alternating_reassign: re-run the search after the last inner step, so the output and the STE
            gradient use the updated codebook *and* assignment (one extra search per step).
        kmeans_init: initialize the codebook with k-means++ on the first training batch.
        kmeans_iters: Lloyd iterations of that init.
        dead_code_steps: re-seed a code from a current embedding after this many training steps
            without use (0 = never).
        dead_code_threshold: also re-seed codes whose running assignment count (an EMA over steps with
            decay 0.8, of the all-reduced per-step counts) drops below this many vectors (0 = off): rarely
            used codes are recycled too, which flattens usage (higher perplexity) at large K.
        ema_decay: if set, the codebook is an EMA of cluster means instead of learned by gradient
            (incompatible with affine, alternating steps and ``sync_nu``).
        estimator: ``"ste"`` (straight-through) or ``"rotation"`` (rotation trick).
        channel_dim: axis of the channels (``1`` for ``B x C x H x W``).
        affine_momentum: EMA momentum of the running-statistics affine.
        check_finite: raise on NaN/Inf input in training (one host sync per step).
        memory_budget: bytes for one chunk of the nearest-code search.

    Shapes: ``x`` ``(..., dim)`` (channels on ``channel_dim``) -> ``quantized`` same shape and dtype,
    ``indices`` int64 ``x.shape`` minus the channel axis, ``loss`` scalar. ``mask`` (bool, True = real
    position, the shape of ``indices``) keeps padded positions out of the loss, the codebook updates and
    the stats.
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        *,
        codebook_dim: int | None = None,
        metric: str = "euclidean",
        commitment_weight: float = 0.05,
        codebook_weight: float = 0.95,
        sync_nu: float = 1.0,
        affine: str | None = "learned",
        affine_lr: float = 10.0,
        affine_groups: int = 1,
        alternating_steps: int = 1,
        alternating_lr: float = 1.0,
        alternating_reassign: bool = False,
        kmeans_init: bool = True,
        kmeans_iters: int = 10,
        dead_code_steps: int = 100,
        dead_code_threshold: float = 0.0,
        ema_decay: float | None = None,
        estimator: str = "ste",
        channel_dim: int = -1,
        affine_momentum: float = 0.1,
        check_finite: bool = True,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
    ) -> None:
        super().__init__(dim, channel_dim)
        check_positive_int("codebook_size", codebook_size)
        if codebook_dim is not None:
            check_positive_int("codebook_dim", codebook_dim)
        check_choice("metric", metric, METRICS)
        check_choice("affine", affine, AFFINES)
        check_choice("estimator", estimator, ESTIMATORS)
        check_positive_int("affine_groups", affine_groups)
        check_positive_int("alternating_steps", alternating_steps, minimum=0)
        check_positive_int("kmeans_iters", kmeans_iters, minimum=0)
        check_positive_int("dead_code_steps", dead_code_steps, minimum=0)
        check_positive_int("memory_budget", memory_budget)
        for name, value in (("commitment_weight", commitment_weight), ("codebook_weight", codebook_weight),
                            ("sync_nu", sync_nu)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name}: expected a float >= 0, got {value!r}")
        if not isinstance(dead_code_threshold, (int, float)) or isinstance(dead_code_threshold, bool) \
                or not 0 <= dead_code_threshold < float("inf"):
            raise ValueError(f"dead_code_threshold: expected a finite float >= 0, got {dead_code_threshold!r}")
        if not 0 < alternating_lr <= 1:
            raise ValueError(f"alternating_lr: expected a float in (0, 1], got {alternating_lr}")
        if ema_decay is not None:
            clashes = [n for n, on in (("affine", affine is not None), ("alternating_steps", alternating_steps > 0),
                                       ("sync_nu", sync_nu > 0)) if on]
            if clashes:
                raise ValueError(
                    f"ema_decay: an EMA codebook is not trained by gradient, so it cannot be combined with "
                    f"{', '.join(clashes)}; pass " + ", ".join(
                        {"affine": "affine=None", "alternating_steps": "alternating_steps=0", "sync_nu": "sync_nu=0.0"}[c]
                        for c in clashes)
                )

        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim or dim
        self.metric = metric
        self.commitment_weight = float(commitment_weight)
        self.codebook_weight = float(codebook_weight)
        self.sync_nu = float(sync_nu)
        self.affine = affine
        self.alternating_steps = alternating_steps
        self.alternating_lr = float(alternating_lr)
        self.alternating_reassign = bool(alternating_reassign)
        self.kmeans_init = bool(kmeans_init)
        self.kmeans_iters = kmeans_iters
        self.dead_code_steps = dead_code_steps
        self.dead_code_threshold = float(dead_code_threshold)
        self.ema_decay = ema_decay
        self.estimator = estimator
        self.check_finite = bool(check_finite)
        self.memory_budget = memory_budget

        projects = self.codebook_dim != dim
        self.project_in = nn.Linear(dim, self.codebook_dim) if projects else nn.Identity()
        self.project_out = nn.Linear(self.codebook_dim, dim) if projects else nn.Identity()
        if ema_decay is not None:
            self.codes: Codebook = EMACodebook(codebook_size, self.codebook_dim, ema_decay)
        elif affine == "learned":
            self.codes = AffineCodebook(codebook_size, self.codebook_dim, affine_groups, affine_lr)
        elif affine == "running":
            self.codes = RunningAffineCodebook(codebook_size, self.codebook_dim, affine_groups, affine_momentum)
        else:
            self.codes = Codebook(codebook_size, self.codebook_dim, affine_groups)
        self.register_buffer("initialized", torch.tensor(not self.kmeans_init))
        self.register_buffer("code_age", torch.zeros(codebook_size, dtype=torch.int64))
        if self.dead_code_threshold > 0:  # inf = not yet observed (the first step's counts are copied)
            self.register_buffer("usage_ema", torch.full((codebook_size,), float("inf")))

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, codebook_size={self.codebook_size}, codebook_dim={self.codebook_dim}, "
                f"metric={self.metric!r}, affine={self.affine!r}, sync_nu={self.sync_nu}, "
                f"alternating_steps={self.alternating_steps}, kmeans_init={self.kmeans_init}, "
                f"dead_code_steps={self.dead_code_steps}, "
                + (f"dead_code_threshold={self.dead_code_threshold}, " if self.dead_code_threshold else "")
                + f"ema_decay={self.ema_decay}, estimator={self.estimator!r}")

    # ------------------------------------------------------------------------------------------
    # public API
    # ------------------------------------------------------------------------------------------

    @property
    def codebook(self) -> Tensor:
        """Effective code vectors ``(K, dim)`` (after affine, normalization and projection), detached."""
        with torch.no_grad():
            return self.project_out(self.effective_codes())

    def effective_codes(self) -> Tensor:
        """The codes the search sees, ``(K, codebook_dim)``, differentiable w.r.t. the parameters."""
        codes = self.codes()
        return F.normalize(codes, dim=-1) if self.metric == "cosine" else codes

    def decode(self, indices: Tensor) -> Tensor:
        """``indices`` ``(...)`` -> codes ``(..., dim)`` with the channel axis at ``channel_dim``."""
        if not isinstance(indices, Tensor) or indices.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"indices: expected an int64 tensor, got {getattr(indices, 'dtype', type(indices))}")
        out = self.project_out(F.embedding(indices.long(), self.effective_codes()))
        return restore_channel_dim(out, self.channel_dim) if indices.ndim >= 1 else out

    def forward(self, x: Tensor, mask: Tensor | None = None) -> QuantizerOutput:
        """Quantize ``x``; see the class docstring for shapes."""
        flat, weight, lead = _flatten(self, x, mask)
        z = self.project_in(flat)
        if self.metric == "cosine":
            z = F.normalize(z, dim=-1)
        if self.estimator == "ste":  # gather, straight-through output and loss in one fused op
            res = self.quantize_vectors(z, weight, output_nu=self.sync_nu)
            out = self.project_out(res.codes)
        else:
            res = self.quantize_vectors(z, weight)
            out = self.project_out(_estimate(self.estimator, z, res.codes, self.sync_nu))
        return QuantizerOutput(_unflatten(self, out, lead, x.dtype), res.indices.reshape(lead), res.loss, res.stats)

    # ------------------------------------------------------------------------------------------
    # the quantization step on flat vectors (reused by grouped / residual quantizers)
    # ------------------------------------------------------------------------------------------

    def search(self, z: Tensor, codes: Tensor) -> SearchResult:
        return nearest_code(z, codes, self.metric, memory_budget=self.memory_budget)

    def quantize_vectors(self, z: Tensor, weight: Tensor | None = None, output_nu: float | None = None) -> VQResult:
        """Assign ``z (N, codebook_dim)`` to codes, maintaining the codebook in training.

        Args:
            z: vectors in codebook space (already projected; l2-normalized for the cosine metric).
            weight: optional ``(N,)`` float row weights, 0 for masked rows.
            output_nu: if given, ``codes`` of the result is already the (synchronized, with this ``nu``)
                straight-through output, computed with the loss in one fused op.
        Returns:
            :class:`VQResult` with the selected codes (not yet passed through an estimator, unless
            ``output_nu`` is given).
        """
        zd = z.detach()
        if self.training:
            self._maintain(zd, weight)
            self.codes.update_statistics_(zd, weight)
        codes = self.effective_codes()
        found = self.search(zd, codes)
        if self.training and self.alternating_steps > 0:
            for step in range(self.alternating_steps):
                counts, sums = assignment_sums(zd, found.indices, weight, self.codebook_size)
                self.codes.alternating_step_(counts, sums, self.alternating_lr)
                if step < self.alternating_steps - 1 or self.alternating_reassign:
                    found = self.search(zd, self.effective_codes())
            codes = self.effective_codes()
        indices = found.indices
        if output_nu is None:
            selected = F.embedding(indices, codes)
            total, commitment, codebook = vq_loss(z, selected, self.commitment_weight, self.codebook_weight, weight)
        else:
            selected, total, commitment = straight_through_with_loss(
                z, codes, indices, output_nu, self.commitment_weight, self.codebook_weight, weight)
            codebook = commitment
        if self.training and isinstance(self.codes, EMACodebook):
            self.codes.ema_update_(*assignment_sums(zd, indices, weight, self.codebook_size))

        counts = code_counts(indices, self.codebook_size, None if weight is None else weight > 0)
        if self.training:
            dist_utils.all_reduce_sum_(counts)
            self.code_age.add_(1).masked_fill_(counts > 0, 0)
            if self.dead_code_threshold > 0:
                ema = self.usage_ema
                ema.copy_(torch.where(ema.isinf(), counts, ema.lerp(counts, 1.0 - USAGE_EMA_DECAY)))
        window = self.dead_code_steps or DEAD_CODE_WINDOW
        if weight is None:
            qerr = found.distances.mean() if found.distances.numel() else found.distances.sum()
        else:
            qerr = (found.distances * weight).sum() / weight.sum().clamp_min(1.0)
        stats = {
            "usage": usage(counts),
            "perplexity": perplexity(counts),
            "dead_codes": (self.code_age >= window).sum().float(),
            "quantization_error": qerr,
            "commitment_loss": commitment,
            "codebook_loss": codebook,
        }
        return VQResult(selected, indices, total, stats)

    # ------------------------------------------------------------------------------------------
    # data-dependent maintenance (host-synchronizing; kept out of torch.compile graphs)
    # ------------------------------------------------------------------------------------------

    @torch.compiler.disable
    def _maintain(self, z: Tensor, weight: Tensor | None) -> None:
        if self.check_finite:
            check_finite("x", z)
        if not bool(self.initialized):
            self._kmeans_init(z, weight)
        if self.dead_code_steps > 0 or self.dead_code_threshold > 0:
            self._replace_dead_codes(z, weight)

    def _kmeans_init(self, z: Tensor, weight: Tensor | None) -> None:
        pool = gather_embeddings(z, weight, max_rows=max(4 * self.codebook_size, 16384))
        if pool.shape[0] == 0:  # every rank's batch is fully masked: try again next step
            return
        centers = kmeans(pool, self.codebook_size, shared_generator(z.device), self.kmeans_iters, self.metric)
        self.codes.set_codes_(torch.arange(self.codebook_size, device=z.device), centers)
        self.initialized.fill_(True)

    def _replace_dead_codes(self, z: Tensor, weight: Tensor | None) -> None:
        dead = self.code_age >= self.dead_code_steps if self.dead_code_steps > 0 else torch.zeros_like(self.code_age, dtype=torch.bool)
        if self.dead_code_threshold > 0:
            dead = dead | (self.usage_ema < self.dead_code_threshold)
        dead = dead.nonzero().squeeze(1)
        if dead.numel() == 0:
            return
        pool = gather_embeddings(z, weight, max_rows=dead.numel())
        if pool.shape[0] == 0:
            return
        new = sample_replacements(pool, dead.numel(), shared_generator(z.device))
        if self.metric == "cosine":
            new = F.normalize(new, dim=-1)
        self.codes.set_codes_(dead, new)
        self.code_age[dead] = 0
        if self.dead_code_threshold > 0:
            self.usage_ema[dead] = self.dead_code_threshold


class GroupedVectorQuantizer(Quantizer):
    """Split each vector into ``groups`` equal parts, each quantized with its own (or a shared) codebook.

    Args:
        dim: input channels (divisible by ``groups``).
        codebook_size: codes per codebook.
        groups: number of groups G.
        shared_codebook: one codebook for all groups instead of one per group.
        channel_dim: channel axis.
        **kwargs: :class:`VectorQuantizer` arguments of each group's quantizer (``dim / G`` channels).

    Shapes: ``indices`` get a trailing axis of size G; ``loss`` is the mean over groups (the elementwise
    mean over the whole vector); stats are averaged over groups.
    """

    def __init__(self, dim: int, codebook_size: int, groups: int, *, shared_codebook: bool = False,
                 channel_dim: int = -1, **kwargs) -> None:
        super().__init__(dim, channel_dim)
        check_positive_int("groups", groups)
        if dim % groups != 0:
            raise ValueError(f"groups: expected a divisor of dim={dim}, got {groups}")
        self.groups = groups
        self.shared_codebook = bool(shared_codebook)
        n = 1 if shared_codebook else groups
        self.quantizers = nn.ModuleList(VectorQuantizer(dim // groups, codebook_size, **kwargs) for _ in range(n))

    @property
    def codebook(self) -> Tensor:
        """``(G or 1, K, dim / G)`` effective codebooks."""
        return torch.stack([q.codebook for q in self.quantizers])

    def forward(self, x: Tensor, mask: Tensor | None = None) -> QuantizerOutput:
        flat, weight, lead = _flatten(self, x, mask)
        parts = flat.view(-1, self.groups, self.dim // self.groups)
        if self.shared_codebook:
            vq = self.quantizers[0]
            w = None if weight is None else weight.repeat_interleave(self.groups)
            out = vq(parts.reshape(-1, self.dim // self.groups), None if w is None else w > 0)
            quantized, indices, loss, stats = out.quantized.reshape(-1, self.dim), out.indices, out.loss, out.stats
            indices = indices.reshape(*lead, self.groups)
        else:
            outs = [vq(parts[:, g], None if weight is None else weight > 0) for g, vq in enumerate(self.quantizers)]
            quantized = torch.cat([o.quantized for o in outs], dim=-1)
            indices = torch.stack([o.indices for o in outs], dim=-1).reshape(*lead, self.groups)
            loss = torch.stack([o.loss for o in outs]).mean()
            stats = _mean_stats([o.stats for o in outs])
        return QuantizerOutput(_unflatten(self, quantized, lead, x.dtype), indices, loss, stats)

    def decode(self, indices: Tensor) -> Tensor:
        """``(..., G)`` indices -> ``(..., dim)`` (channel axis at ``channel_dim``)."""
        if indices.shape[-1:] != (self.groups,):
            raise ValueError(f"indices: expected a trailing axis of size groups={self.groups}, got {tuple(indices.shape)}")
        parts = [self.quantizers[0 if self.shared_codebook else g].decode(indices[..., g]) for g in range(self.groups)]
        # the inner quantizers are channel-last
        return restore_channel_dim(torch.cat(parts, dim=-1), self.channel_dim)


class ResidualVectorQuantizer(Quantizer):
    """``num_levels`` quantizers applied in sequence, each to what the previous ones left unexplained.

    ``r_0 = z``, ``c_l = Q_l(r_l)``, ``r_{l+1} = r_l - sg(c_l)``; output ``sum_l c_l`` with one estimator
    on the total (so ``z`` gets the identity gradient once, and with ``sync_nu`` every level's selected code
    gets ``nu`` times the task gradient).

    Args:
        dim: input channels.
        codebook_size: codes per level.
        num_levels: L.
        shared_codebook: one codebook used at every level (its maintenance counters then advance once per
            level per step).
        codebook_dim: shared projection dimension (projection in/out around all levels).
        sync_nu, estimator: as in :class:`VectorQuantizer`, applied to the sum.
        channel_dim: channel axis.
        **kwargs: :class:`VectorQuantizer` arguments of each level.

    Shapes: ``indices`` get a trailing axis of size L; ``loss`` is the sum of the level losses; stats are
    averaged over levels.
    """

    def __init__(self, dim: int, codebook_size: int, num_levels: int, *, shared_codebook: bool = False,
                 codebook_dim: int | None = None, sync_nu: float = 1.0, estimator: str = "ste",
                 channel_dim: int = -1, **kwargs) -> None:
        super().__init__(dim, channel_dim)
        check_positive_int("num_levels", num_levels)
        check_choice("estimator", estimator, ESTIMATORS)
        if sync_nu < 0:
            raise ValueError(f"sync_nu: expected a float >= 0, got {sync_nu!r}")
        if kwargs.get("metric", "euclidean") != "euclidean":
            raise ValueError(f"metric: residual quantization needs metric='euclidean' (residuals are not unit "
                             f"vectors), got {kwargs['metric']!r}")
        self.num_levels = num_levels
        self.shared_codebook = bool(shared_codebook)
        self.codebook_dim = codebook_dim or dim
        self.sync_nu, self.estimator = float(sync_nu), estimator
        projects = self.codebook_dim != dim
        self.project_in = nn.Linear(dim, self.codebook_dim) if projects else nn.Identity()
        self.project_out = nn.Linear(self.codebook_dim, dim) if projects else nn.Identity()
        n = 1 if shared_codebook else num_levels
        self.levels = nn.ModuleList(VectorQuantizer(self.codebook_dim, codebook_size, **kwargs) for _ in range(n))

    def _level(self, i: int) -> VectorQuantizer:
        return self.levels[0 if self.shared_codebook else i]

    @property
    def codebook(self) -> Tensor:
        """``(L or 1, K, codebook_dim)`` effective level codebooks (before the output projection, since
        the projection applies to the sum of levels)."""
        with torch.no_grad():
            return torch.stack([q.effective_codes() for q in self.levels])

    def forward(self, x: Tensor, mask: Tensor | None = None) -> QuantizerOutput:
        flat, weight, lead = _flatten(self, x, mask)
        z = self.project_in(flat)
        residual, total, indices, losses, stats = z, None, [], [], []
        for i in range(self.num_levels):
            res = self._level(i).quantize_vectors(residual, weight)
            residual = residual - res.codes.detach().to(residual.dtype)
            total = res.codes if total is None else total + res.codes
            indices.append(res.indices)
            losses.append(res.loss)
            stats.append(res.stats)
        out = self.project_out(_estimate(self.estimator, z, total, self.sync_nu))
        return QuantizerOutput(
            _unflatten(self, out, lead, x.dtype),
            torch.stack(indices, dim=-1).reshape(*lead, self.num_levels),
            torch.stack(losses).sum(),
            _mean_stats(stats),
        )

    def decode(self, indices: Tensor) -> Tensor:
        """``(..., L)`` indices -> ``(..., dim)`` (channel axis at ``channel_dim``)."""
        if indices.shape[-1:] != (self.num_levels,):
            raise ValueError(
                f"indices: expected a trailing axis of size num_levels={self.num_levels}, got {tuple(indices.shape)}")
        total = sum(F.embedding(indices[..., i].long(), self._level(i).effective_codes())
                    for i in range(self.num_levels))
        return restore_channel_dim(self.project_out(total), self.channel_dim)
