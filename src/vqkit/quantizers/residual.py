"""Residual quantizers: :class:`ResidualVectorQuantizer`, :class:`GroupedResidualVectorQuantizer`,
:class:`ResidualFSQ`.

Residual quantization applies ``L`` levels in sequence, each to what the previous ones left unexplained::

    r_0 = z,   c_l = Q_l(r_l),   r_{l+1} = r_l - sg(c_l),   output = sum_l c_l

so the first levels carry a coarse code and the later ones refine it (SoundStream, EnCodec, DAC).
The three classes share these options (see ``docs/residual.md``):

* **quantize dropout** (bitrate scaling, SoundStream / EnCodec / DAC): in training each sample (the first
  leading axis of the input) or the whole batch uses only its first ``n`` levels, ``n`` drawn uniformly
  from ``[cutoff, L]`` and optionally rounded up to a multiple of ``m`` (capped at ``L``). Dropped levels
  add nothing to the output, see no data (no loss, maintenance or stats) and get index -1. The draw uses
  the global torch RNG on the input's device, shape-statically (no host sync).
* ``forward(..., num_levels=n)``: quantize with the first ``n`` levels only (all samples, no dropout);
  indices then have ``n`` level columns and ``decode`` reproduces the output from them.
* ``forward(..., return_levels=True)``: ``out.extras["partial_sums"]`` holds the differentiable
  reconstructions after ``1..n`` levels (:data:`PARTIAL_SUMS`).
* ``decode(indices)`` accepts the indices of the first ``n <= L`` levels, ``(..., n)``, and rejects -1
  (a level that was not quantized) with a message that says so.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..codebooks import codebook_spec
from ..dtypes import accumulation_dtype
from ..estimators import ESTIMATORS, estimate, straight_through
from ..metrics import index_stats
from ..validation import check_bool, check_choice, check_float, check_int, check_int_sequence
from .base import (
    IndexLayout,
    Quantizer,
    QuantizerOutput,
    apply_projection,
    flatten_input,
    mean_stats,
    nan_rows,
    nonfinite_rows,
    restore_channel_dim,
)
from .registry import register_quantizer
from .scalar import FSQ, fsq_levels
from .vector import VectorQuantizer, _in_backward

__all__ = [
    "ResidualVectorQuantizer",
    "GroupedResidualVectorQuantizer",
    "ResidualFSQ",
    "QuantizeDropout",
    "PARTIAL_SUMS",
    "DROPOUT_UNITS",
    "check_level_indices",
    "ResidualResult",
]

#: ``out.extras`` key of the per-level outputs (``forward(..., return_levels=True)``): shape
#: ``(n, *x.shape)``, entry ``l`` the output after levels ``0..l`` (``[n - 1]`` equals ``quantized``).
PARTIAL_SUMS = "partial_sums"

#: what one quantize-dropout draw covers: each sample (first leading axis) or the whole batch.
DROPOUT_UNITS = ("sample", "batch")

_INDEX_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8)


# ----------------------------------------------------------------------------------------------
# quantize dropout
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuantizeDropout:
    """How many levels a training call uses (bitrate scaling).

    With probability ``prob`` a sample (``per="sample"``) or the whole batch (``per="batch"``) uses
    ``n = min(m * ceil(u / m), L)`` levels, ``u`` uniform on ``{cutoff, ..., L}``, ``m = multiple_of``;
    otherwise all ``L``.
    """

    num_levels: int
    prob: float = 1.0
    cutoff: int = 1
    multiple_of: int = 1
    per: str = "sample"

    def __post_init__(self) -> None:
        check_int("QuantizeDropout.num_levels", self.num_levels, 1)
        check_float("QuantizeDropout.prob", self.prob, low=0.0, high=1.0)
        check_int("QuantizeDropout.cutoff", self.cutoff, 1, self.num_levels)
        check_int("QuantizeDropout.multiple_of", self.multiple_of, 1, self.num_levels)
        check_choice("QuantizeDropout.per", self.per, DROPOUT_UNITS)

    @classmethod
    def from_arguments(cls, num_levels: int, prob: float, cutoff: int | None, multiple_of: int | None,
                       per: str | None) -> QuantizeDropout | None:
        """The config of a quantizer's ``quantize_dropout*`` arguments (None when dropout is off); the
        errors name those arguments."""
        prob = check_float("quantize_dropout", prob, low=0.0, high=1.0)
        options = (("quantize_dropout_cutoff", cutoff), ("quantize_dropout_multiple_of", multiple_of),
                   ("quantize_dropout_per", per))
        if prob == 0.0:
            for name, value in options:
                if value is not None:
                    raise ValueError(f"{name}: only used with quantize_dropout > 0; got {name}={value!r} with "
                                     f"quantize dropout off")
            return None
        if num_levels < 2:
            raise ValueError(f"quantize_dropout: needs num_levels >= 2 (the first level is never dropped), got "
                             f"quantize_dropout={prob} with num_levels={num_levels}")
        cutoff = 1 if cutoff is None else check_int("quantize_dropout_cutoff", cutoff, 1, num_levels)
        multiple_of = 1 if multiple_of is None else check_int("quantize_dropout_multiple_of", multiple_of, 1, num_levels)
        per = "sample" if per is None else check_choice("quantize_dropout_per", per, DROPOUT_UNITS)
        return cls(num_levels, prob, cutoff, multiple_of, per)

    def draw(self, samples: int, device: torch.device) -> Tensor:
        """int64 ``(samples,)`` level counts in ``[1, L]`` from the global torch RNG (one value broadcast
        when ``per="batch"``); shape-static, no host sync."""
        count = samples if self.per == "sample" else 1
        n = torch.randint(self.cutoff, self.num_levels + 1, (count,), device=device)
        if self.multiple_of > 1:
            m = self.multiple_of
            n = (torch.div(n + (m - 1), m, rounding_mode="floor") * m).clamp_max(self.num_levels)
        if self.prob < 1.0:
            n = torch.where(torch.rand(count, device=device) < self.prob, n, self.num_levels)
        return n.expand(samples)


def _active_rows(n_per_sample: Tensor, lead: torch.Size, num_levels: int) -> Tensor:
    """``(B,)`` level counts -> ``(N, L)`` bool, row ``r`` (row-major over ``lead``, sample ``r // rest``)
    uses level ``l`` iff ``l < n``."""
    rest = math.prod(lead[1:])
    n = n_per_sample[:, None].expand(lead[0], rest).reshape(-1)
    return torch.arange(num_levels, device=n.device)[None, :] < n[:, None]


# ----------------------------------------------------------------------------------------------
# small shared helpers
# ----------------------------------------------------------------------------------------------


def _level_sizes(codebook_size: int | Sequence[int], num_levels: int) -> tuple[int, ...]:
    """One codebook size per level from an int or a sequence of ``num_levels`` ints."""
    if isinstance(codebook_size, int) and not isinstance(codebook_size, bool):
        return (check_int("codebook_size", codebook_size, 1),) * num_levels
    sizes = check_int_sequence("codebook_size", codebook_size, 1)
    if len(sizes) != num_levels:
        raise ValueError(f"codebook_size: expected an int or num_levels={num_levels} ints (one per level), got "
                         f"{len(sizes)}: {list(sizes)}")
    return sizes


def _zero_rows(t: Tensor, rows: Tensor | None) -> Tensor:
    return t if rows is None else torch.where(rows[:, None], t.new_zeros(()), t)


def _and(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    return b if a is None else (a if b is None else a & b)


def _active_levels_stat(active: Tensor | None, valid: Tensor | None, n: int, device: torch.device) -> Tensor:
    """Mean number of levels used per valid position (detached float32 scalar)."""
    if active is None:
        return torch.tensor(float(n), device=device)
    used = active.sum(1).float()
    if valid is None:
        return used.mean() if used.numel() else used.sum()
    w = valid.float()
    return (used * w).sum() / w.sum().clamp_min(1.0)


def _stack_padded(codes: Sequence[Tensor]) -> Tensor:
    """``[(K_l, D)]`` -> ``(L, max K_l, D)``, NaN where a level has fewer codes."""
    k = max(c.shape[0] for c in codes)
    return torch.stack([F.pad(c, (0, 0, 0, k - c.shape[0]), value=float("nan")) for c in codes])


def check_level_indices(indices: object, sizes: Sequence[int], groups: tuple[int, ...] = (),
                        name: str = "indices") -> Tensor:
    """Indices of the first ``n <= L = len(sizes)`` residual levels, ``(..., *groups, n)``, as int64.

    Values must be in ``[0, sizes[l])`` per level column; -1 (a level the forward did not quantize) is
    rejected with a message that says so. The value checks sync once (skipped under ``torch.compile``).
    """
    if not isinstance(indices, Tensor) or indices.dtype not in _INDEX_DTYPES:
        got = indices.dtype if isinstance(indices, Tensor) else type(indices).__name__
        raise TypeError(f"{name}: expected an integer (int64) tensor, got {got}")
    num_levels, k = len(sizes), len(groups) + 1
    if indices.ndim < k or tuple(indices.shape[-k:-1]) != groups or not 1 <= indices.shape[-1] <= num_levels:
        axes = f"trailing axes (groups={groups[0]}, n)" if groups else "a trailing axis of size n"
        raise ValueError(f"{name}: expected {axes} with 1 <= n <= num_levels={num_levels} (the first n levels), "
                         f"got shape {tuple(indices.shape)}")
    indices = indices.long()
    n = indices.shape[-1]
    if torch.compiler.is_compiling() or indices.numel() == 0:
        return indices
    used = sizes[:n]
    high = used[0] if len(set(used)) == 1 else torch.tensor(used, dtype=torch.int64, device=indices.device)
    if bool(((indices < 0) | (indices >= high)).any()):
        shown = high if isinstance(high, int) else list(used)
        if bool((indices == -1).any()):
            raise ValueError(
                f"{name}: expected values in [0, {shown}), got -1: a level that was not quantized (dropped by "
                f"quantize dropout in training, or a non-finite input); decode the first n levels a position "
                f"used, indices[..., :n], or use the forward's output")
        raise ValueError(f"{name}: expected values in [0, {shown}), got min {int(indices.min())} max "
                         f"{int(indices.max())}")
    return indices


class ResidualResult(NamedTuple):
    """A residual quantizer's result on flat rows, before the leading shape is restored.

    ``out (N, dim)`` output-space result (NaN rows for non-finite inputs); ``indices (N, n)`` (-1 for dropped
    levels and non-finite rows); ``loss`` scalar; ``stats``; ``partials (n, N, dim)`` or None.
    """

    out: Tensor
    indices: Tensor
    loss: Tensor
    stats: dict[str, Tensor]
    partials: Tensor | None


# ----------------------------------------------------------------------------------------------
# the shared base
# ----------------------------------------------------------------------------------------------


class _Residual(Quantizer):
    """What the residual quantizers share: the level count of a call, quantize dropout, the index
    layout and checks for the first ``n`` levels, and the output with its partial sums."""

    num_levels: int
    level_sizes: tuple[int, ...]
    dropout: QuantizeDropout | None
    #: group axes before the level axis of the indices (``(G,)`` for grouped residual)
    _group_axes: tuple[int, ...] = ()
    _shared_layout: bool = False

    @property
    def quantize_dropout(self) -> float:
        """Probability that a sample (or batch) is truncated in training (0 = off)."""
        return 0.0 if self.dropout is None else self.dropout.prob

    @property
    def index_layout(self) -> IndexLayout:
        groups = math.prod(self._group_axes)
        return IndexLayout((*self._group_axes, self.num_levels), self.level_sizes * groups, self._shared_layout)

    def check_decode_indices(self, indices: object) -> Tensor:
        """Indices of the first ``n <= num_levels`` levels, see :func:`check_level_indices`."""
        return check_level_indices(indices, self.level_sizes, self._group_axes)

    def _levels_for_call(self, num_levels: int | None, return_levels: bool) -> int:
        check_bool("return_levels", return_levels)
        if num_levels is None:
            return self.num_levels
        return check_int("num_levels", num_levels, 1, self.num_levels)

    def _dropout_ready(self) -> bool:
        """Whether dropout may truncate this call (VQ levels: after every level's k-means init)."""
        return True

    #: whether dropout could truncate the last training call (an activation-checkpoint recomputation of it,
    #: which runs after the levels' k-means init, must decide as that call did)
    _ready_at_call: bool = True

    def _active(self, lead: torch.Size, device: torch.device, num_levels: int | None) -> Tensor | None:
        """``(N, L)`` bool of the levels each row uses in this call, or None when every row uses all."""
        if self.dropout is None or not self.training or num_levels is not None:
            return None
        if torch.compiler.is_compiling():
            ready = self._dropout_ready()
        elif _in_backward():
            ready = self._ready_at_call
        else:
            ready = self._ready_at_call = self._dropout_ready()
        if not ready:
            return None
        return _active_rows(self.dropout.draw(lead[0], device), lead, self.num_levels)

    def _finish(self, x: Tensor, lead: torch.Size, res: ResidualResult) -> QuantizerOutput:
        quantized = restore_channel_dim(res.out.to(x.dtype).reshape(*lead, self.dim), self.channel_dim)
        indices = res.indices.reshape(*lead, *res.indices.shape[1:])
        extras = {}
        if res.partials is not None:
            # the partial sums have one more leading axis: a non-negative channel axis moves by one
            ch = self.channel_dim + 1 if self.channel_dim >= 0 else self.channel_dim
            partials = res.partials.to(x.dtype).reshape(res.partials.shape[0], *lead, self.dim)
            extras[PARTIAL_SUMS] = restore_channel_dim(partials, ch)
        return QuantizerOutput(quantized, indices, res.loss, res.stats, extras)


# ----------------------------------------------------------------------------------------------
# residual VQ
# ----------------------------------------------------------------------------------------------


@register_quantizer("residual_vq", example=dict(codebook_size=8, num_levels=2))
class ResidualVectorQuantizer(_Residual):
    """``num_levels`` vector quantizers applied in sequence, each to what the previous ones left unexplained.

    ``r_0 = z``, ``c_l = Q_l(r_l)``, ``r_{l+1} = r_l - sg(c_l)``; output ``sum_l c_l`` with one estimator
    on the total (so ``z`` gets the identity gradient once, and with ``sync_nu`` every level's selected code
    gets ``nu`` times the task gradient). Each level's loss pulls its residual and its code together.

    Args:
        dim: input channels.
        codebook_size: codes per level: an int, or one int per level (e.g. ``(1024, 512, 256)``).
        num_levels: L.
        shared_codebook: one codebook used at every level (its maintenance then runs once per level per
            call: every level's assignment counts for its dead-code timers); needs one ``codebook_size``.
        codebook_dim: shared projection dimension (projection in/out around all levels).
        sync_nu, estimator: as in :class:`~vqkit.VectorQuantizer`, applied to the sum (default ``sync_nu``
            1.0, 0.0 with an EMA codebook).
        quantize_dropout: probability in ``[0, 1]`` that a training sample (or batch) is truncated to its
            first ``n`` levels (0 = off; 1.0 = every sample, SoundStream / EnCodec; DAC uses 0.5).
        quantize_dropout_cutoff: smallest ``n`` drawn (default 1).
        quantize_dropout_multiple_of: round ``n`` up to a multiple of this, capped at L (default 1).
        quantize_dropout_per: ``"sample"`` (default; the first leading axis of the input is the sample) or
            ``"batch"`` (one ``n`` per call). The three ``quantize_dropout_*`` options need dropout on.
        channel_dim: channel axis.
        **kwargs: :class:`~vqkit.VectorQuantizer` arguments of each level (e.g. ``codebook="ema"``,
            ``kmeans_init``, ``dead_code_steps``, ``check_finite``; their own ``sync_nu`` is not used).

    Forward: ``forward(x, mask=None, *, lens=None, num_levels=None, return_levels=False)``; ``num_levels=n``
    uses the first ``n`` levels (all samples, no dropout), ``return_levels`` adds
    ``extras["partial_sums"]`` ``(n, *x.shape)``. The call that k-means-initializes the levels uses all of
    them (dropout starts at the next call, so every level is initialized from its residuals).

    Shapes: ``indices`` get a trailing axis of size L (``n`` with ``num_levels=n``), -1 where dropout
    dropped a level; ``loss`` is the sum of the level losses (each a mean over the rows that used the
    level); stats are averaged over levels, plus ``active_levels`` (mean levels used per position).
    """

    forwards_kwargs_to = VectorQuantizer

    def __init__(self, dim: int, codebook_size: int | Sequence[int], num_levels: int, *,
                 shared_codebook: bool = False, codebook_dim: int | None = None, sync_nu: float | None = None,
                 estimator: str = "ste", quantize_dropout: float = 0.0, quantize_dropout_cutoff: int | None = None,
                 quantize_dropout_multiple_of: int | None = None, quantize_dropout_per: str | None = None,
                 channel_dim: int = -1, **kwargs) -> None:
        super().__init__(dim, channel_dim)
        check_int("num_levels", num_levels, 1)
        sizes = _level_sizes(codebook_size, num_levels)
        check_bool("shared_codebook", shared_codebook)
        if shared_codebook and len(set(sizes)) > 1:
            raise ValueError(f"codebook_size: a shared codebook has one size, got per-level sizes {list(sizes)}")
        check_choice("estimator", estimator, ESTIMATORS)
        if codebook_dim is not None:
            check_int("codebook_dim", codebook_dim, 1)
        if kwargs.get("metric", "euclidean") != "euclidean":
            raise ValueError(f"metric: residual quantization needs metric='euclidean' (residuals are not unit "
                             f"vectors), got {kwargs['metric']!r}")
        spec = codebook_spec(kwargs.pop("codebook", "affine"))
        if sync_nu is None:
            sync_nu = 1.0 if spec.learns_by_gradient else 0.0
        check_float("sync_nu", sync_nu, low=0.0)
        if sync_nu > 0 and not spec.learns_by_gradient:
            raise ValueError(f"sync_nu: an {spec.kind!r} codebook takes no gradient; pass sync_nu=0.0 (got {sync_nu})")
        self.dropout = QuantizeDropout.from_arguments(num_levels, quantize_dropout, quantize_dropout_cutoff,
                                                      quantize_dropout_multiple_of, quantize_dropout_per)
        self.num_levels = num_levels
        self.level_sizes = sizes
        self.shared_codebook = shared_codebook
        self._shared_layout = shared_codebook
        self.codebook_dim = codebook_dim or dim
        self.codebook_size = sizes[0] if len(set(sizes)) == 1 else sizes
        self.sync_nu, self.estimator = float(sync_nu), estimator
        projects = self.codebook_dim != dim
        self.project_in = nn.Linear(dim, self.codebook_dim) if projects else nn.Identity()
        self.project_out = nn.Linear(self.codebook_dim, dim) if projects else nn.Identity()
        self.levels = nn.ModuleList(
            VectorQuantizer(self.codebook_dim, k, codebook=spec, sync_nu=0.0, **kwargs)
            for k in (sizes[:1] if shared_codebook else sizes))

    def extra_repr(self) -> str:
        sizes = self.codebook_size if isinstance(self.codebook_size, int) else list(self.codebook_size)
        drop = "" if self.dropout is None else (
            f", quantize_dropout={self.dropout.prob}, cutoff={self.dropout.cutoff}, "
            f"multiple_of={self.dropout.multiple_of}, per={self.dropout.per!r}")
        return (f"dim={self.dim}, codebook_size={sizes}, num_levels={self.num_levels}, "
                f"shared_codebook={self.shared_codebook}, codebook_dim={self.codebook_dim}{drop}")

    def _level(self, i: int) -> VectorQuantizer:
        return self.levels[0 if self.shared_codebook else i]

    @property
    def check_finite(self) -> bool:
        return self.levels[0].check_finite

    @property
    def latent_codebook(self) -> Tensor:
        """``(L or 1, K, codebook_dim)`` effective level codebooks, before the output projection (per-level
        sizes: ``K = max`` and NaN rows pad the smaller levels)."""
        with torch.no_grad():
            return _stack_padded([q.effective_codes() for q in self.levels])

    @property
    def codebook(self) -> Tensor:
        """``(L or 1, K, dim)`` level codes in the output space: the output for indices ``i_1..i_L`` is
        ``sum_l codebook[l, i_l]`` plus ``project_out.bias`` when there is a projection (which is linear
        in the sum of the levels, so each level's codes map through its weight alone)."""
        codes = self.latent_codebook
        if isinstance(self.project_out, nn.Identity):
            return codes
        with torch.no_grad():
            return codes.to(self.project_out.weight.dtype) @ self.project_out.weight.t()

    def _dropout_ready(self) -> bool:
        return not any(q.needs_initialization for q in self.levels)

    def forward(self, x: Tensor, mask: Tensor | None = None, *, lens: Tensor | None = None,
                num_levels: int | None = None, return_levels: bool = False,
                freeze_codebook: bool | None = None) -> QuantizerOutput:
        """Quantize ``x``; see the class docstring for the options and shapes (``freeze_codebook`` overrides
        the levels' setting for this call)."""
        n = self._levels_for_call(num_levels, return_levels)
        flat, valid, lead = flatten_input(self, x, mask, lens)
        active = self._active(lead, flat.device, num_levels)
        return self._finish(x, lead, self.quantize_flat(flat, valid, active, n, return_levels, freeze_codebook))

    def quantize_flat(self, flat: Tensor, valid: Tensor | None, active: Tensor | None, n: int,
                      return_levels: bool = False, freeze: bool | None = None) -> ResidualResult:
        """Quantize rows ``flat (N, dim)`` with the first ``n`` levels.

        Args:
            flat: channel-last rows (padding rows finite, e.g. zeroed by ``flatten_input``).
            valid: ``(N,)`` bool, False for padding, or None.
            active: ``(N, >= n)`` bool, False where a row skips a level (quantize dropout), or None.
            n: levels to apply.
            return_levels: also return the partial sums ``(n, N, dim)``.
        """
        z = apply_projection(self.project_in, flat)
        # the non-finite rule once for all levels (one host sync at most); residuals in >= fp32
        z, valid, bad = nonfinite_rows(self._level(0).check_finite, z, valid)
        residual, total = z.to(accumulation_dtype(z)), None
        indices, losses, stats, sums = [], [], [], []
        for i in range(n):
            use = None if active is None else active[:, i]
            res = self._level(i).quantize_vectors(residual, _and(valid, use), freeze=freeze, checked=True)
            codes = res.codes if use is None else _zero_rows(res.codes, ~use)
            residual = residual - codes.detach().to(residual.dtype)
            total = codes if total is None else total + codes
            indices.append(res.indices if use is None else torch.where(use, res.indices, -1))
            losses.append(res.loss)
            stats.append(res.stats)
            if return_levels and i < n - 1:
                sums.append(total)
        z = _zero_rows(z, bad)
        out = apply_projection(self.project_out, estimate(self.estimator, z, total, self.sync_nu))
        partials = None
        if return_levels:
            parts = [apply_projection(self.project_out, estimate(self.estimator, z, s, self.sync_nu)) for s in sums]
            partials = nan_rows(torch.stack([*parts, out]), bad)
        stacked = torch.stack(indices, dim=-1)
        if bad is not None:
            stacked = torch.where(bad[:, None], -1, stacked)
        level_stats = mean_stats(stats)
        level_stats["active_levels"] = _active_levels_stat(active[:, :n] if active is not None else None,
                                                           valid, n, flat.device)
        return ResidualResult(nan_rows(out, bad), stacked, torch.stack(losses).sum(), level_stats, partials)

    def decode_codes(self, indices: Tensor) -> Tensor:
        """``(..., n)`` indices of the first ``n`` levels -> ``(..., dim)`` channel-last."""
        total = None
        for i in range(indices.shape[-1]):
            codes = F.embedding(indices[..., i], self._level(i).effective_codes())
            total = codes if total is None else total + codes
        return apply_projection(self.project_out, total)


# ----------------------------------------------------------------------------------------------
# grouped residual VQ
# ----------------------------------------------------------------------------------------------


@register_quantizer("grouped_residual_vq", example=dict(codebook_size=8, groups=2, num_levels=2))
class GroupedResidualVectorQuantizer(_Residual):
    """Split the channels into ``groups`` equal parts, each quantized by its own L-level residual VQ
    (HiFi-Codec's group-residual VQ).

    Args:
        dim: input channels (divisible by ``groups``).
        codebook_size: codes per level (an int or one per level), the same in every group.
        groups: G.
        num_levels: L, in every group.
        quantize_dropout, quantize_dropout_cutoff, quantize_dropout_multiple_of, quantize_dropout_per: as
            in :class:`ResidualVectorQuantizer`; one draw per sample (or batch) shared by all groups.
        channel_dim: channel axis.
        **kwargs: :class:`ResidualVectorQuantizer` arguments of each group's quantizer (``dim / G``
            channels; e.g. ``shared_codebook``, ``codebook_dim`` per group, ``codebook="ema"``).

    Shapes: ``indices`` ``(..., G, L)`` (``(..., G, n)`` with ``num_levels=n``); ``loss`` is the mean of
    the group losses; stats are averaged over groups; ``extras["partial_sums"]`` ``(n, *x.shape)`` holds
    every group's partial sum after the same levels.
    """

    def __init__(self, dim: int, codebook_size: int | Sequence[int], groups: int, num_levels: int, *,
                 quantize_dropout: float = 0.0, quantize_dropout_cutoff: int | None = None,
                 quantize_dropout_multiple_of: int | None = None, quantize_dropout_per: str | None = None,
                 channel_dim: int = -1, **kwargs) -> None:
        super().__init__(dim, channel_dim)
        check_int("groups", groups, 1)
        if dim % groups != 0:
            raise ValueError(f"groups: expected a divisor of dim={dim}, got {groups}")
        check_int("num_levels", num_levels, 1)
        self.dropout = QuantizeDropout.from_arguments(num_levels, quantize_dropout, quantize_dropout_cutoff,
                                                      quantize_dropout_multiple_of, quantize_dropout_per)
        self.groups = groups
        self.num_levels = num_levels
        self._group_axes = (groups,)
        self.residuals = nn.ModuleList(
            ResidualVectorQuantizer(dim // groups, codebook_size, num_levels, **kwargs) for _ in range(groups))
        self.level_sizes = self.residuals[0].level_sizes
        self.codebook_size = self.residuals[0].codebook_size

    @classmethod
    def accepted_arguments(cls) -> list[str]:
        """Keyword arguments of this class, of :class:`ResidualVectorQuantizer` and of its levels."""
        names: set[str] = set()
        for fn in (cls.__init__, ResidualVectorQuantizer.__init__, VectorQuantizer.__init__):
            names.update(p.name for p in inspect.signature(fn).parameters.values()
                         if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))
        return sorted(names - {"self", "dim", "channel_dim"})

    @property
    def check_finite(self) -> bool:
        return self.residuals[0].check_finite

    @property
    def latent_codebook(self) -> Tensor:
        """``(G, L or 1, K, codebook_dim)`` per group, as :attr:`ResidualVectorQuantizer.latent_codebook`."""
        return torch.stack([r.latent_codebook for r in self.residuals])

    @property
    def codebook(self) -> Tensor:
        """``(G, L or 1, K, dim / G)``: group ``g``'s channels of the output are ``sum_l codebook[g, l, i_gl]``
        (plus the group's ``project_out.bias`` with projections)."""
        return torch.stack([r.codebook for r in self.residuals])

    def _dropout_ready(self) -> bool:
        return all(r._dropout_ready() for r in self.residuals)

    def forward(self, x: Tensor, mask: Tensor | None = None, *, lens: Tensor | None = None,
                num_levels: int | None = None, return_levels: bool = False,
                freeze_codebook: bool | None = None) -> QuantizerOutput:
        """Quantize ``x``; see the class docstring for shapes."""
        n = self._levels_for_call(num_levels, return_levels)
        flat, valid, lead = flatten_input(self, x, mask, lens)
        # a position with a non-finite entry in any group is padding in every group (NaN out, index -1)
        flat, valid, bad = nonfinite_rows(self.check_finite, flat, valid)
        active = self._active(lead, flat.device, num_levels)
        part = self.dim // self.groups
        parts = flat.reshape(-1, self.groups, part)
        outs = [r.quantize_flat(parts[:, g], valid, active, n, return_levels, freeze_codebook)
                for g, r in enumerate(self.residuals)]
        out = torch.cat([o.out for o in outs], dim=-1)
        indices = torch.stack([o.indices for o in outs], dim=1)  # (N, G, n)
        partials = torch.cat([o.partials for o in outs], dim=-1) if return_levels else None
        if bad is not None:
            out, indices = nan_rows(out, bad), torch.where(bad[:, None, None], -1, indices)
            partials = None if partials is None else nan_rows(partials, bad)
        loss = torch.stack([o.loss for o in outs]).mean()
        return self._finish(x, lead, ResidualResult(out, indices, loss, mean_stats([o.stats for o in outs]), partials))

    def decode_codes(self, indices: Tensor) -> Tensor:
        """``(..., G, n)`` -> ``(..., dim)`` channel-last."""
        return torch.cat([r.decode_codes(indices[..., g, :]) for g, r in enumerate(self.residuals)], dim=-1)


# ----------------------------------------------------------------------------------------------
# residual FSQ
# ----------------------------------------------------------------------------------------------

@register_quantizer("residual_fsq", example=dict(levels=[5, 4, 3], num_levels=3))
class ResidualFSQ(_Residual):
    """Residual finite scalar quantization: ``num_levels`` FSQ grids, each on the rescaled residual.

    Level 0 is :class:`~vqkit.FSQ`: ``c_0 = round(bound(z)) / (L // 2)``. Every later level quantizes what
    is left of the *bounded* latent ``b = bound(z) / (L // 2)`` on the same grid, scaled down::

        s_l = (levels - 1) ** -l                            # per dimension; s_0 = 1
        r_1 = b - c_0,   c_l = s_l * grid(r_l / s_l),   r_{l+1} = r_l - c_l,   output = sum_l c_l

    where ``grid(u) = clamp(round(u * (L // 2)), -(L // 2), L - 1 - L // 2) / (L // 2)`` is FSQ's rounding
    without the tanh (the residual is already bounded). A grid with ``L`` values has step ``2 / (L - 1)``
    (odd ``L``; ``2 / L`` for even ``L``), so a level leaves at most half a step, ``1 / (L - 1)``, times its
    scale; dividing by ``s_{l+1} = s_l / (L - 1)`` puts that residual back on the full ``[-1, 1]`` range of the
    next level, which would otherwise see values ``(L - 1)^l`` times too small to round to anything but 0.
    Hence ``|b - output| <= (L - 1) ** -n`` per dimension after ``n`` levels: each level divides the error
    bound by ``L - 1``. The scale schedule is that of vector-quantize-pytorch's ``ResidualFSQ``, which
    however passes each level's residual through the tanh bound again: its cells are then uneven, later
    levels saturate, and the distortion stops falling after two or three levels (measured in
    ``docs/residual.md``). Every dimension needs ``L >= 3``: a 2-value one gets scale 1 at every level.

    Gradient: FSQ's straight-through estimator on the rounding, once: ``d out / d z = bound'(z) / (L // 2)``,
    the derivative of the ``b`` the output approximates. The output value is exactly ``sum_l c_l``
    (= ``decode(indices)``); with one level this is FSQ.

    Args:
        levels: FSQ values per dimension, each >= 3 (the same at every residual level).
        num_levels: residual levels L.
        dim: input channels; projected in/out with ``nn.Linear`` when it differs from ``len(levels)``.
        quantize_dropout, quantize_dropout_cutoff, quantize_dropout_multiple_of, quantize_dropout_per: as in
            :class:`ResidualVectorQuantizer`.
        channel_dim: channel axis.
        check_finite: raise on NaN/Inf input naming ``x``; with False (and under ``torch.compile``)
            non-finite rows come back as NaN with index -1.

    Shapes: ``indices`` ``(..., L)`` (``n`` with ``num_levels=n``), each in ``[0, prod(levels))`` with FSQ's
    mixed-radix numbering; ``loss`` a zero float32 scalar. Stats (padding and dropped levels excluded):
    ``usage`` / ``perplexity`` averaged over levels, ``vq_mse`` (mean squared ``b - output`` per element),
    ``active_levels``. Computation runs in at least fp32 with autocast off.
    """

    def __init__(self, levels: Sequence[int], num_levels: int, *, dim: int | None = None,
                 quantize_dropout: float = 0.0, quantize_dropout_cutoff: int | None = None,
                 quantize_dropout_multiple_of: int | None = None, quantize_dropout_per: str | None = None,
                 channel_dim: int = -1, check_finite: bool = True) -> None:
        levels = check_int_sequence("levels", levels, 2)
        if min(levels) < 3:
            raise ValueError(f"levels: residual FSQ needs every level >= 3 (a 2-value dimension has scale "
                             f"(2 - 1)^-l = 1 at every residual level, so later levels cannot refine it), got "
                             f"{list(levels)}")
        codebook_dim = len(levels)
        super().__init__(codebook_dim if dim is None else dim, channel_dim)
        check_int("num_levels", num_levels, 1)
        self.check_finite = check_bool("check_finite", check_finite)
        self.dropout = QuantizeDropout.from_arguments(num_levels, quantize_dropout, quantize_dropout_cutoff,
                                                      quantize_dropout_multiple_of, quantize_dropout_per)
        self.levels = tuple(levels)
        self.num_levels = num_levels
        self.codebook_dim = codebook_dim
        self.fsq = FSQ(levels, check_finite=False)  # level 0, and the value table of every level's digits
        self.codebook_size = self.fsq.codebook_size
        self.level_sizes = (self.codebook_size,) * num_levels
        half = [v // 2 for v in levels]
        basis = [math.prod(levels[:i]) for i in range(len(levels))]
        self.register_buffer("_basis", torch.tensor(basis, dtype=torch.int64), persistent=False)
        self.register_buffer("_steps", torch.tensor([v - 1 for v in levels], dtype=torch.int64), persistent=False)
        self.register_buffer("_half_width", torch.tensor(half, dtype=torch.int64), persistent=False)
        self.register_buffer("_top", torch.tensor([v - 1 - h for v, h in zip(levels, half)]), persistent=False)
        self.has_projections = self.dim != codebook_dim
        self.project_in = nn.Linear(self.dim, codebook_dim) if self.has_projections else nn.Identity()
        self.project_out = nn.Linear(codebook_dim, self.dim) if self.has_projections else nn.Identity()

    @classmethod
    def from_dim(cls, dim: int, *, levels: Sequence[int] | None = None, codebook_size: int | None = None,
                 **kwargs) -> ResidualFSQ:
        """For ``dim`` input channels, with ``levels`` or a per-level ``codebook_size`` from
        :func:`~vqkit.fsq_levels`'s table (the nearest listed size)."""
        if (levels is None) == (codebook_size is None):
            raise ValueError("levels: give either levels (e.g. [8, 5, 5, 5]) or codebook_size, not both or neither")
        if levels is None:
            levels = fsq_levels(codebook_size, nearest=True)
        return cls(levels, dim=dim, **kwargs)

    def extra_repr(self) -> str:
        drop = "" if self.dropout is None else f", quantize_dropout={self.dropout.prob}"
        return f"levels={list(self.levels)}, num_levels={self.num_levels}, dim={self.dim}{drop}"

    def scales(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """``(L, len(levels))`` per-level, per-dimension scales ``(levels - 1) ** -l``."""
        base = self._steps.to(dtype)
        powers = torch.arange(self.num_levels, device=base.device, dtype=dtype)[:, None]
        return base[None, :].pow(-powers)

    def _grid(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """``u (N, d)`` -> nearest grid values ``k / (L // 2)`` (clamped to the grid) and digits ``k + L // 2``."""
        half = self._half_width.to(u.dtype)
        k = torch.minimum(torch.maximum((u * half).round(), -half), self._top.to(u.dtype))
        return k / half, k.long() + self._half_width

    def _compute_dtype(self, dtype: torch.dtype | None) -> torch.dtype:
        """The dtype the levels run in for an input of ``dtype`` (as the forward picks it)."""
        if self.has_projections:
            return accumulation_dtype(self.project_out.weight.dtype)
        return accumulation_dtype(dtype or torch.float32)

    def forward(self, x: Tensor, mask: Tensor | None = None, *, lens: Tensor | None = None,
                num_levels: int | None = None, return_levels: bool = False) -> QuantizerOutput:
        """Quantize ``x``; see the class docstring for the options and shapes."""
        n = self._levels_for_call(num_levels, return_levels)
        flat, valid, lead = flatten_input(self, x, mask, lens)
        z = apply_projection(self.project_in, flat)
        z, valid, bad = nonfinite_rows(self.check_finite, z, valid)
        active = self._active(lead, flat.device, num_levels)
        with torch.autocast(device_type=x.device.type, enabled=False):
            ct = accumulation_dtype(z.dtype)
            z = z.to(ct)
            bounded = self.fsq.bound(z) / self._half_width.to(ct)  # what the levels approximate (differentiable)
            scales = self.scales(ct)
            residual, total, sums, indices, level_stats = bounded.detach(), None, [], [], []
            for i in range(n):
                use = None if active is None else active[:, i]
                if i == 0:
                    codes, digits = self.fsq.quantize_latents(z.detach())
                    digits = digits[:, 0]
                else:
                    codes, digits = self._grid(residual / scales[i])
                codes = codes * scales[i]
                idx = (digits * self._basis).sum(-1)
                if use is not None:
                    codes, idx = _zero_rows(codes, ~use), torch.where(use, idx, -1)
                residual = residual - codes
                total = codes if total is None else total + codes
                sums.append(total)
                indices.append(idx)
                level_stats.append(index_stats(idx.clamp_min(0), (self.codebook_size,), mask=_and(valid, use)))
            outs = [apply_projection(self.project_out, straight_through(bounded, s))
                    for s in (sums if return_levels else sums[-1:])]
            stats = mean_stats(level_stats)
            with torch.no_grad():
                err = residual.square().mean(-1)
                stats["vq_mse"] = err.mean() if valid is None else (err * valid).sum() / valid.sum().clamp_min(1)
            stats["active_levels"] = _active_levels_stat(None if active is None else active[:, :n], valid, n,
                                                         flat.device)
        stacked = torch.stack(indices, dim=-1)
        if bad is not None:
            stacked = torch.where(bad[:, None], -1, stacked)
        partials = nan_rows(torch.stack(outs), bad) if return_levels else None
        loss = torch.zeros((), dtype=torch.float32, device=x.device)
        return self._finish(x, lead, ResidualResult(nan_rows(outs[-1], bad), stacked, loss, stats, partials))

    def decode(self, indices: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """``indices`` of the first ``n`` levels -> exactly the eval-mode ``quantized`` for them (computed in
        the dtype the forward used for an input of ``dtype``)."""
        out = self._decode(self.check_decode_indices(indices), dtype)
        if dtype is not None:
            out = out.to(dtype)
        return restore_channel_dim(out, self.channel_dim)

    def decode_codes(self, indices: Tensor) -> Tensor:
        """``(..., n)`` indices -> ``(..., dim)`` channel-last (fp32, or the projection's dtype)."""
        return self._decode(indices, None)

    def _decode(self, indices: Tensor, dtype: torch.dtype | None) -> Tensor:
        ct = self._compute_dtype(dtype)
        scales = self.scales(ct)
        total = None
        for i in range(indices.shape[-1]):
            codes = self.fsq.latent_codes(indices[..., i], ct) * scales[i]
            total = codes if total is None else total + codes
        return apply_projection(self.project_out, total)

    @property
    def latent_codebook(self) -> Tensor:
        """``(L, K, len(levels))``: level ``l``'s codes, ``s_l`` times the FSQ grid (needs ``K <= 2^20``)."""
        return self.fsq.latent_codebook[None] * self.scales()[:, None, :]

    @property
    def codebook(self) -> Tensor:
        """``(L, K, dim)`` level codes in the output space: the output for indices ``i_1..i_L`` is
        ``sum_l codebook[l, i_l]`` plus ``project_out.bias`` with projections."""
        codes = self.latent_codebook
        if not self.has_projections:
            return codes
        with torch.no_grad():
            return codes.to(self.project_out.weight.dtype) @ self.project_out.weight.t()
