"""Ternary linear layers: :class:`BitLinear` (BitNet b1.58 and its "Reloaded" median variant).

Training uses fake quantization in float with straight-through gradients (the latent full-precision
weights are what the optimizer updates); :meth:`BitLinear.freeze` switches a layer to the inference path:
ternary weights packed 2 bits each (4 per uint8) and int8 activations, multiplied exactly.

Sources: BitNet (Wang et al. 2023, Sec. 2 "BitLinear": LayerNorm before absmax activation quantization,
output rescaled by the weight and activation scales); BitNet b1.58 (Ma et al. 2024: absmean ternary
weights ``RoundClip(W / (gamma + eps), -1, 1)``, per-token 8-bit activations); BitNet b1.58 Reloaded
(Nielsen & Schneider-Kamp 2024: ``gamma = median|W|``, studied for small networks).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dtypes import accumulation_dtype
from .estimators import straight_through
from .validation import check_bool, check_choice, check_float

__all__ = [
    "BitLinear",
    "SCALES",
    "weight_scale",
    "ternarize",
    "quantize_activations",
    "pack_ternary",
    "unpack_ternary",
    "ternary_matmul",
    "quantize_model",
    "freeze_model",
    "packed_size_report",
]

SCALES = ("absmean", "median")
ACT_MAX = 127.0  # 8-bit absmax: Q_b = 2^(8-1) - 1
_NORM_EPS = 1e-5  # nn.LayerNorm's default
_FP32_EXACT_INT = 2**24  # integers up to this are exact in fp32


# ----------------------------------------------------------------------------------------------
# quantization functions
# ----------------------------------------------------------------------------------------------


def weight_scale(w: Tensor, scale: str = "absmean") -> Tensor:
    """Per-tensor ternary scale ``gamma``: ``mean|W|`` (``"absmean"``) or ``median|W|`` (``"median"``,
    ``torch.median``: the lower of the two middle values for an even count). Returns a 0-d tensor."""
    check_choice("scale", scale, SCALES)
    a = w.detach().abs()
    return a.mean() if scale == "absmean" else a.median()


def ternarize(w: Tensor, scale: str = "absmean", eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """``W_q = clamp(round(W / (gamma + eps)), -1, 1)``.

    Args:
        w: weights ``(out, in)`` (any shape).
        scale: how ``gamma`` is computed, see :func:`weight_scale`.
        eps: guards the division when ``W`` is all zeros.
    Returns:
        ``W_q`` (integer-valued, ``w``'s dtype, values in {-1, 0, 1}, detached) and ``gamma`` (0-d). The
        dequantized weight is ``W_q * gamma``, i.e. in ``{-gamma, 0, +gamma}``.
    """
    gamma = weight_scale(w, scale)
    return (w.detach() / (gamma + eps)).round().clamp(-1, 1), gamma


def quantize_activations(x: Tensor, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """Per-row (per-token) absmax 8-bit quantization: ``s_x = 127 / max|x|``, ``x_q = clamp(round(x s_x), -128, 127)``.

    Args:
        x: ``(..., in)``.
        eps: lower bound of ``max|x|`` (all-zero rows).
    Returns:
        ``x_q`` integer-valued ``(..., in)`` in ``x``'s dtype, and ``s_x`` ``(..., 1)``; both detached.
    """
    x = x.detach()
    s_x = ACT_MAX / x.abs().amax(dim=-1, keepdim=True).clamp_min(eps)
    return (x * s_x).round().clamp(-ACT_MAX - 1, ACT_MAX), s_x


def pack_ternary(w_q: Tensor) -> Tensor:
    """Pack ternary values {-1, 0, 1} into 2 bits each, 4 per byte.

    Weight ``k`` of the row-major flattened tensor is stored as ``w + 1`` in bits ``2 (k % 4)`` of byte
    ``k // 4`` (padding codes hold 0). Returns uint8 ``(ceil(numel / 4),)``.
    """
    flat = w_q.detach().reshape(-1)
    if flat.numel() and not bool(((flat == -1) | (flat == 0) | (flat == 1)).all()):
        raise ValueError("w_q: expected only values in {-1, 0, 1}")
    codes = (flat.to(torch.int32) + 1)
    codes = torch.cat([codes, codes.new_ones((-codes.numel()) % 4)]).view(-1, 4)
    packed = codes[:, 0] | (codes[:, 1] << 2) | (codes[:, 2] << 4) | (codes[:, 3] << 6)
    return packed.to(torch.uint8)


def unpack_ternary(packed: Tensor, shape: tuple[int, ...] | torch.Size) -> Tensor:
    """Inverse of :func:`pack_ternary`: uint8 ``(ceil(n / 4),)`` -> int8 ``shape`` in {-1, 0, 1}."""
    n = math.prod(shape)
    if packed.dtype != torch.uint8 or packed.ndim != 1 or packed.numel() != (n + 3) // 4:
        raise ValueError(
            f"packed: expected uint8 of shape ({(n + 3) // 4},) for {tuple(shape)} weights, "
            f"got {packed.dtype} {tuple(packed.shape)}"
        )
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.int32, device=packed.device)
    codes = (packed.to(torch.int32).unsqueeze(-1) >> shifts) & 3
    return (codes.reshape(-1)[:n] - 1).to(torch.int8).reshape(shape)


def ternary_matmul(x_q: Tensor, w_q: Tensor) -> Tensor:
    """Exact ``x_q @ w_q^T`` for int8 activations ``(..., in)`` and ternary int8 weights ``(out, in)``.

    Every partial sum is an integer of magnitude <= ``128 * in``, so an fp32 matmul of the integer values
    is exact while ``128 * in <= 2^24`` (in <= 131072; fp64 beyond). Emulates the int32-accumulating
    kernel of a real deployment. Returns the accumulator as float32 (or float64) ``(..., out)``.
    """
    dtype = torch.float32 if 128 * w_q.shape[-1] <= _FP32_EXACT_INT else torch.float64
    return x_q.to(dtype) @ w_q.to(dtype).t()


def _latent_from_ternary(w_q: Tensor, gamma: Tensor, scale: str) -> Tensor:
    """A weight ``W`` with ``ternarize(W, scale) == (w_q, gamma)`` (up to eps).

    absmean: ``W = w_q * gamma / f`` (``f`` = fraction of nonzeros) keeps ``mean|W| = gamma``. median:
    ``W = w_q * gamma``; a median-ternarized tensor has more nonzeros than zeros (every ``|W| >= gamma``
    maps to +-1), so the lower median of ``|W|`` is again ``gamma``.
    """
    w = w_q * gamma
    if scale == "absmean":
        w = w / (w_q != 0).float().mean().clamp_min(1e-12)
    return w


# ----------------------------------------------------------------------------------------------
# the layer
# ----------------------------------------------------------------------------------------------


class BitLinear(nn.Linear):
    """Drop-in ``nn.Linear`` with ternary weights and 8-bit activations (BitNet b1.58).

    Same parameters (``weight (out, in)``, ``bias (out,)``) and init as ``nn.Linear``, so an
    ``nn.Linear`` state dict loads as is. Training forward (fake quantization in fp32, STE for both)::

        x~  = LayerNorm(x)  (no affine; BitNet places it before activation quantization)   if norm
        s_x = 127 / max|x~|  per row,       x_q = clamp(round(x~ s_x), -128, 127)
        gamma = mean|W| (absmean) or median|W| (median),   W_q = clamp(round(W / (gamma + eps)), -1, 1)
        y   = (x_q W_q^T) / (s_w s_x) + bias,   s_w = 1 / gamma

    i.e. ``y = F.linear(x_q / s_x, W_q * gamma, bias)``. The STE passes the gradient of that linear
    w.r.t. its (quantized) input and weight unchanged to ``x~`` and to the latent ``W``; ``gamma`` and
    ``s_x`` are constants for autograd. Quantization runs in (at least) fp32 with autocast off; the matmul follows
    autocast / the weight dtype like ``nn.Linear``.

    :meth:`freeze` switches to the inference path (packed 2-bit weights, exact integer products); a
    frozen layer is inference-only (it runs under ``no_grad``). :meth:`unfreeze` returns to training.

    Args:
        in_features, out_features, bias, device, dtype: as ``nn.Linear``.
        scale: ``"absmean"`` (b1.58) or ``"median"`` (Reloaded).
        eps: added to ``gamma`` in the weight division, and lower bound of ``max|x|``.
        norm: apply the affine-free LayerNorm to the input first.

    Shapes: ``x`` ``(..., in_features)`` -> ``(..., out_features)``.
    """

    packed_weight: Tensor | None
    weight_scale: Tensor | None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        scale: str = "absmean",
        eps: float = 1e-5,
        norm: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        check_choice("scale", scale, SCALES)
        self.scale = scale
        self.eps = check_float("eps", eps, low=0.0, low_open=True)
        self.norm = check_bool("norm", norm)
        self.register_buffer("packed_weight", None)
        self.register_buffer("weight_scale", None)
        self._latent_dtype = self.weight.dtype

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale={self.scale!r}, norm={self.norm}, frozen={self.frozen}"

    @property
    def frozen(self) -> bool:
        """Whether the layer runs the packed inference path."""
        return self.packed_weight is not None

    def _normalize(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, (self.in_features,), eps=_NORM_EPS) if self.norm else x

    def quantized_weight(self) -> Tensor:
        """Dequantized ternary weight ``W_q * gamma`` ``(out, in)`` (STE to the latent weight when training)."""
        if self.frozen:
            return unpack_ternary(self.packed_weight, self.weight_shape).float() * self.weight_scale
        w = self.weight.to(accumulation_dtype(self.weight.dtype))
        w_q, gamma = ternarize(w, self.scale, self.eps)
        return straight_through(w, w_q * gamma)

    @property
    def weight_shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    def forward(self, x: Tensor) -> Tensor:
        if self.frozen:
            return self._forward_frozen(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            xn = self._normalize(x.to(accumulation_dtype(x.dtype)))
            x_q, s_x = quantize_activations(xn, self.eps)
            x_fq = straight_through(xn, x_q / s_x)
            w_fq = self.quantized_weight()
        dtype = self.weight.dtype
        return F.linear(x_fq.to(dtype), w_fq.to(dtype), self.bias)

    @torch.no_grad()
    def _forward_frozen(self, x: Tensor) -> Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            x_q, s_x = quantize_activations(self._normalize(x.float()), self.eps)
            w_q = unpack_ternary(self.packed_weight, self.weight_shape)
            acc = ternary_matmul(x_q.to(torch.int8), w_q)  # exact integer accumulator
            y = (acc * (self.weight_scale.to(acc.dtype) / s_x.to(acc.dtype))).to(self._latent_dtype)
            if self.bias is not None:
                y = y + self.bias
        return y

    # ------------------------------------------------------------------------------------------

    @torch.no_grad()
    def freeze(self, keep_latent: bool = False) -> BitLinear:
        """Switch to inference: pack ``W_q`` (2 bits per weight, uint8 ``packed_weight``) and store gamma
        (fp32 ``weight_scale``).

        With ``keep_latent=False`` (default) the fp32 ``weight`` parameter is dropped (``self.weight`` is
        None, the state dict holds ``packed_weight``, ``weight_scale`` and ``bias``), which is the point of
        packing; :meth:`unfreeze` then rebuilds a latent weight that ternarizes back to the same
        ``(W_q, gamma)`` (so the training forward equals the frozen one), but the latent full-precision
        detail is lost. ``keep_latent=True`` keeps ``weight`` so :meth:`unfreeze` is lossless.
        To load a frozen state dict, build the layer, call ``freeze()`` and then ``load_state_dict``.
        """
        if self.frozen:
            return self
        w_q, gamma = ternarize(self.weight.float(), self.scale, self.eps)
        self._latent_dtype = self.weight.dtype
        self.packed_weight = pack_ternary(w_q)
        self.weight_scale = gamma.float().reshape(())
        if not keep_latent:
            del self.weight
            self.register_parameter("weight", None)
        return self

    @torch.no_grad()
    def unfreeze(self) -> BitLinear:
        """Back to the training path (see :meth:`freeze`)."""
        if not self.frozen:
            return self
        if self.weight is None:
            w_q = unpack_ternary(self.packed_weight, self.weight_shape).float()
            self.weight = nn.Parameter(_latent_from_ternary(w_q, self.weight_scale, self.scale).to(self._latent_dtype))
        self.packed_weight = None
        self.weight_scale = None
        return self


# ----------------------------------------------------------------------------------------------
# model-level helpers
# ----------------------------------------------------------------------------------------------

Exclude = str | Iterable[str] | Callable[[str, nn.Module], bool]


def _exclusion(model: nn.Module, exclude: Exclude) -> Callable[[str, nn.Module], bool]:
    if callable(exclude):
        return exclude
    names = [exclude] if isinstance(exclude, str) else list(exclude)
    known = {name for name, _ in model.named_modules()}
    for name in names:
        if not isinstance(name, str) or name not in known:
            linears = [n for n, m in model.named_modules() if type(m) is nn.Linear]
            raise ValueError(
                f"exclude: {name!r} is not a module name of the model; its nn.Linear modules are {linears}"
            )
    return lambda qualified, _: any(qualified == n or qualified.startswith(n + ".") for n in names)


def quantize_model(
    model: nn.Module,
    scale: str = "absmean",
    *,
    exclude: Exclude = (),
    norm: bool = True,
    eps: float = 1e-5,
) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` by a :class:`BitLinear` with the same weights, in place.

    The new layers hold the *same* ``Parameter`` objects as the ``nn.Linear`` they replace, so an optimizer
    built before the call keeps training them (and its state stays attached).

    Only modules whose type is exactly ``nn.Linear`` are replaced (subclasses keep their own forward;
    e.g. ``nn.MultiheadAttention.out_proj`` is one and is never called through ``forward``); all other
    modules are untouched. Forward hooks registered on replaced layers are not carried over.

    Args:
        model: the model (returned; if it is itself an ``nn.Linear`` a new :class:`BitLinear` is returned).
        scale, norm, eps: :class:`BitLinear` options.
        exclude: module names to keep in full precision (a name also excludes everything under it, e.g.
            ``("head",)`` keeps the classifier head as the BitNet papers do), or a predicate
            ``(qualified_name, module) -> bool``. Unknown names raise ValueError.
    Returns:
        the model.
    """
    check_choice("scale", scale, SCALES)
    skip = _exclusion(model, exclude)
    replaced: dict[int, BitLinear] = {}

    def convert(lin: nn.Linear) -> BitLinear:
        if id(lin) not in replaced:
            new = BitLinear(lin.in_features, lin.out_features, bias=lin.bias is not None, scale=scale, eps=eps,
                            norm=norm, device="meta", dtype=lin.weight.dtype)
            new.weight = lin.weight  # the same Parameter objects: optimizers built earlier keep working
            new.bias = lin.bias
            new._latent_dtype = lin.weight.dtype
            new.train(lin.training)
            replaced[id(lin)] = new
        return replaced[id(lin)]

    if type(model) is nn.Linear:
        return model if skip("", model) else convert(model)
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent._modules.items()):  # not named_children: keeps shared ones
            qualified = f"{parent_name}.{child_name}" if parent_name else child_name
            if type(child) is nn.Linear and not skip(qualified, child):
                setattr(parent, child_name, convert(child))
    return model


def freeze_model(model: nn.Module, keep_latent: bool = False) -> nn.Module:
    """Call :meth:`BitLinear.freeze` on every BitLinear of ``model``; returns the model."""
    for m in model.modules():
        if isinstance(m, BitLinear):
            m.freeze(keep_latent)
    return model


def packed_size_report(model: nn.Module) -> dict[str, float]:
    """Bytes of the BitLinear weights packed (2 bits each + one fp32 gamma per layer) vs as fp32.

    Works frozen or not (for unfrozen layers it reports what :meth:`BitLinear.freeze` would store).
    Returns ``ternary_weights`` (count), ``packed_bytes``, ``fp32_bytes`` (4 bytes per weight),
    ``compression`` (fp32 / packed) and ``other_bytes`` (all other parameters and buffers as stored:
    biases, excluded layers, norms).
    """
    n_weights = packed = 0
    counted: set[int] = set()
    for m in model.modules():
        if isinstance(m, BitLinear):
            n = m.in_features * m.out_features
            n_weights += n
            packed += (n + 3) // 4 + 4
            counted.update(id(t) for t in (m.weight, m.packed_weight, m.weight_scale) if t is not None)
    other = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()) if id(t) not in counted)
    fp32 = 4 * n_weights
    return {
        "ternary_weights": n_weights,
        "packed_bytes": packed,
        "fp32_bytes": fp32,
        "compression": fp32 / packed if packed else float("nan"),
        "other_bytes": other,
    }
