"""Codebook parameterizations: how the *effective* code vectors c_k are made from stored weights.

A parameterization is chosen with a small **spec** (a frozen dataclass that validates its own fields) or
its name, e.g. ``VectorQuantizer(dim, K, codebook="affine")`` or ``codebook=EMA(decay=0.8)``:

==================== ==================================================================================
``"plain"``/Plain()  ``c_k = w_k``, learned by gradient.
``"affine"``/Affine  ``c_k = alpha(a * s_g) * w_k + a * b_g``: shared, zero-initialized ``s, b`` per group of
                     codes g with learning-rate multiplier ``a`` (Huh et al. 2023). The scale is
                     ``alpha(x) = f + (1 - f) * (elu(x) + 1)``, ``f = 1e-3``: the paper's ``1 + x`` above 1,
                     ``exp(x)`` below, so it stays positive. Every step moves every code, used or not.
``"running_affine"`` ``c_k = scale_g * w_k + shift_g`` with ``scale = sqrt(Var[z] / Var[w])``,
/RunningAffine       ``shift = E[z] - scale * E[w]`` from EMA moments of the embeddings and of the weights.
``"ema"``/EMA        ``c_k = M_k / N_k``: EMA cluster sums and counts (VQ-VAE-2, SoundStream), no gradient.
``"linear"``/Linear  SimVQ (Zhu et al. 2024): ``c_k = w_k (I + a V) + a b`` with a *frozen* random basis ``w``
                     and one learned linear map ``V`` (``D x D``, zero-initialized) and shift ``b``: every step
                     moves every code. The affine codebook is its diagonal special case (``V`` diagonal).
==================== ==================================================================================

Each spec builds a :class:`Codebook` module, which maps raw weights to effective codes (``forward``) and
writes effective values back (``replace_codes_``, ``set_codes_``) by inverting its transform, so k-means
init, dead-code replacement and alternating steps all work in the effective space the search sees.

Two rules keep every call's gradients exact whatever happens to the codebook afterwards:

* ``forward()`` with gradients enabled reads the parameters through a copy (a *snapshot*): autograd saves
  the copy, never the parameter, so maintenance may rewrite the parameters in place before the backward of
  an earlier call (the same quantizer called twice per step, shared residual levels).
* The EMA codebook folds a batch's statistics in at the start of the *next* training call
  (``commit_``), so the codes a call used are still in place when activation checkpointing recomputes it;
  ``forward()`` outside training shows the codebook with the pending statistics folded in.

Data-dependent statistics (running moments, EMA sums, code counts) are all-reduced through
:mod:`vqkit.distributed`, so every rank holds the same codebook. Statistics buffers stay in at least fp32
when the module is cast to fp16/bf16 (an EMA with decay 0.99 cannot move a bf16 number).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from . import distributed as dist_utils
from .dtypes import accumulation_dtype
from .validation import check_bool, check_float, check_int

__all__ = [
    "CodebookSpec",
    "Plain",
    "Affine",
    "RunningAffine",
    "EMA",
    "Linear",
    "CODEBOOK_KINDS",
    "codebook_spec",
    "spec_to_dict",
    "Codebook",
    "AffineCodebook",
    "RunningAffineCodebook",
    "EMACodebook",
    "LinearCodebook",
    "assignment_sums",
    "keep_fp32_statistics",
]


def assignment_sums(z: Tensor, indices: Tensor, weight: Tensor | None, size: int) -> tuple[Tensor, Tensor]:
    """Per-code assignment counts and embedding sums, summed over ranks.

    Args:
        z: ``(N, D)`` embeddings (detached; rows with weight 0 must be finite, e.g. zeroed).
        indices: ``(N,)`` int64 assigned codes in ``[0, size)``.
        weight: optional ``(N,)`` float weights (0 for masked positions).
        size: K.
    Returns:
        ``counts (K,)`` and ``sums (K, D)`` in at least fp32.
    """
    acc = accumulation_dtype(z)
    z = z.to(acc)
    if weight is not None:
        w = weight.to(acc)
        z = z * w[:, None]
    else:
        w = torch.ones(z.shape[0], dtype=acc, device=z.device)
    counts = torch.zeros(size, dtype=acc, device=z.device).index_add_(0, indices, w)
    sums = torch.zeros(size, z.shape[1], dtype=acc, device=z.device).index_add_(0, indices, z)
    dist_utils.all_reduce_sum_(counts, sums)
    return counts, sums


def _snapshot(p: Tensor) -> Tensor:
    """``p`` as this call uses it: a differentiable copy when autograd records, else ``p`` itself."""
    return p.clone() if p.requires_grad and torch.is_grad_enabled() else p


# ----------------------------------------------------------------------------------------------
# specs
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CodebookSpec:
    """Base of the codebook specs: ``build(size, dim)`` makes the :class:`Codebook` module."""

    kind: ClassVar[str] = ""
    #: False for codebooks not trained by gradient (EMA): no sync update, no alternating steps.
    learns_by_gradient: ClassVar[bool] = True

    def build(self, size: int, dim: int) -> Codebook:  # pragma: no cover - abstract
        raise NotImplementedError

    def fields(self) -> dict[str, object]:
        """The spec's fields as a dict (for logs and tables)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def describe(self) -> str:
        """``kind(field=value, ...)``."""
        inner = ", ".join(f"{k}={v!r}" for k, v in self.fields().items())
        return f"{self.kind}({inner})" if inner else self.kind


@dataclass(frozen=True)
class Plain(CodebookSpec):
    """``c_k = w_k``, learned by gradient."""

    kind: ClassVar[str] = "plain"

    def build(self, size: int, dim: int) -> Codebook:
        return Codebook(size, dim)


@dataclass(frozen=True)
class Affine(CodebookSpec):
    """Learned affine re-parameterization ``c_k = alpha_g * w_k + lr * b_g`` with a positive scale
    ``alpha_g`` (about ``1 + lr * s_g`` above 1, ``exp(lr * s_g)`` below, never under 1e-3).

    Args:
        lr: learning-rate multiplier ``a`` of the shared scale / shift (> 0).
        groups: contiguous groups of codes with their own scale / shift (must divide K).
    """

    kind: ClassVar[str] = "affine"
    lr: float = 10.0
    groups: int = 1

    def __post_init__(self) -> None:
        check_float("Affine.lr", self.lr, low=0.0, low_open=True)
        check_int("Affine.groups", self.groups, minimum=1)

    def build(self, size: int, dim: int) -> Codebook:
        return AffineCodebook(size, dim, self.groups, self.lr)


@dataclass(frozen=True)
class RunningAffine(CodebookSpec):
    """Affine transform from running moments of the embeddings and the weights.

    Args:
        momentum: EMA momentum of the moments, in ``(0, 1]``.
        groups: contiguous groups of codes with their own transform (must divide K).
    """

    kind: ClassVar[str] = "running_affine"
    momentum: float = 0.1
    groups: int = 1

    def __post_init__(self) -> None:
        check_float("RunningAffine.momentum", self.momentum, low=0.0, high=1.0, low_open=True)
        check_int("RunningAffine.groups", self.groups, minimum=1)

    def build(self, size: int, dim: int) -> Codebook:
        return RunningAffineCodebook(size, dim, self.groups, self.momentum)


@dataclass(frozen=True)
class EMA(CodebookSpec):
    """EMA codebook: cluster counts and sums averaged with ``decay``; no gradient reaches the codes.

    Args:
        decay: in ``(0, 1)``; 0.99 in VQ-VAE-2 / EnCodec, 0.8 in vector-quantize-pytorch.
        eps: Laplace smoothing of the counts (> 0).
    """

    kind: ClassVar[str] = "ema"
    learns_by_gradient: ClassVar[bool] = False
    decay: float = 0.99
    eps: float = 1e-5

    def __post_init__(self) -> None:
        check_float("EMA.decay", self.decay, low=0.0, high=1.0, low_open=True, high_open=True)
        check_float("EMA.eps", self.eps, low=0.0, low_open=True)

    def build(self, size: int, dim: int) -> Codebook:
        return EMACodebook(size, dim, self.decay, self.eps)


@dataclass(frozen=True)
class Linear(CodebookSpec):
    """SimVQ's linear re-parameterization ``c_k = w_k (I + lr V) + lr b`` over a frozen random basis ``w``.

    Args:
        lr: learning-rate multiplier ``a`` of ``V`` and ``b`` (> 0), as in :class:`Affine`.
        bias: learn the shift ``b`` too (SimVQ itself has none; it makes :class:`Affine` a special case).
    """

    kind: ClassVar[str] = "linear"
    lr: float = 1.0
    bias: bool = True

    def __post_init__(self) -> None:
        check_float("Linear.lr", self.lr, low=0.0, low_open=True)
        check_bool("Linear.bias", self.bias)

    def build(self, size: int, dim: int) -> Codebook:
        return LinearCodebook(size, dim, self.lr, self.bias)


#: name -> spec class, for ``codebook="name"``.
CODEBOOK_KINDS: dict[str, type[CodebookSpec]] = {
    cls.kind: cls for cls in (Plain, Affine, RunningAffine, EMA, Linear)
}


def codebook_spec(value: str | CodebookSpec | Mapping[str, object]) -> CodebookSpec:
    """A spec from a spec, a name (``"plain"``, ``"affine"``, ``"running_affine"``, ``"ema"``, ``"linear"``) or a mapping
    ``{"kind": name, **fields}`` (the form recipes and TOML files use, e.g. ``{kind = "ema", decay = 0.8}``)."""
    if isinstance(value, CodebookSpec):
        return value
    if isinstance(value, str) and value in CODEBOOK_KINDS:
        return CODEBOOK_KINDS[value]()
    if isinstance(value, Mapping) and value.get("kind") in CODEBOOK_KINDS:
        cls = CODEBOOK_KINDS[value["kind"]]
        fields = {k: v for k, v in value.items() if k != "kind"}
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in fields if k not in valid]
        if unknown:
            raise ValueError(f"codebook: unknown field(s) {', '.join(unknown)} for kind {value['kind']!r}; "
                             f"valid: {', '.join(valid) or 'none'}")
        return cls(**fields)
    raise ValueError(
        f"codebook: expected one of {tuple(CODEBOOK_KINDS)}, a spec such as vqkit.codebooks.Affine(lr=10), or "
        f"a mapping {{'kind': name, **fields}}, got {value!r}"
    )


def spec_to_dict(spec: CodebookSpec) -> dict[str, object]:
    """``{"kind": name, **fields}``: the inverse of :func:`codebook_spec` for recipes and tables."""
    return {"kind": spec.kind, **spec.fields()}


# ----------------------------------------------------------------------------------------------
# modules
# ----------------------------------------------------------------------------------------------


def keep_fp32_statistics(module: nn.Module, before: dict[str, Tensor | None]) -> None:
    """After ``module._apply`` cast buffers to fp16 / bf16: put the fp32 originals back (moved to the new device),
    so the statistics keep their values, not fp32 copies of rounded ones."""
    for name, old in before.items():
        new = module._buffers.get(name)
        if old is None or new is None or not new.is_floating_point():
            continue
        if new.dtype not in (torch.float32, torch.float64) and old.dtype in (torch.float32, torch.float64):
            module._buffers[name] = old.to(device=new.device)


class _FP32Statistics(nn.Module):
    """Keeps the floating buffers named in ``_statistics`` in at least fp32 through ``.to()`` / ``.half()``."""

    _statistics: tuple[str, ...] = ()

    def _apply(self, fn, recurse: bool = True):
        before = {name: self._buffers.get(name) for name in self._statistics}
        super()._apply(fn, recurse)
        keep_fp32_statistics(self, before)
        return self


class Codebook(_FP32Statistics):
    """Plain codebook, ``c_k = w_k``.

    Args:
        size: number of codes K.
        dim: code dimension D.
        groups: number of contiguous code groups (only the affine variants use it; must divide K).
    """

    def __init__(self, size: int, dim: int, groups: int = 1) -> None:
        super().__init__()
        if size % groups != 0:
            raise ValueError(f"groups: expected a divisor of codebook_size={size}, got {groups}")
        self.size, self.dim, self.groups = size, dim, groups
        self.weight = nn.Parameter(torch.randn(size, dim))

    def forward(self, committed: bool = False) -> Tensor:
        """Effective codes ``(K, D)``, differentiable w.r.t. the parameters (through a snapshot).

        ``committed`` only matters for codebooks with deferred updates (EMA): True gives the codes
        without the pending statistics (what a training call searches and outputs).
        """
        return _snapshot(self.weight)

    def affine_map(self) -> tuple[Tensor, Tensor] | None:
        """Detached ``(alpha, beta)``, each ``(G, D)`` in >= fp32, with ``c = alpha * w + beta``; None = identity."""
        return None

    def to_raw(self, values: Tensor, groups: Tensor | None = None) -> Tensor:
        """Raw weights that produce effective ``values (n, D)``; ``groups (n,)`` are the codes' groups
        (default: ``values`` holds all K codes in order)."""
        m = self.affine_map()
        if m is None:
            return values
        alpha, beta = m
        if groups is None:
            v = values.view(self.groups, -1, self.dim)
            return ((v - beta[:, None]) / alpha[:, None]).reshape(values.shape)
        return (values - beta[groups]) / alpha[groups]

    @torch.no_grad()
    def set_codes_(self, indices: Tensor, values: Tensor) -> None:
        """Make the effective codes ``indices (n,)`` equal ``values (n, D)``."""
        acc = accumulation_dtype(self.weight)
        raw = self.to_raw(values.to(acc), self.group_of(indices))
        self.weight[indices] = raw.to(self.weight.dtype)

    @torch.no_grad()
    def replace_codes_(self, which: Tensor, values: Tensor) -> None:
        """Shape-static: effective code k becomes ``values[k]`` where ``which[k]`` (``(K,)`` bool,
        ``values`` ``(K, D)``); the others keep bit-identical weights."""
        acc = accumulation_dtype(self.weight)
        raw = self.to_raw(values.to(acc)).to(self.weight.dtype)
        self.weight.copy_(torch.where(which[:, None], raw, self.weight))

    def update_statistics_(self, z: Tensor, weight: Tensor | None) -> None:
        """Hook for data-dependent transforms (running affine). ``z (N, D)`` detached."""

    def commit_(self) -> None:
        """Hook for deferred updates (EMA): fold what the previous training call recorded."""

    @torch.no_grad()
    def alternating_step_(self, counts: Tensor, sums: Tensor, lr: float) -> None:
        """One inner codebook step on the codebook loss ``sum_i ||z_i - c_{k_i}||^2``.

        Each used code moves a fraction ``lr`` of the way to the mean of its assigned embeddings (the
        exact minimizer of the loss for fixed assignments; ``lr=1`` is a Lloyd step). With ``c = alpha * w
        + beta`` that is ``w <- lerp(w, (mean - beta) / alpha, lr)`` on the raw weights, done in place on
        ``sums`` and ``w`` (no ``(K, D)`` temporaries; unused codes keep bit-identical weights).
        Shape-static (no host sync), so it traces under ``torch.compile``.

        Args:
            counts: ``(K,)`` assignment counts; sums: ``(K, D)`` assigned-embedding sums (>= fp32),
                **consumed** (overwritten with the raw-space targets).
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
    """Learned affine re-parameterization ``c_k = alpha(a * s_g) * w_k + a * b_g``.

    ``s, b`` are ``(G, D)``, zero-initialized (identity at start), shared by the ``K / G`` codes of each
    group, so every step updates the whole codebook densely. ``a = affine_lr`` multiplies their
    gradients, which the optimizer sees as an ``a``-times larger step on the shared parameters.

    The scale is ``alpha = f + (1 - f) * (elu(a s) + 1)`` with floor ``f = scale_floor = 1e-3``: about
    ``1 + a s`` above 1 (the paper's form), about ``exp(a s)`` below, never under ``f``. Same value at
    ``s = 0`` and the same slope to 0.1%, but it stays positive: Adam moves ``s`` by about its learning rate
    each step whatever the gradient, so the paper's linear scale could be driven through zero, which
    shrinks or flips every code of a channel between two steps (measured on a transformer's residual
    stream); below 1 this one moves by a *relative* ``exp(+-a * lr)`` per step. It grows linearly above 1,
    so a large SGD step cannot overflow it, and the floor bounds the raw weights that k-means,
    replacement and the alternating step write through the inverse (``w = (c - beta) / alpha``).

    Checkpoints written with the linear scale (module version 1) are converted on load to the same
    effective codes; the sign of a negative scale is folded into the weights.
    """

    _version = 2
    #: lower bound of the learned scale (keeps the inverse map, and the raw weights, finite)
    scale_floor: ClassVar[float] = 1e-3

    def __init__(self, size: int, dim: int, groups: int = 1, affine_lr: float = 1.0) -> None:
        super().__init__(size, dim, groups)
        self.affine_lr = float(check_float("Affine.lr", affine_lr, low=0.0, low_open=True))
        self.scale = nn.Parameter(torch.zeros(groups, dim))
        self.shift = nn.Parameter(torch.zeros(groups, dim))

    def _transform(self, scale: Tensor, shift: Tensor) -> tuple[Tensor, Tensor]:
        return positive_scale(self.affine_lr * scale, self.scale_floor), self.affine_lr * shift

    def forward(self, committed: bool = False) -> Tensor:
        alpha, beta = self._transform(_snapshot(self.scale), _snapshot(self.shift))
        w = _snapshot(self.weight).view(self.groups, self.size // self.groups, self.dim)
        return torch.addcmul(beta[:, None], w, alpha[:, None]).reshape(self.size, self.dim)

    def affine_map(self) -> tuple[Tensor, Tensor]:
        acc = accumulation_dtype(self.weight)
        alpha, beta = (t.detach().to(acc) for t in self._transform(self.scale, self.shift))
        return alpha, beta

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        # version 1 = the linear scale. A state dict without module versions (a safetensors file, a plain dict)
        # is taken as current: vqkit's checkpoint reader marks old ones from their recorded release
        # (vqkit.training.checkpoint.legacy_state_dict)
        scale_key, weight_key = prefix + "scale", prefix + "weight"
        if local_metadata.get("version") == 1 and scale_key in state_dict:
            try:
                scale, weight = self._from_linear_scale(state_dict[scale_key], state_dict.get(weight_key))
            except ValueError as e:
                error_msgs.append(f"{scale_key}: {e}")
            else:
                state_dict[scale_key] = scale
                if weight is not None:
                    state_dict[weight_key] = weight
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def _from_linear_scale(self, scale: Tensor, weight: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Version-1 ``(scale, weight)`` (``alpha = 1 + a s``) to the current form, same effective codes.

        A scale that is negative or under ``2 * scale_floor`` moves its sign and size into the weights; without
        ``weight`` (a partial state dict) that cannot be done and raises ValueError."""
        if scale.dim() != 2 or (weight is not None and (weight.dim() != 2 or weight.shape[0] % scale.shape[0] != 0)):
            return scale, weight  # let the shape check of the regular load report it
        acc, floor = torch.float64, self.scale_floor
        alpha = 1.0 + self.affine_lr * scale.to(acc)
        magnitude = alpha.abs().clamp_min(2 * floor)  # the weights absorb the sign and any smaller magnitude
        if weight is not None:
            g, d = scale.shape
            w = weight.to(acc).reshape(g, -1, d) * (alpha / magnitude)[:, None]
            weight = w.reshape(weight.shape).to(weight.dtype)
        elif not bool((alpha == magnitude).all()):
            raise ValueError(f"a linear scale 1 + a s of {float(alpha.min()):.3g} (version-1 state dict) needs "
                             "the codebook's weights in the same load to be converted")
        e = (magnitude - floor) / (1.0 - floor)
        x = torch.where(e >= 1.0, e - 1.0, e.log())  # inverse of elu(x) + 1
        return (x / self.affine_lr).to(scale.dtype), weight

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
        acc = sums.dtype
        alpha, beta = (t.detach().to(acc) for t in self._transform(self.scale, self.shift))
        # sum over the group's assigned pairs of z_i - c_{k_i} = sum_k sums_k - alpha * sum_k n_k w_k - n beta,
        # formed from (G, D) reductions: no (K, D) temporary
        n = counts.view(g, 1, -1)
        weighted_w = torch.bmm(n, self.weight.detach().to(acc).view(g, -1, d)).squeeze(1)
        total = n.sum(-1)
        residual = (sums.view(g, -1, d).sum(1) - alpha * weighted_w - total * beta) / total.clamp_min(1.0)
        self.shift.add_((residual * (lr / self.affine_lr)).to(self.shift.dtype))
        super().alternating_step_(counts, sums, lr)


def positive_scale(x: Tensor, floor: float) -> Tensor:
    """``floor + (1 - floor) * (elu(x) + 1)``: ``1 + x`` above 0, ``exp(x)`` below (scaled into ``(floor, inf)``).

    The exponential branch is evaluated as ``exp`` (not ``expm1 + 1``, which loses the small values in bf16) on
    ``min(x, 0)``, so the branch ``torch.where`` discards never overflows into a NaN gradient."""
    unit = torch.where(x > 0, x + 1.0, torch.exp(x.clamp(max=0.0)))
    return floor + (1.0 - floor) * unit


class RunningAffineCodebook(Codebook):
    """Affine transform from running statistics: ``c_k = scale_g * w_k + shift_g``.

    ``scale = sqrt(Var[z] / (Var[w_g] + 1e-8))`` and ``shift = E[z] - scale * E[w_g]`` per dimension, from
    EMA (``momentum``) moments of the embeddings (all-reduced across ranks) and of each group's weights,
    updated on every training forward; the first update copies the batch moments. Variances are biased.
    Identity until the first update.
    """

    _statistics = ("z_mean", "z_var", "w_mean", "w_var")

    def __init__(self, size: int, dim: int, groups: int = 1, momentum: float = 0.1) -> None:
        super().__init__(size, dim, groups)
        self.momentum = float(check_float("RunningAffine.momentum", momentum, low=0.0, high=1.0, low_open=True))
        self.register_buffer("z_mean", torch.zeros(dim))
        self.register_buffer("z_var", torch.ones(dim))
        self.register_buffer("w_mean", torch.zeros(groups, dim))
        self.register_buffer("w_var", torch.ones(groups, dim))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.int64))

    def _transform(self) -> tuple[Tensor, Tensor]:
        scale = (self.z_var / (self.w_var + 1e-8)).sqrt()
        return scale, self.z_mean - scale * self.w_mean

    def forward(self, committed: bool = False) -> Tensor:
        scale, shift = self._transform()
        w = _snapshot(self.weight).view(self.groups, self.size // self.groups, self.dim)
        return torch.addcmul(shift[:, None], w, scale[:, None]).reshape(self.size, self.dim).to(self.weight.dtype)

    def affine_map(self) -> tuple[Tensor, Tensor]:
        scale, shift = self._transform()
        return scale.clamp_min(1e-12), shift

    @torch.no_grad()
    def update_statistics_(self, z: Tensor, weight: Tensor | None) -> None:
        # moments in fp64 about the running mean: E[z^2] - E[z]^2 would cancel for embeddings far from 0
        acc = torch.float64
        ref = self.z_mean.detach().to(acc)
        zc = z.to(acc) - ref
        if weight is None:
            weight = torch.ones(z.shape[0], dtype=acc, device=z.device)
        weight = weight.to(acc)
        moments = torch.stack([(zc * weight[:, None]).sum(0), (zc * zc * weight[:, None]).sum(0)])
        count = weight.sum().reshape(1)
        dist_utils.all_reduce_sum_(moments, count)
        w = self.weight.detach().to(acc).view(self.groups, -1, self.dim)
        w_mean, w_var = w.mean(1), w.var(1, unbiased=False)
        n = count.clamp_min(1.0)
        shift = moments[0] / n
        z_mean = ref + shift
        z_var = (moments[1] / n - shift**2).clamp_min(0.0)
        # first update copies, later ones are EMAs; a batch without valid rows leaves z moments alone
        m = torch.where(self.num_updates == 0, 1.0, self.momentum).to(acc)
        m_z = torch.where(count > 0, m, torch.zeros_like(m))
        self.z_mean.lerp_(z_mean.to(self.z_mean.dtype), m_z.to(self.z_mean.dtype))
        self.z_var.lerp_(z_var.to(self.z_var.dtype), m_z.to(self.z_var.dtype))
        self.w_mean.lerp_(w_mean.to(self.w_mean.dtype), m.to(self.w_mean.dtype))
        self.w_var.lerp_(w_var.to(self.w_var.dtype), m.to(self.w_var.dtype))
        self.num_updates.add_(1)


class EMACodebook(Codebook):
    """Codebook updated by exponential moving averages of cluster statistics, not by gradients.

    ``N_k <- d N_k + (1 - d) n_k``, ``M_k <- d M_k + (1 - d) sum_{i -> k} z_i``, ``w_k = M_k / N~_k`` with
    Laplace-smoothed ``N~_k``; ``n_k`` and the sums are all-reduced over ranks. A training call records its
    batch statistics (``record_``) and the next training call folds them in (``commit_``) before it
    searches: the same sequence of codebooks as updating right after the output, but the codes a call
    used stay in place until its backward (activation checkpointing recomputes with them). Outside
    training, ``forward()`` returns the codes with the pending statistics folded in.
    """

    _statistics = ("weight", "cluster_size", "embed_sum", "pending_counts", "pending_sums", "pending")

    def __init__(self, size: int, dim: int, decay: float, eps: float = 1e-5) -> None:
        super().__init__(size, dim, 1)
        self.decay = float(check_float("EMA.decay", decay, low=0.0, high=1.0, low_open=True, high_open=True))
        self.eps = float(check_float("EMA.eps", eps, low=0.0, low_open=True))
        w = self.weight.detach().clone()
        del self.weight
        self.register_buffer("weight", w)
        self.register_buffer("cluster_size", torch.ones(size))
        self.register_buffer("embed_sum", w.clone())
        self.register_buffer("pending_counts", torch.zeros(size))
        self.register_buffer("pending_sums", torch.zeros(size, dim))
        self.register_buffer("pending", torch.zeros(()))  # 1.0 while statistics wait to be folded in

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints written before the deferred update have no pending statistics: nothing is pending
        for name in ("pending_counts", "pending_sums", "pending"):
            if prefix + name not in state_dict and prefix + "weight" in state_dict:
                state_dict[prefix + name] = torch.zeros_like(getattr(self, name))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _folded(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(cluster_size, embed_sum, weight)`` with the pending statistics folded in (shape-static)."""
        rate = (1.0 - self.decay) * self.pending
        cluster = torch.lerp(self.cluster_size, self.pending_counts, rate)
        embed = torch.lerp(self.embed_sum, self.pending_sums, rate)
        total = cluster.sum()
        smoothed = (cluster + self.eps) / (total + self.size * self.eps) * total
        weight = embed / smoothed[:, None]
        return cluster, embed, torch.where(self.pending > 0, weight, self.weight)

    def forward(self, committed: bool = False) -> Tensor:
        return self.weight if committed else self._folded()[2]

    @torch.no_grad()
    def commit_(self) -> None:
        cluster, embed, weight = self._folded()
        self.cluster_size.copy_(cluster)
        self.embed_sum.copy_(embed)
        self.weight.copy_(weight)
        self.pending.zero_()

    @torch.no_grad()
    def record_(self, counts: Tensor, sums: Tensor) -> None:
        """Keep one batch's (all-reduced) ``counts (K,)`` and ``sums (K, D)`` for the next ``commit_``."""
        self.pending_counts.copy_(counts)
        self.pending_sums.copy_(sums)
        self.pending.fill_(1.0)

    @torch.no_grad()
    def set_codes_(self, indices: Tensor, values: Tensor) -> None:
        values = values.to(self.weight.dtype)
        self.weight[indices] = values
        self.cluster_size[indices] = 1.0
        self.embed_sum[indices] = values

    @torch.no_grad()
    def replace_codes_(self, which: Tensor, values: Tensor) -> None:
        values = values.to(self.weight.dtype)
        self.weight.copy_(torch.where(which[:, None], values, self.weight))
        self.cluster_size.copy_(torch.where(which, 1.0, self.cluster_size))
        self.embed_sum.copy_(torch.where(which[:, None], values, self.embed_sum))

    def alternating_step_(self, counts: Tensor, sums: Tensor, lr: float) -> None:  # pragma: no cover
        raise RuntimeError("EMA codebooks take no alternating steps")


class LinearCodebook(Codebook):
    """SimVQ (Zhu et al. 2024): ``c_k = w_k M + beta`` with ``M = I + a V`` and ``beta = a b``.

    ``w`` (``K x D``) is a random basis that no gradient reaches (a buffer; maintenance still writes rows of it
    in the effective space: k-means init, replacement, alternating code steps); ``V`` (``D x D``) and ``b``
    (``D``) are zero-initialized parameters (identity at start) shared by all codes, so every optimizer step
    moves the whole codebook. With ``V`` diagonal this is :class:`AffineCodebook` (one group).
    """

    def __init__(self, size: int, dim: int, lr: float = 1.0, bias: bool = True) -> None:
        super().__init__(size, dim, 1)
        self.lr = float(check_float("Linear.lr", lr, low=0.0, low_open=True))
        basis = self.weight.detach().clone()
        del self.weight
        self.register_buffer("weight", basis)
        self.linear = nn.Parameter(torch.zeros(dim, dim))
        self.shift = nn.Parameter(torch.zeros(dim)) if bias else None

    def _map(self, linear: Tensor, shift: Tensor | None) -> tuple[Tensor, Tensor | None]:
        eye = torch.eye(self.dim, dtype=linear.dtype, device=linear.device)
        return eye + self.lr * linear, None if shift is None else self.lr * shift

    def forward(self, committed: bool = False) -> Tensor:
        m, beta = self._map(_snapshot(self.linear), None if self.shift is None else _snapshot(self.shift))
        # the basis is rewritten in place by maintenance: autograd must hold a copy of it, not the buffer
        w = self.weight.clone() if torch.is_grad_enabled() and m.requires_grad else self.weight
        w = w.to(m.dtype)
        return w @ m if beta is None else torch.addmm(beta, w, m)

    def to_raw(self, values: Tensor, groups: Tensor | None = None) -> Tensor:
        acc = accumulation_dtype(values, self.linear)
        m, beta = (None if t is None else t.detach().to(acc) for t in self._map(self.linear, self.shift))
        v = values.to(acc) if beta is None else values.to(acc) - beta
        inverse, _ = torch.linalg.inv_ex(m)  # no host sync (pinv would synchronize CUDA)
        return v @ inverse

    @torch.no_grad()
    def alternating_step_(self, counts: Tensor, sums: Tensor, lr: float) -> None:
        """Each used code moves a fraction ``lr`` toward the mean of its embeddings (in raw space through
        the inverse map); ``V`` and ``b`` are left to the outer optimizer."""
        target = self.to_raw(sums / counts.clamp_min(1.0)[:, None])
        step = torch.where(counts > 0, lr, 0.0).to(self.weight.dtype)[:, None]
        self.weight.lerp_(target.to(self.weight.dtype), step)
