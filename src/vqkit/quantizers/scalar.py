"""Scalar quantizers: :class:`FSQ` (Mentzer et al. 2023) and :class:`LatentQuantizer` (Hsu et al. 2023).

Both quantize each latent dimension on its own, so the codebook is *implicit*: the Cartesian product of
per-dimension value sets. A code's index is the mixed-radix number of its per-dimension digits (first
dimension least significant), computed in int64 and therefore exact for any product below 2^63.

* :class:`FSQ`: fixed levels, ``q = round_ste(bound(z)) / (L // 2)`` with a tanh bound; no auxiliary loss.
* :class:`LatentQuantizer`: one *learned* scalar codebook per dimension, nearest value per dimension,
  quantization + commitment losses; meant to be trained with strong weight decay
  (:func:`latent_quantization_param_groups`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ..estimators import straight_through
from ..losses import vq_loss
from ..metrics import MAX_HISTOGRAM_CODES, code_counts, index_stats, perplexity, usage
from ..dtypes import accumulation_dtype
from ..validation import check_bool, check_choice, check_float, check_int, check_int_sequence
from .base import (
    IndexLayout,
    QuantizerOutput,
    Quantizer,
    apply_projection,
    flatten_input,
    nonfinite_rows,
    restore_channel_dim,
)
from .registry import register_quantizer

__all__ = [
    "FSQ",
    "LatentQuantizer",
    "fsq_levels",
    "latent_quantization_param_groups",
    "FSQ_RECOMMENDED_LEVELS",
    "MAX_HISTOGRAM_CODES",
]


#: FSQ levels per target codebook size. The sizes 2^8, 2^10, 2^12, 2^14 and 2^16 are the recommendations of
#: Mentzer et al. 2023 (every L_i >= 5 where possible, products approximate the target); the others follow
#: the same rule.
FSQ_RECOMMENDED_LEVELS: dict[int, tuple[int, ...]] = {
    2**8: (8, 6, 5),
    2**9: (8, 8, 8),
    2**10: (8, 5, 5, 5),
    2**11: (8, 8, 6, 5),
    2**12: (7, 5, 5, 5, 5),
    2**13: (8, 8, 6, 5, 5),
    2**14: (8, 8, 8, 6, 5),
    2**15: (8, 8, 8, 8, 6),
    2**16: (8, 8, 8, 5, 5, 5),
    2**17: (8, 8, 8, 8, 5, 5),
    2**18: (8, 8, 8, 8, 8, 8),
}

_INT64_MAX = 2**63 - 1


def fsq_levels(codebook_size: int, nearest: bool = False) -> list[int]:
    """FSQ levels for a target codebook size from :data:`FSQ_RECOMMENDED_LEVELS` (2^8 ... 2^18).

    ``nearest=True`` takes the listed size closest to ``codebook_size`` on a log scale (the product of the
    levels approximates the target, e.g. 2^8 -> [8, 6, 5], 240 codes).
    """
    if isinstance(codebook_size, bool) or not isinstance(codebook_size, int) or codebook_size < 2:
        raise ValueError(f"codebook_size: expected an int >= 2, got {codebook_size!r}")
    if nearest:
        codebook_size = min(FSQ_RECOMMENDED_LEVELS, key=lambda k: abs(math.log(k / codebook_size)))
    if codebook_size not in FSQ_RECOMMENDED_LEVELS:
        listed = ", ".join(f"2^{int(math.log2(k))}" for k in FSQ_RECOMMENDED_LEVELS)
        raise ValueError(f"codebook_size: expected one of {listed} (or nearest=True), got {codebook_size!r}")
    return list(FSQ_RECOMMENDED_LEVELS[codebook_size])


# ----------------------------------------------------------------------------------------------
# shared helpers
# ----------------------------------------------------------------------------------------------


def _check_radices(name: str, values: Sequence[int]) -> tuple[int, ...]:
    """Non-empty sequence of ints >= 2."""
    return check_int_sequence(name, values, 2)


def _mixed_radix_basis(radices: Sequence[int]) -> list[int]:
    """``basis[i] = prod(radices[:i])`` (first digit least significant), exact Python ints."""
    basis, acc = [], 1
    for r in radices:
        basis.append(acc)
        acc *= r
    return basis


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """At least fp32 (fp16/bf16 inputs are bounded, rounded and searched in fp32)."""
    return accumulation_dtype(dtype)


def _flat_mask(mask: Tensor | None, like: Tensor) -> Tensor | None:
    """Broadcast a ``(...)`` mask to ``like`` ``(..., G)`` if needed."""
    if mask is None:
        return None
    return mask.unsqueeze(-1).expand_as(like) if mask.ndim < like.ndim else mask


def _grouped_perplexity(counts: Tensor, gather: Tensor, pad: Tensor) -> Tensor:
    """Mean over dimensions of the per-dimension perplexity; ``counts`` flat ``(sum V,)``."""
    return perplexity(counts[gather].masked_fill(pad, 0.0)).mean()  # (D, Vmax) table


def _ragged_tables(radices: Sequence[int]) -> tuple[Tensor, Tensor, Tensor]:
    """For per-dimension value sets stored flat: ``offsets (D,)``, ``gather (D, Vmax)``, ``pad (D, Vmax)``.

    ``gather[d, j] = offsets[d] + j`` for ``j < radices[d]`` (padding points at ``offsets[d]``).
    """
    r = torch.tensor(radices, dtype=torch.int64)
    offsets = torch.cumsum(r, 0) - r
    j = torch.arange(int(r.max()), dtype=torch.int64)
    pad = j[None, :] >= r[:, None]
    gather = torch.where(pad, offsets[:, None], offsets[:, None] + j[None, :])
    return offsets, gather, pad


# ----------------------------------------------------------------------------------------------
# FSQ
# ----------------------------------------------------------------------------------------------


@register_quantizer("fsq", example=dict(levels=[5, 4, 3]))
class FSQ(Quantizer):
    """Finite scalar quantization (Mentzer et al. 2023).

    Per dimension i with ``L = levels[i]``::

        half_l = (L - 1) * (1 - 1e-3) / 2,  offset = 0.5 if L is even else 0,  shift = atanh(offset / half_l)
        bound(z) = tanh(z + shift) * half_l - offset          # in (-(L-1)/2 - offset, (L-1)/2 - offset)
        q = round_ste(bound(z)) / (L // 2)                   # L values in [-1, 1]

    ``shift = atanh(offset / half_l)`` makes ``bound(0) = 0`` (up to rounding), so a zero latent lands
    in the middle of level 0 (the paper's listing writes ``tan``, which does not invert
    ``tanh``, it only approximates ``atanh`` for small arguments, e.g. bound(0) = -4.3e-4 for L = 4 and
    -0.043 for L = 2). For L = 2, whose bound range (-0.9995, -0.0005) excludes 0 (``atanh`` of
    ``offset / half_l > 1``), the shift puts bound(0) at -0.25, the middle of level 0's reachable
    cell. Even L give asymmetric levels ``k / (L // 2)``, ``k in [-L // 2, L // 2 - 1]``.

    Codes are the product of the per-dimension levels, ``K = prod(levels)``; the index is mixed-radix
    over the digits ``round(bound(z)) + L // 2`` (first dimension least significant), computed in int64
    (exact for any K < 2^63).

    Gradient: straight-through on the rounding only, so ``d q / d z = bound'(z) / (L // 2)`` with
    ``bound'(z) = half_l * (1 - tanh(z + shift)^2)``.

    Args:
        levels: number of levels per dimension, each >= 2 (see :func:`fsq_levels`).
        dim: input channels; if it differs from ``len(levels) * num_codebooks`` the input is projected in
            and the codes projected back out with ``nn.Linear`` layers. Default: no projection.
        num_codebooks: independent FSQ groups along the channels (each of ``len(levels)`` dims); indices
            gain a trailing axis of size ``num_codebooks`` when it is > 1.
        channel_dim: axis of the channels (``1`` for ``B x C x H x W``).
        check_finite: raise on NaN/Inf input, naming ``x`` (one host sync per call). With False (and always
            under ``torch.compile``) non-finite rows come back as NaN outputs with index -1.

    Shapes: ``x`` ``(..., dim)`` (channels on ``channel_dim``) -> ``quantized`` same shape and dtype;
    ``indices`` int64 ``x.shape`` minus the channel axis (``+ (num_codebooks,)`` when > 1); ``loss`` a zero
    float32 scalar on ``x.device``. ``stats``: ``level_usage`` (fraction of the ``sum(levels)`` per-dim
    levels used) always; ``usage`` / ``perplexity`` over the K codes (all groups pooled) when
    ``K <= MAX_HISTOGRAM_CODES`` (2^20): a larger histogram would cost more than the batch and could
    not be filled by one batch anyway. Bounding and rounding run in fp32 (autocast disabled) for
    fp16/bf16 inputs.
    """

    _trailing_name = "num_codebooks"

    def __init__(
        self,
        levels: Sequence[int],
        *,
        dim: int | None = None,
        num_codebooks: int = 1,
        channel_dim: int = -1,
        check_finite: bool = True,
    ) -> None:
        levels = _check_radices("levels", levels)
        check_int("num_codebooks", num_codebooks, 1)
        codebook_dim = len(levels) * num_codebooks
        super().__init__(codebook_dim if dim is None else dim, channel_dim)
        self.levels = levels
        self.num_codebooks = num_codebooks
        self.check_finite = check_bool("check_finite", check_finite)
        self.codebook_dim = codebook_dim
        self.codebook_size = math.prod(levels)
        if self.codebook_size > _INT64_MAX:
            raise ValueError(f"levels: product {self.codebook_size} exceeds int64 indices (2^63 - 1)")

        # only integer buffers: the bounding constants are derived from them in the compute dtype, so
        # ``module.half()`` / ``.to(torch.bfloat16)`` cannot degrade them; none are in the state dict.
        self.register_buffer("_half_width", torch.tensor([L // 2 for L in levels], dtype=torch.int64), persistent=False)
        self.register_buffer("_levels", torch.tensor(levels, dtype=torch.int64), persistent=False)
        self.register_buffer("_basis", torch.tensor(_mixed_radix_basis(levels), dtype=torch.int64), persistent=False)
        level_offsets = torch.cumsum(torch.tensor((0, *levels[:-1]), dtype=torch.int64), 0)  # O(len(levels))
        self.register_buffer("_level_offsets", level_offsets, persistent=False)

        self.has_projections = self.dim != codebook_dim
        self.project_in = nn.Linear(self.dim, codebook_dim) if self.has_projections else nn.Identity()
        self.project_out = nn.Linear(codebook_dim, self.dim) if self.has_projections else nn.Identity()

    @classmethod
    def from_dim(cls, dim: int, *, levels: Sequence[int] | None = None, codebook_size: int | None = None,
                 **kwargs) -> FSQ:
        """For ``dim`` input channels (projected when ``dim != len(levels) * num_codebooks``), with ``levels``
        or a ``codebook_size`` from :func:`fsq_levels`'s table (the nearest listed size)."""
        if (levels is None) == (codebook_size is None):
            raise ValueError("levels: give either levels (e.g. [8, 5, 5, 5]) or codebook_size, not both or neither")
        if levels is None:
            levels = fsq_levels(codebook_size, nearest=True)
        return cls(levels, dim=dim, **kwargs)

    def extra_repr(self) -> str:
        return (f"levels={list(self.levels)}, dim={self.dim}, num_codebooks={self.num_codebooks}, "
                f"codebook_size={self.codebook_size}, channel_dim={self.channel_dim}")

    # ------------------------------------------------------------------------------------------

    def _constants(self, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        """``half_l``, ``offset``, ``shift`` per dimension, ``(len(levels),)`` in ``dtype``.

        ``shift`` puts bound(0) at 0, the centre of level 0; L = 2 cannot reach 0 (its range is
        (-0.9995, -0.0005)), so there bound(0) = -0.25, the middle of level 0's reachable cell.
        """
        levels = self._levels.to(dtype)
        half_l = (levels - 1) * (1 - 1e-3) / 2
        even = (self._levels % 2 == 0).to(dtype)
        offset = 0.5 * even
        centre = -0.25 * (self._levels == 2).to(dtype)
        return half_l, offset, torch.atanh((centre + offset) / half_l)

    def bound(self, z: Tensor) -> Tensor:
        """``(..., len(levels))`` latents -> ``bound(z)`` per dimension (differentiable), in >= fp32."""
        half_l, offset, shift = self._constants(_compute_dtype(z.dtype))
        return torch.tanh(z.to(half_l.dtype) + shift) * half_l - offset

    def quantize_latents(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Quantize projected latents.

        Args:
            z: ``(..., codebook_dim)`` latents (after ``project_in``).
        Returns:
            codes ``(..., codebook_dim)`` in [-1, 1] (>= fp32, STE gradient ``bound'(z) / (L // 2)``),
            digits int64 ``(..., num_codebooks, len(levels))`` in ``[0, L)``.
        """
        z = z.unflatten(-1, (self.num_codebooks, len(self.levels)))
        b = self.bound(z)
        rounded = b.detach().round()
        digits = rounded.long() + self._half_width
        half_width = self._half_width.to(b.dtype)
        codes = straight_through(b, rounded) / half_width
        return codes.flatten(-2), digits

    def forward(self, x: Tensor, mask: Tensor | None = None, *, lens: Tensor | None = None) -> QuantizerOutput:
        """Quantize ``x``; ``mask`` / ``lens`` (padding, as in :class:`~vqkit.VectorQuantizer`) only affect
        ``stats`` (FSQ has no loss), and padded positions may hold anything."""
        flat, valid, lead = flatten_input(self, x, mask, lens)
        z = apply_projection(self.project_in, flat)
        z, valid, bad = nonfinite_rows(self.check_finite, z, valid)
        with torch.autocast(device_type=x.device.type, enabled=False):
            codes, digits = self.quantize_latents(z)
            indices = (digits * self._basis).sum(-1)  # (N, G), int64, exact
        out = apply_projection(self.project_out, codes).to(x.dtype)
        stats = self._stats(digits, indices, valid)
        if bad is not None:
            out = torch.where(bad[:, None], torch.full_like(out, float("nan")), out)
            indices = torch.where(bad[:, None], -1, indices)
        out = restore_channel_dim(out.reshape(*lead, self.dim), self.channel_dim)
        indices = indices.reshape(*lead, *self.index_layout.trailing)
        loss = torch.zeros((), dtype=torch.float32, device=x.device)
        return QuantizerOutput(out, indices, loss, stats)

    @torch.no_grad()
    def _stats(self, digits: Tensor, indices: Tensor, mask: Tensor | None) -> dict[str, Tensor]:
        # the groups share one implicit codebook: usage / perplexity pooled over them
        stats = index_stats(indices, (self.codebook_size,) * self.num_codebooks, shared=True, mask=mask)
        if sum(self.levels) > MAX_HISTOGRAM_CODES:
            return stats
        level_bins = digits + self._level_offsets  # (..., G, n) into sum(levels) bins
        level_mask = None if mask is None else mask[..., None, None].expand_as(level_bins)
        stats["level_usage"] = usage(code_counts(level_bins, sum(self.levels), level_mask))
        return stats

    # ------------------------------------------------------------------------------------------

    @property
    def index_layout(self) -> IndexLayout:
        g = self.num_codebooks
        # the groups index one implicit codebook (as the stats pool them)
        return IndexLayout((g,) if g > 1 else (), (self.codebook_size,) * g, shared=True)

    def latent_codes(self, indices: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """Validated int64 indices -> codes before ``project_out``, ``(..., codebook_dim)`` in [-1, 1],
        channel-last, in at least fp32."""
        if self.num_codebooks == 1:
            indices = indices.unsqueeze(-1)
        digits = torch.div(indices.unsqueeze(-1), self._basis, rounding_mode="floor") % self._levels
        ct = _compute_dtype(dtype)
        codes = (digits - self._half_width).to(ct) / self._half_width.to(ct)
        return codes.flatten(-2)

    def decode_codes(self, indices: Tensor) -> Tensor:
        """Indices -> ``(..., dim)`` channel-last (the projection's dtype with projections, else fp32)."""
        return apply_projection(self.project_out, self.latent_codes(indices))

    @property
    def latent_codebook(self) -> Tensor:
        """All ``K`` codes of one group before projection, ``(K, len(levels))`` in [-1, 1]."""
        self._check_materializable()
        k = torch.arange(self.codebook_size, device=self._basis.device)
        return self.latent_codes(k)

    @property
    def codebook(self) -> Tensor:
        """Codes in the output space, detached: ``(K, dim)`` (after ``project_out``) for one group; for
        several groups without projections each group's ``(K, len(levels))`` slice of the output, the same
        for every group (with projections the output mixes the groups: use :attr:`latent_codebook`)."""
        with torch.no_grad():
            codes = self.latent_codebook
            if self.num_codebooks == 1:
                return apply_projection(self.project_out, codes).detach()
            if self.has_projections:
                raise ValueError("codebook: with num_codebooks > 1 and projections a group's code is not a vector of "
                                 "the output space; use latent_codebook (K, len(levels)) or decode()")
            return codes

    def _check_materializable(self) -> None:
        if self.codebook_size > MAX_HISTOGRAM_CODES:
            raise ValueError(
                f"codebook: {self.codebook_size} implicit codes (levels={list(self.levels)}) is more than "
                f"MAX_HISTOGRAM_CODES={MAX_HISTOGRAM_CODES}; use decode() on the indices you need"
            )


# ----------------------------------------------------------------------------------------------
# LatentQuantizer (QLAE)
# ----------------------------------------------------------------------------------------------

INDEX_MODES = ("joint", "per_dim")


@register_quantizer("latent", example=dict(values_per_dim=4))
class LatentQuantizer(Quantizer):
    """Latent quantization (Hsu et al. 2023, QLAE): a learned scalar codebook per latent dimension.

    Dimension ``d`` has ``V_d`` learnable values ``v_d`` (init evenly spaced over ``init_range``); each
    ``z_d`` snaps to its nearest value (fp32 distances; learned values need not stay sorted)::

        q_d = v_d[argmin_j |z_d - v_d[j]|]
        loss = quantization_weight * mean((sg(z) - q)^2) + commitment_weight * mean((z - sg(q))^2)
        out  = z + sg(q - z)          (value exactly q; task gradient straight through to z)

    The values learn from the quantization term only:
    ``dloss/dv_d[j] = quantization_weight * 2 / (N * D) * sum_{n: q_nd = v_d[j]} (v_d[j] - z_nd)``.
    The method relies on strong weight decay on the encoder/decoder weights (AdamW, 0.1) and none on the
    values: build the optimizer with :func:`latent_quantization_param_groups`.

    Values of all dimensions live in one flat parameter ``values`` of length ``sum(V_d)`` (dimension
    ``d`` at ``offsets[d] : offsets[d] + V_d``), so per-dimension sizes may differ. The search compares
    each ``z_d`` with all ``V_d`` values at once (an ``(N, D, max V_d)`` temporary, +inf padded).

    Args:
        dim: number of latent dimensions D.
        values_per_dim: V (int, same for all dims) or a list of D ints, each >= 2.
        quantization_weight, commitment_weight: loss weights (0.01 each, the paper's recipe).
        init_range: ``(low, high)`` of the initial evenly spaced values. Default ``(-1, 1)``; the paper
            uses ``(-0.5, 0.5)`` with 10 values.
        index_mode: ``"joint"``: one mixed-radix int64 index over ``prod(V_d)`` codes (requires the product
            < 2^63); ``"per_dim"``: indices ``(..., D)``, the chosen value's position in each dimension.
        channel_dim: axis of the channels.
        check_finite: raise on NaN/Inf input, naming ``x`` (one host sync per call). With False (and always
            under ``torch.compile``) non-finite rows count as padding and come back as NaN with index -1.

    Shapes: ``x`` ``(..., D)`` -> ``quantized`` same shape and dtype, ``indices`` int64 ``x.shape`` minus
    the channel axis (``+ (D,)`` for ``"per_dim"``), ``loss`` float32 scalar. ``mask`` (bool, True = real
    position) removes padded positions from the loss and the stats. ``stats``: ``value_usage`` (fraction
    of the ``sum(V_d)`` values used) and ``value_perplexity`` (mean per-dimension perplexity) always;
    joint ``usage`` / ``perplexity`` when ``index_mode="joint"`` and ``prod(V_d) <= 2^20``.
    """

    _trailing_name = "dim"

    def __init__(
        self,
        dim: int,
        values_per_dim: int | Sequence[int],
        *,
        quantization_weight: float = 0.01,
        commitment_weight: float = 0.01,
        init_range: tuple[float, float] = (-1.0, 1.0),
        index_mode: str = "joint",
        channel_dim: int = -1,
        check_finite: bool = True,
    ) -> None:
        super().__init__(dim, channel_dim)
        if isinstance(values_per_dim, int) and not isinstance(values_per_dim, bool):
            check_int("values_per_dim", values_per_dim, minimum=2)
            radices = (values_per_dim,) * dim
        else:
            radices = _check_radices("values_per_dim", values_per_dim)
            if len(radices) != dim:
                raise ValueError(f"values_per_dim: expected an int or {dim} ints (one per dim), got {len(radices)}")
        for name, w in (("quantization_weight", quantization_weight), ("commitment_weight", commitment_weight)):
            check_float(name, w, low=0.0)
        if not isinstance(init_range, (tuple, list)) or len(init_range) != 2:
            raise ValueError(f"init_range: expected (low, high) with low < high, got {init_range!r}")
        lo, hi = (check_float(f"init_range[{i}]", v) for i, v in enumerate(init_range))
        if not lo < hi:
            raise ValueError(f"init_range: expected (low, high) with low < high, got {init_range!r}")
        check_choice("index_mode", index_mode, INDEX_MODES)
        self.codebook_size = math.prod(radices)
        if index_mode == "joint" and self.codebook_size > _INT64_MAX:
            raise ValueError(
                f"values_per_dim: {self.codebook_size} joint codes do not fit an int64 index; "
                f"pass index_mode='per_dim' for (..., {dim}) per-dimension indices"
            )
        self.radices = radices
        self.quantization_weight = float(quantization_weight)
        self.commitment_weight = float(commitment_weight)
        self.init_range = (float(init_range[0]), float(init_range[1]))
        self.index_mode = index_mode
        self.check_finite = check_bool("check_finite", check_finite)

        lo, hi = self.init_range
        self.values = nn.Parameter(torch.cat([torch.linspace(lo, hi, v) for v in radices]))
        offsets, gather, pad = _ragged_tables(radices)
        self.register_buffer("_offsets", offsets, persistent=False)
        self.register_buffer("_gather", gather, persistent=False)
        self.register_buffer("_pad", pad, persistent=False)
        self.register_buffer("_radices", torch.tensor(radices, dtype=torch.int64), persistent=False)
        basis = _mixed_radix_basis(radices) if index_mode == "joint" else [0] * dim
        self.register_buffer("_basis", torch.tensor(basis, dtype=torch.int64), persistent=False)

    def extra_repr(self) -> str:
        vpd = self.radices[0] if len(set(self.radices)) == 1 else list(self.radices)
        return (f"dim={self.dim}, values_per_dim={vpd}, quantization_weight={self.quantization_weight}, "
                f"commitment_weight={self.commitment_weight}, index_mode={self.index_mode!r}")

    @property
    def value_table(self) -> Tensor:
        """Per-dimension values ``(D, max V_d)``, NaN-padded, detached."""
        return self.values.detach()[self._gather].masked_fill(self._pad, float("nan"))

    def nearest(self, z: Tensor) -> Tensor:
        """Position of the nearest value per dimension: ``(..., D)`` -> int64 ``(..., D)`` in ``[0, V_d)``."""
        ct = _compute_dtype(z.dtype)
        table = self.values.detach().to(ct)[self._gather].masked_fill(self._pad, float("inf"))  # (D, Vmax)
        dist = (z.detach().to(ct).unsqueeze(-1) - table).abs()  # (..., D, Vmax); padding -> inf
        return dist.argmin(-1)

    def forward(self, x: Tensor, mask: Tensor | None = None, *, lens: Tensor | None = None) -> QuantizerOutput:
        """Quantize ``x``; see the class docstring for shapes."""
        flat, valid, lead = flatten_input(self, x, mask, lens)
        z, valid, bad = nonfinite_rows(self.check_finite, flat, valid)
        with torch.autocast(device_type=x.device.type, enabled=False):
            ct = _compute_dtype(z.dtype)
            z = z.to(ct)
            local = self.nearest(z)  # (N, D)
            flat_pos = local + self._offsets  # (N, D) into ``values``
            q = self.values.to(ct)[flat_pos]  # differentiable w.r.t. the values
            weight = None if valid is None else valid.to(ct)
            loss = vq_loss(z, q, self.commitment_weight, self.quantization_weight, weight).total
            out = straight_through(z, q)
        indices = local if self.index_mode == "per_dim" else (local * self._basis).sum(-1)
        stats = self._stats(flat_pos, indices, valid)
        if bad is not None:
            out = torch.where(bad[:, None], torch.full_like(out, float("nan")), out)
            indices = torch.where(bad[:, None] if self.index_mode == "per_dim" else bad, -1, indices)
        out = restore_channel_dim(out.to(x.dtype).reshape(*lead, self.dim), self.channel_dim)
        return QuantizerOutput(out, indices.reshape(*lead, *self.index_layout.trailing), loss.float(), stats)

    @torch.no_grad()
    def _stats(self, flat_pos: Tensor, indices: Tensor, mask: Tensor | None) -> dict[str, Tensor]:
        counts = code_counts(flat_pos, self.values.numel(), _flat_mask(mask, flat_pos))
        stats = {"value_usage": usage(counts), "value_perplexity": _grouped_perplexity(counts, self._gather, self._pad)}
        return {**index_stats(indices, self.index_layout.sizes, mask=mask), **stats}

    @property
    def index_layout(self) -> IndexLayout:
        if self.index_mode == "joint":
            return IndexLayout((), (self.codebook_size,))
        return IndexLayout((self.dim,), tuple(self.radices))

    def decode_codes(self, indices: Tensor) -> Tensor:
        """Joint ``(...)`` or per-dimension ``(..., D)`` indices -> ``(..., D)`` in the values' dtype."""
        if self.index_mode == "joint":
            local = torch.div(indices.unsqueeze(-1), self._basis, rounding_mode="floor") % self._radices
        else:
            local = indices
        ct = _compute_dtype(self.values.dtype)
        return self.values.to(ct)[local + self._offsets].to(self.values.dtype)

    @property
    def codebook(self) -> Tensor:
        """All joint codes ``(prod V_d, D)``, detached (needs ``prod V_d <= 2^20``); see :attr:`value_table`."""
        if self.codebook_size > MAX_HISTOGRAM_CODES:
            raise ValueError(
                f"codebook: {self.codebook_size} joint codes is more than MAX_HISTOGRAM_CODES="
                f"{MAX_HISTOGRAM_CODES}; use value_table (D, max V_d) instead"
            )
        k = torch.arange(self.codebook_size, device=self.values.device)
        local = torch.div(k.unsqueeze(-1), torch.tensor(_mixed_radix_basis(self.radices), device=k.device),
                          rounding_mode="floor") % self._radices
        return self.values.detach()[local + self._offsets]


# ----------------------------------------------------------------------------------------------
# optimizer recipe
# ----------------------------------------------------------------------------------------------

_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


def latent_quantization_param_groups(
    model: nn.Module,
    weight_decay: float = 0.1,
    *,
    no_decay: Callable[[str, nn.Parameter], bool] | None = None,
) -> list[dict]:
    """AdamW parameter groups for the QLAE recipe (Hsu et al. 2023).

    Weight decay ``weight_decay`` on every weight; none on biases, normalization parameters and the
    :class:`LatentQuantizer` values (decaying them would pull every code to 0). The paper trains with
    ``torch.optim.AdamW(groups, lr=1e-3)``, weight decay 0.1 and gradient clipping at norm 1.0; the
    strong decay on the encoder/decoder is what keeps latents compact and disentangled.

    Args:
        model: the model (parameters shared between modules are listed once).
        weight_decay: decay of the weight group.
        no_decay: optional extra predicate ``(qualified_name, param) -> bool`` for parameters to exempt.
    Returns:
        ``[{"params": decayed, "weight_decay": weight_decay}, {"params": exempt, "weight_decay": 0.0}]``
        (empty groups dropped); only parameters with ``requires_grad``.
    """
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or weight_decay < 0:
        raise ValueError(f"weight_decay: expected a float >= 0, got {weight_decay!r}")
    decay: list[nn.Parameter] = []
    exempt: list[nn.Parameter] = []
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            qualified = f"{module_name}.{name}" if module_name else name
            skip = (
                isinstance(module, (LatentQuantizer, *_NORM_TYPES))
                or name == "bias"
                or (no_decay is not None and no_decay(qualified, p))
            )
            (exempt if skip else decay).append(p)
    groups = [{"params": decay, "weight_decay": float(weight_decay)}, {"params": exempt, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]
