"""Lookup-free quantizers: :class:`LFQ` (Yu et al. 2023, MAGVIT-v2) and :class:`BSQ` (Zhao et al. 2024).

Both quantize each of ``d`` latent dimensions to its sign, so the codebook is implicit: the ``K = 2^d``
corners ``{-s, +s}^d`` of a cube, and a code's index is its bits, ``index = sum_i [z_i > 0] 2^i`` (first
dimension least significant, int64, exact for ``d <= 62``). No distance to a code table is ever computed.

* :class:`LFQ`: the corners of ``[-s, s]^d`` (``s = codebook_scale``).
* :class:`BSQ`: the latent is first l2-normalized to the unit sphere, ``u = z / ||z||``, and the codes are the
  corners scaled onto that sphere, ``s = 1 / sqrt(d)``.

The **entropy regularizer** (MAGVIT-v2; BSQ's entropy terms are the same) acts on the soft code
distribution ``p(c | z) = softmax_c(-||z - c||^2 / temperature)`` over all ``K`` codes::

    loss = entropy_weight * (per_sample_entropy - diversity * batch_entropy) + commitment_weight * commitment
    per_sample_entropy = mean_n H(p(. | z_n))         (low: each latent close to one code)
    batch_entropy      = H(mean_n p(. | z_n))         (high: the batch uses many codes)
    commitment         = mean((z - sg(q))^2)

Because every code is a product of per-dimension choices, ``p(c | z)`` factorizes over the bits:
``p(c | z) = prod_i sigmoid(c_i / s * a_i)`` with the per-bit logit ``a_i = 4 s z_i / temperature``
(``(z_i + s)^2 - (z_i - s)^2 = 4 s z_i``). So ``per_sample_entropy = mean_n sum_i H_b(sigmoid(a_ni))`` is
exact in ``O(N d)``. The batch-mean distribution does not factorize; it is computed either

* ``"exact"``: enumerating the ``2^d`` codes in chunks (:func:`batch_entropy_exact`; memory bounded by
  :data:`EXACT_CHUNK_ELEMENTS`, time ``O(N 2^d)``), or
* ``"factorized"``: the sum over bits of the entropies of the batch-mean bit marginals
  (:func:`batch_entropy_factorized`, ``O(N d)``), what large-``d`` implementations use (BSQ's "per
  dimension" approximation). By subadditivity of entropy it is an upper bound of the exact value, equal to
  it when the bits are independent over the batch.

``batch_entropy="auto"`` (the default of :class:`LFQ`) is exact for ``d <= AUTO_EXACT_MAX_BITS`` (12, at
most 4096 codes) and factorized above; :class:`BSQ` defaults to ``"factorized"`` as in its paper.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..dtypes import accumulation_dtype
from ..estimators import straight_through
from ..losses import vq_loss
from ..metrics import MAX_HISTOGRAM_CODES, index_stats
from ..validation import check_bool, check_choice, check_float, check_int
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
    "LFQ",
    "BSQ",
    "BATCH_ENTROPY_MODES",
    "AUTO_EXACT_MAX_BITS",
    "EXACT_MAX_BITS",
    "EXACT_CHUNK_ELEMENTS",
    "EXACT_CODE_BITS",
    "MAX_BITS",
    "binary_entropy",
    "per_sample_entropy",
    "batch_entropy_exact",
    "batch_entropy_factorized",
    "batch_entropy",
]

#: how the entropy of the batch-mean code distribution is computed
BATCH_ENTROPY_MODES = ("auto", "exact", "factorized")
#: ``"auto"`` is exact up to this many bits per code (4096 codes), factorized above
AUTO_EXACT_MAX_BITS = 12
#: ``"exact"`` enumerates the codes; above this many bits it is refused (2^24 codes already take
#: ``N * 2^24`` work per step)
EXACT_MAX_BITS = 24
#: the exact batch entropy works on ``(groups, rows, codes)`` blocks of at most this many elements
EXACT_CHUNK_ELEMENTS = 2**22
#: codes per block of the exact batch entropy: ``2^EXACT_CODE_BITS`` (fewer when ``d`` is smaller)
EXACT_CODE_BITS = 12
#: the most bits per code: indices ``sum_i bit_i 2^i`` stay below 2^63
MAX_BITS = 62


# ----------------------------------------------------------------------------------------------
# entropy terms of the soft code distribution (per-bit logits a = 4 s z / temperature)
# ----------------------------------------------------------------------------------------------


def binary_entropy(a: Tensor) -> Tensor:
    """``H(sigmoid(a))`` in nats, elementwise, from the logit ``a``.

    Computed as ``sigmoid(a) softplus(-a) + sigmoid(-a) softplus(a)`` (non-negative terms: no cancellation,
    exactly 0 in the saturated limits, finite gradients everywhere).
    """
    return torch.sigmoid(a) * F.softplus(-a) + torch.sigmoid(-a) * F.softplus(a)


def _row_weights(weight: Tensor | None, n: int, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(N,)`` 0/1 row weights -> ``log w (N,)`` (0 or -inf), ``log W`` and a 0/1 scale.

    With every row masked out, all rows are used (they hold finite values: padding is zeroed) and the scale
    is 0, so the result is 0 with zero gradients instead of ``0 * log 0``.
    """
    if weight is None:
        return like.new_zeros(n), like.new_tensor(math.log(max(n, 1))), like.new_ones(())
    weight = weight.to(like.dtype)
    total = weight.sum()
    any_valid = total > 0
    logw = torch.where((weight > 0) | ~any_valid, 0.0, float("-inf")).to(like.dtype)
    log_total = torch.log(torch.where(any_valid, total, float(max(n, 1))))
    return logw, log_total, any_valid.to(like.dtype)


def per_sample_entropy(a: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean entropy of the soft code distributions ``p(. | z_n)``, exact (it factorizes over the bits).

    Args:
        a: ``(N, G, d)`` per-bit logits ``log p(+s) / p(-s) = 4 s z / temperature`` (G groups of d bits).
        weight: optional ``(N,)`` 0/1 row weights (0 = padding).
    Returns:
        scalar: ``mean over valid rows and groups of sum_i H_b(sigmoid(a_ngi))`` (nats; 0 for no valid rows).
    """
    h = binary_entropy(a).sum(-1)  # (N, G)
    if weight is None:
        return h.sum() / max(h.numel(), 1)
    w = weight.to(h.dtype)
    return (h * w[:, None]).sum() / (w.sum() * h.shape[1]).clamp_min(1.0)


def batch_entropy_factorized(a: Tensor, weight: Tensor | None = None) -> Tensor:
    """Per group, the sum over bits of the entropy of the batch-mean bit marginal ``mean_n sigmoid(a_ni)``.

    That is the entropy of the product of the batch-mean distribution's bit marginals: an upper bound of the
    exact :func:`batch_entropy_exact` (subadditivity), equal when the bits are independent over the batch.
    The marginals are formed in the log domain, so saturated bits give exact zeros, not ``0 * log 0``.

    Args:
        a: ``(N, G, d)`` per-bit logits; weight: optional ``(N,)`` 0/1 row weights.
    Returns:
        ``(G,)`` entropies in nats (0 without valid rows).
    """
    n, g, _ = a.shape
    if n == 0:
        return a.new_zeros(g)
    logw, log_total, scale = _row_weights(weight, n, a)
    lw = logw[:, None, None]
    log_p = torch.logsumexp(F.logsigmoid(a) + lw, dim=0) - log_total  # (G, d): log mean_n p(bit = 1)
    log_q = torch.logsumexp(F.logsigmoid(-a) + lw, dim=0) - log_total
    h = -(log_p.exp() * log_p + log_q.exp() * log_q).sum(-1)
    return h * scale


def _low_code_sums(a_low: Tensor) -> Tensor:
    """``(..., b)`` -> ``(..., 2^b)``: entry ``k`` is ``sum_i bit_i(k) a_i`` (bit 0 least significant), built
    by doubling with elementwise adds (no matmul, so no reduced-precision (TF32) path)."""
    s = a_low.new_zeros(*a_low.shape[:-1], 1)
    for i in range(a_low.shape[-1]):
        s = torch.cat([s, s + a_low[..., i:i + 1]], dim=-1)
    return s


def _low_bit_sums(m: Tensor, bits: int) -> Tensor:
    """``(..., 2^b)`` -> ``(..., b)``: entry ``i`` is ``sum_k bit_i(k) m_k`` (the adjoint of
    :func:`_low_code_sums`), by folding halves: O(2^b) adds."""
    out = []
    for _ in range(bits):
        half = m.shape[-1] // 2
        lo, hi = m[..., :half], m[..., half:]
        out.append(hi.sum(-1))  # the top half of the codes has the current highest bit set
        m = lo + hi
    return torch.stack(out[::-1], dim=-1)


def _high_bits(j: int, count: int, like: Tensor) -> Tensor:
    """The ``count`` bits of the code-block number ``j`` as a float tensor (bit 0 first)."""
    return like.new_tensor([float((j >> t) & 1) for t in range(count)])


def _exact_blocks(g: int, n: int, d: int) -> tuple[int, int, int]:
    """``(low bits per code block, code blocks, rows per block)`` for the exact batch entropy."""
    b = min(d, EXACT_CODE_BITS)
    rows = max(1, EXACT_CHUNK_ELEMENTS // (g << b))
    return b, 1 << (d - b), rows


class _ExactBatchEntropy(torch.autograd.Function):
    """``H(mean_n p(. | z_n))`` per group by enumerating the codes, ``(G, rows, 2^b)`` blocks at a time.

    With ``l_nc = log p(c | z_n) = sum_i logsigmoid(-a_ni) + sum_i c_i a_ni`` (``c_i`` the bits of ``c``):
    ``log P(c) = logsumexp_n(l_nc + log w_n) - log W`` (accumulated over row blocks with ``logaddexp``) and
    ``H = -sum_c P(c) log P(c)``. Backward recomputes each block:
    ``dH/da_ni = sum_c (-log P(c)) (w_n / W) p(c | z_n) (c_i - sigmoid(a_ni))`` (the ``-1`` of
    ``d(-P log P)/dP`` drops out: ``sum_c p(c | z_n) (c_i - sigmoid(a_ni)) = 0``). Saved: ``a`` and
    ``log P`` (``G x 2^d``); nothing ``N x 2^d``.
    """

    @staticmethod
    def forward(a: Tensor, logw: Tensor, log_total: Tensor) -> tuple[Tensor, Tensor]:
        g, n, d = a.shape
        b, blocks, rows = _exact_blocks(g, n, d)
        base = F.logsigmoid(-a).sum(-1)  # (G, N): log p of the all-minus code
        acc: list[Tensor | None] = [None] * blocks
        for r0 in range(0, n, rows):
            ar = a[:, r0:r0 + rows]
            low = _low_code_sums(ar[..., :b]) + (base[:, r0:r0 + rows] + logw[r0:r0 + rows])[..., None]
            for j in range(blocks):
                high = (ar[..., b:] * _high_bits(j, d - b, a)).sum(-1, keepdim=True)
                lse = torch.logsumexp(low + high, dim=1)  # (G, 2^b)
                acc[j] = lse if acc[j] is None else torch.logaddexp(acc[j], lse)
        log_p = torch.cat(acc, dim=-1) - log_total  # (G, 2^d)
        return -(log_p.exp() * log_p).sum(-1), log_p

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        a, logw, log_total = inputs
        ctx.save_for_backward(a, logw, log_total, output[1])
        ctx.mark_non_differentiable(output[1])

    @staticmethod
    def backward(ctx, grad_h: Tensor, grad_log_p: Tensor | None):
        a, logw, log_total, log_p = ctx.saved_tensors
        g, n, d = a.shape
        b, blocks, rows = _exact_blocks(g, n, d)
        coef = (-log_p * grad_h[:, None]).unflatten(-1, (blocks, 1 << b))  # (G, blocks, 2^b)
        base = F.logsigmoid(-a).sum(-1)
        sig = torch.sigmoid(a)
        parts = []
        for r0 in range(0, n, rows):
            ar = a[:, r0:r0 + rows]
            low = _low_code_sums(ar[..., :b]) + (base[:, r0:r0 + rows] + logw[r0:r0 + rows] - log_total)[..., None]
            low_grad = ar.new_zeros(*ar.shape[:-1], b)
            high_grad = ar.new_zeros(*ar.shape[:-1], d - b)
            total = ar.new_zeros(*ar.shape[:-1], 1)
            for j in range(blocks):
                hb = _high_bits(j, d - b, a)
                m = (low + (ar[..., b:] * hb).sum(-1, keepdim=True)).exp() * coef[:, None, j]  # (G, R, 2^b)
                m_sum = m.sum(-1, keepdim=True)
                low_grad = low_grad + _low_bit_sums(m, b)
                high_grad = high_grad + m_sum * hb
                total = total + m_sum
            parts.append(torch.cat([low_grad, high_grad], dim=-1) - sig[:, r0:r0 + rows] * total)
        return torch.cat(parts, dim=1), None, None


def batch_entropy_exact(a: Tensor, weight: Tensor | None = None) -> Tensor:
    """Per group, the exact entropy of the batch-mean soft code distribution ``mean_n p(. | z_n)``.

    Enumerates the ``2^d`` codes in ``(G, rows, codes)`` blocks of at most :data:`EXACT_CHUNK_ELEMENTS`
    elements, in the log domain, with a hand-written backward that recomputes the blocks: memory
    ``O(N d + G 2^d + EXACT_CHUNK_ELEMENTS)``, time ``O(N G 2^d)`` forward and backward.

    Args:
        a: ``(N, G, d)`` per-bit logits (``d <= EXACT_MAX_BITS``); weight: optional ``(N,)`` 0/1 row weights.
    Returns:
        ``(G,)`` entropies in nats (0 without valid rows).
    """
    n, g, d = a.shape
    if d > EXACT_MAX_BITS:
        raise ValueError(f"batch_entropy: 'exact' enumerates 2^d codes and allows d <= {EXACT_MAX_BITS}, got "
                         f"d={d}; use 'factorized'")
    if n == 0:
        return a.new_zeros(g)
    logw, log_total, scale = _row_weights(weight, n, a)
    h, _ = _ExactBatchEntropy.apply(a.movedim(1, 0), logw, log_total)
    return h * scale


def batch_entropy(a: Tensor, weight: Tensor | None = None, mode: str = "exact") -> Tensor:
    """:func:`batch_entropy_exact` (``mode="exact"``) or :func:`batch_entropy_factorized` (``"factorized"``)."""
    check_choice("mode", mode, ("exact", "factorized"))
    return (batch_entropy_exact if mode == "exact" else batch_entropy_factorized)(a, weight)


# ----------------------------------------------------------------------------------------------
# the quantizers
# ----------------------------------------------------------------------------------------------


class _SignQuantizer(Quantizer):
    """Shared machinery of :class:`LFQ` and :class:`BSQ` (sign quantization of ``G`` groups of ``d`` bits)."""

    _trailing_name = "num_codebooks"

    def __init__(
        self,
        dim: int,
        codebook_dim: int | None,
        codebook_size: int | None,
        *,
        num_codebooks: int,
        entropy_weight: float,
        diversity: float | None,
        temperature: float,
        commitment_weight: float,
        batch_entropy: str,
        channel_dim: int,
        check_finite: bool,
    ) -> None:
        super().__init__(dim, channel_dim)
        self.num_codebooks = check_int("num_codebooks", num_codebooks, 1)
        self.codebook_dim = _resolve_bits(dim, codebook_dim, codebook_size, num_codebooks)
        self.codebook_size = 1 << self.codebook_dim
        self.entropy_weight = check_float("entropy_weight", entropy_weight, low=0.0)
        if diversity is not None and self.entropy_weight == 0:
            raise ValueError(f"diversity: only used with entropy_weight > 0; got diversity={diversity!r} with "
                             f"entropy_weight=0 (the entropies are still reported in stats)")
        self.diversity = 1.0 if diversity is None else check_float("diversity", diversity, low=0.0)
        self.temperature = check_float("temperature", temperature, low=0.0, low_open=True)
        self.commitment_weight = check_float("commitment_weight", commitment_weight, low=0.0)
        check_choice("batch_entropy", batch_entropy, BATCH_ENTROPY_MODES)
        if batch_entropy == "exact" and self.codebook_dim > EXACT_MAX_BITS:
            raise ValueError(f"batch_entropy: 'exact' enumerates the 2^d codes and allows d <= {EXACT_MAX_BITS}, "
                             f"got codebook_dim={self.codebook_dim}; use 'factorized' or 'auto'")
        self.batch_entropy = batch_entropy
        #: the mode actually used ("auto" resolved by :data:`AUTO_EXACT_MAX_BITS`)
        self.batch_entropy_mode = ("exact" if self.codebook_dim <= AUTO_EXACT_MAX_BITS else "factorized") \
            if batch_entropy == "auto" else batch_entropy
        self.check_finite = check_bool("check_finite", check_finite)
        self.register_buffer("_powers", torch.tensor([1 << i for i in range(self.codebook_dim)], dtype=torch.int64),
                             persistent=False)
        latent = self.num_codebooks * self.codebook_dim
        self.has_projections = self.dim != latent
        self.project_in = nn.Linear(self.dim, latent) if self.has_projections else nn.Identity()
        self.project_out = nn.Linear(latent, self.dim) if self.has_projections else nn.Identity()

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, codebook_dim={self.codebook_dim}, num_codebooks={self.num_codebooks}, "
                f"entropy_weight={self.entropy_weight}, diversity={self.diversity}, temperature={self.temperature}, "
                f"commitment_weight={self.commitment_weight}, batch_entropy={self.batch_entropy_mode!r}")

    # -- what LFQ and BSQ define -----------------------------------------------------------------

    @property
    def code_scale(self) -> float:  # pragma: no cover - abstract
        """``s``: codes are ``{-s, +s}^d``."""
        raise NotImplementedError

    def prepare(self, z: Tensor) -> Tensor:
        """``(N, G, d)`` projected latents -> the latents that are quantized (identity; BSQ normalizes)."""
        return z

    # -- the quantization step -------------------------------------------------------------------

    def codes_from_bits(self, bits: Tensor, dtype: torch.dtype) -> Tensor:
        """Bool bits ``(..., d)`` -> codes ``(..., d)`` in ``{-s, +s}`` (``dtype``)."""
        s = torch.tensor(self.code_scale, dtype=dtype, device=bits.device)
        return torch.where(bits, s, -s)

    def bit_logits(self, z: Tensor) -> Tensor:
        """Per-bit logits ``log p(+s | z_i) / p(-s | z_i) = 4 s z_i / temperature`` of the soft code
        distribution ``softmax_c(-||z - c||^2 / temperature)``; ``z`` are the quantized latents."""
        return z * (4.0 * self.code_scale / self.temperature)

    def entropy_terms(self, z: Tensor, weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(per_sample_entropy, batch_entropy)`` of latents ``z (N, G, d)`` (groups averaged), in nats."""
        a = self.bit_logits(z)
        return per_sample_entropy(a, weight), batch_entropy(a, weight, self.batch_entropy_mode).mean()

    def forward(self, x: Tensor, mask: Tensor | None = None, *, lens: Tensor | None = None) -> QuantizerOutput:
        """Quantize ``x``; see the class docstring for shapes."""
        flat, valid, lead = flatten_input(self, x, mask, lens)
        z = apply_projection(self.project_in, flat)
        z, valid, bad = nonfinite_rows(self.check_finite, z, valid)
        with torch.autocast(device_type=x.device.type, enabled=False):
            ct = accumulation_dtype(z.dtype)
            z = self.prepare(z.to(ct).unflatten(-1, (self.num_codebooks, self.codebook_dim)))  # (N, G, d)
            bits = z.detach() > 0
            q = self.codes_from_bits(bits, ct)
            indices = (bits.long() * self._powers).sum(-1)  # (N, G), exact int64
            out = straight_through(z, q)
            weight = None if valid is None else valid.to(ct)
            with torch.set_grad_enabled(torch.is_grad_enabled() and self.entropy_weight > 0):
                sample_h, batch_h = self.entropy_terms(z, weight)
            entropy_loss = self.entropy_weight * (sample_h - self.diversity * batch_h)
            commit, mse, _ = vq_loss(z.flatten(1), q.flatten(1), self.commitment_weight, 0.0, weight)
            loss = (entropy_loss + commit).float()
        out = apply_projection(self.project_out, out.flatten(1)).to(x.dtype)
        stats = index_stats(indices, self.index_layout.sizes, shared=True, mask=valid)
        stats.update(
            per_sample_entropy=sample_h.detach().float(),
            batch_entropy=batch_h.detach().float(),
            entropy_loss=entropy_loss.detach().float(),
            commitment_loss=(mse * self.commitment_weight).float(),
        )
        if bad is not None:
            out = torch.where(bad[:, None], torch.full_like(out, float("nan")), out)
            indices = torch.where(bad[:, None], -1, indices)
        out = restore_channel_dim(out.reshape(*lead, self.dim), self.channel_dim)
        indices = indices.reshape(*lead, *self.index_layout.trailing)
        return QuantizerOutput(out, indices, loss, stats)

    # -- indices and codes -----------------------------------------------------------------------

    @property
    def index_layout(self) -> IndexLayout:
        g = self.num_codebooks
        return IndexLayout((g,) if g > 1 else (), (self.codebook_size,) * g, shared=True)

    def latent_codes(self, indices: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """Validated int64 indices ``(...)`` (``(..., G)`` with groups) -> codes before ``project_out``,
        ``(..., G * d)`` channel-last, in ``accumulation_dtype(dtype)`` (what the forward computes in)."""
        if self.num_codebooks == 1:
            indices = indices.unsqueeze(-1)
        bits = torch.bitwise_and(indices.unsqueeze(-1), self._powers) != 0  # (..., G, d)
        return self.codes_from_bits(bits, accumulation_dtype(dtype)).flatten(-2)

    def decode_codes(self, indices: Tensor) -> Tensor:
        """Indices -> ``(..., dim)`` channel-last (fp32 codes, or the projection's dtype)."""
        return apply_projection(self.project_out, self.latent_codes(indices))

    def decode(self, indices: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """``indices`` -> exactly the eval-mode ``quantized`` of an input of dtype ``dtype`` (default fp32):
        the codes are formed in the dtype the forward computes in, then projected and cast."""
        codes = self.latent_codes(self.check_decode_indices(indices), dtype or torch.float32)
        out = apply_projection(self.project_out, codes)
        if dtype is not None:
            out = out.to(dtype)
        return restore_channel_dim(out, self.channel_dim) if out.ndim >= 2 else out

    @property
    def latent_codebook(self) -> Tensor:
        """All ``2^d`` codes of one group before ``project_out``, ``(2^d, d)`` (needs ``2^d <= 2^20``)."""
        if self.codebook_size > MAX_HISTOGRAM_CODES:
            raise ValueError(f"codebook: 2^{self.codebook_dim} implicit codes is more than MAX_HISTOGRAM_CODES="
                             f"{MAX_HISTOGRAM_CODES}; use decode() on the indices you need")
        k = torch.arange(self.codebook_size, device=self._powers.device)
        bits = torch.bitwise_and(k.unsqueeze(-1), self._powers) != 0
        return self.codes_from_bits(bits, torch.float32)

    @property
    def codebook(self) -> Tensor:
        """Codes in the output space, detached: ``(2^d, dim)`` after ``project_out`` for one group; with
        several groups and no projections, the ``(2^d, d)`` codes every group shares (with projections the
        output mixes the groups: use :attr:`latent_codebook` or :meth:`decode`)."""
        with torch.no_grad():
            codes = self.latent_codebook
            if self.num_codebooks == 1:
                return apply_projection(self.project_out, codes).detach()
            if self.has_projections:
                raise ValueError("codebook: with num_codebooks > 1 and projections a group's code is not a vector of "
                                 "the output space; use latent_codebook (2^d, d) or decode()")
            return codes


def _resolve_bits(dim: int, codebook_dim: int | None, codebook_size: int | None, num_codebooks: int) -> int:
    """Bits per code ``d`` from ``codebook_dim`` or ``codebook_size = 2^d``, else ``dim / num_codebooks``."""
    if codebook_dim is not None and codebook_size is not None:
        raise ValueError(f"codebook_size: give codebook_dim (bits) or codebook_size (2^bits), not both; got "
                         f"codebook_dim={codebook_dim!r}, codebook_size={codebook_size!r}")
    if codebook_size is not None:
        check_int("codebook_size", codebook_size, 2)
        if codebook_size & (codebook_size - 1):
            raise ValueError(f"codebook_size: expected a power of two (the codes are the 2^d sign patterns), got "
                             f"{codebook_size} (nearest: {1 << round(math.log2(codebook_size))})")
        codebook_dim = codebook_size.bit_length() - 1
        if codebook_dim > MAX_BITS:
            raise ValueError(f"codebook_size: expected at most 2^{MAX_BITS} (int64 indices), got 2^{codebook_dim}")
        return codebook_dim
    if codebook_dim is not None:
        return check_int("codebook_dim", codebook_dim, 1, MAX_BITS)
    if dim % num_codebooks:
        raise ValueError(f"num_codebooks: dim={dim} is not divisible by num_codebooks={num_codebooks}; give "
                         f"codebook_dim (bits per group) to project to num_codebooks * codebook_dim")
    bits = dim // num_codebooks
    if bits > MAX_BITS:
        raise ValueError(f"codebook_dim: dim / num_codebooks = {bits} bits per code is more than {MAX_BITS} (int64 "
                         f"indices); give codebook_dim to project, or more num_codebooks")
    return bits


@register_quantizer("lfq", example=dict(codebook_dim=4))
class LFQ(_SignQuantizer):
    """Lookup-free quantization (Yu et al. 2023, MAGVIT-v2): each latent dimension quantized to its sign.

    Per group of ``d = codebook_dim`` latents ``z`` (after ``project_in``)::

        q_i   = +s if z_i > 0 else -s                   (s = codebook_scale; z_i = 0 -> -s)
        index = sum_i [z_i > 0] 2^i                      (int64, K = 2^d codes)
        out   = z + sg(q - z)                            (value exactly q; straight-through gradient)
        loss  = entropy_weight * (per_sample_entropy - diversity * batch_entropy)
                + commitment_weight * mean((z - sg(q))^2)

    The entropies are those of the soft code distribution ``softmax_c(-||z - c||^2 / temperature)`` (see the
    module docstring): the per-sample term is exact per bit; the batch term is exact (chunked over the codes)
    or the per-bit factorized upper bound, per ``batch_entropy``. Defaults follow MAGVIT-v2 / Open-MAGVIT2:
    ``temperature=0.01``, ``entropy_weight=0.1``, ``diversity=1``, ``commitment_weight=0.25``.

    Args:
        dim: input channels; projected (``nn.Linear``) to ``num_codebooks * codebook_dim`` and back when they
            differ.
        codebook_dim: bits per code ``d`` (1..62); or give ``codebook_size = 2^d``; default
            ``dim // num_codebooks`` (no projections).
        codebook_size: ``2^d`` (a power of two), instead of ``codebook_dim``.
        num_codebooks: independent groups of ``d`` bits along the channels sharing the implicit codebook;
            indices gain a trailing axis of that size when > 1. Entropies are averaged over groups.
        codebook_scale: ``s``, the code magnitude (> 0).
        entropy_weight: weight of the entropy regularizer (0 disables it and its gradient; still reported).
        diversity: weight of the batch entropy relative to the per-sample entropy (>= 0; default 1; only with
            ``entropy_weight > 0``).
        temperature: of the soft code distribution (> 0; smaller = sharper).
        commitment_weight: weight of ``mean((z - sg(q))^2)`` (>= 0).
        batch_entropy: ``"auto"`` (exact for ``d <= 12``, factorized above), ``"exact"`` (``d <= 24``) or
            ``"factorized"``.
        channel_dim: axis of the channels (``1`` for ``B x C x H x W``).
        check_finite: raise on NaN/Inf input, naming ``x`` (one host sync per call). With False (and always
            under ``torch.compile``) non-finite rows count as padding and come back as NaN with index -1.

    Shapes: ``x`` ``(..., dim)`` (channels on ``channel_dim``) -> ``quantized`` same shape and dtype;
    ``indices`` int64 ``x.shape`` minus the channel axis (``+ (num_codebooks,)`` when > 1); ``loss`` float32
    scalar. ``mask`` / ``lens`` (True = real position) remove padded positions from every term and statistic.
    ``stats``: ``usage`` / ``perplexity`` (groups pooled; codebooks above 2^20 counted by sorting),
    ``per_sample_entropy`` and ``batch_entropy`` (nats, unweighted), ``entropy_loss`` and ``commitment_loss``
    (weighted terms of ``loss``). Quantization and entropies run in at least fp32 with autocast off.
    """

    def __init__(
        self,
        dim: int,
        codebook_dim: int | None = None,
        *,
        codebook_size: int | None = None,
        num_codebooks: int = 1,
        codebook_scale: float = 1.0,
        entropy_weight: float = 0.1,
        diversity: float | None = None,
        temperature: float = 0.01,
        commitment_weight: float = 0.25,
        batch_entropy: str = "auto",
        channel_dim: int = -1,
        check_finite: bool = True,
    ) -> None:
        scale = check_float("codebook_scale", codebook_scale, low=0.0, low_open=True)
        super().__init__(dim, codebook_dim, codebook_size, num_codebooks=num_codebooks,
                         entropy_weight=entropy_weight, diversity=diversity, temperature=temperature,
                         commitment_weight=commitment_weight, batch_entropy=batch_entropy,
                         channel_dim=channel_dim, check_finite=check_finite)
        self._scale = scale

    @property
    def code_scale(self) -> float:
        return self._scale

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, codebook_scale={self._scale}"


@register_quantizer("bsq", example=dict(codebook_dim=4))
class BSQ(_SignQuantizer):
    """Binary spherical quantization (Zhao et al. 2024): l2-normalize, then quantize to the signs on the sphere.

    Per group of ``d = codebook_dim`` latents ``z`` (after ``project_in``)::

        u     = z / ||z||                                (the unit sphere; the group's 2-norm)
        q_i   = sign(u_i) / sqrt(d)                      (||q|| = 1; u_i = 0 -> -1 / sqrt(d))
        index = sum_i [u_i > 0] 2^i                      (int64, K = 2^d codes)
        out   = u + sg(q - u)                            (value exactly q; gradient through the normalization)
        loss  = entropy_weight * (per_sample_entropy - diversity * batch_entropy)
                + commitment_weight * mean((u - sg(q))^2)

    The entropies are those of ``softmax_c(-||u - c||^2 / temperature)`` over the codes on the sphere, i.e.
    per-bit logits ``a_i = 4 u_i / (sqrt(d) temperature)``; the batch term defaults to the paper's per-dimension
    factorization (an upper bound of the exact value). Differences from :class:`LFQ`: the latent lives on the
    sphere, so the quantization error is bounded (``||u - q||^2 <= 2 - 2 / sqrt(d)``) and the code scale is
    fixed; the soft distribution is much flatter at the same temperature (``|a_i| <= 4 / (sqrt(d) T)``), hence
    the default ``temperature=1`` of the reference code, where LFQ uses 0.01. Defaults (reference code):
    ``entropy_weight=0.1``, ``diversity=1``, ``commitment_weight=0`` (its configs turn commitment off; the
    reference sums the commitment over the ``d`` dimensions, this one averages: multiply by ``d`` to match).

    Args:
        dim, codebook_dim, codebook_size, num_codebooks, entropy_weight, diversity, temperature,
        commitment_weight, channel_dim, check_finite: as for :class:`LFQ` (each group is normalized on its
            own sphere).
        batch_entropy: ``"factorized"`` (default, the paper's), ``"exact"`` (``d <= 24``) or ``"auto"``.

    Shapes and ``stats``: as for :class:`LFQ`.
    """

    def __init__(
        self,
        dim: int,
        codebook_dim: int | None = None,
        *,
        codebook_size: int | None = None,
        num_codebooks: int = 1,
        entropy_weight: float = 0.1,
        diversity: float | None = None,
        temperature: float = 1.0,
        commitment_weight: float = 0.0,
        batch_entropy: str = "factorized",
        channel_dim: int = -1,
        check_finite: bool = True,
    ) -> None:
        super().__init__(dim, codebook_dim, codebook_size, num_codebooks=num_codebooks,
                         entropy_weight=entropy_weight, diversity=diversity, temperature=temperature,
                         commitment_weight=commitment_weight, batch_entropy=batch_entropy,
                         channel_dim=channel_dim, check_finite=check_finite)

    @property
    def code_scale(self) -> float:
        return 1.0 / math.sqrt(self.codebook_dim)

    def prepare(self, z: Tensor) -> Tensor:
        """Each group l2-normalized (a zero group stays zero)."""
        return F.normalize(z, dim=-1)
