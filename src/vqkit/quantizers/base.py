"""The quantizer contract shared by every vqkit quantizer.

Every quantizer is an ``nn.Module`` whose ``forward(x, mask=None)`` returns a :class:`QuantizerOutput`.
It unpacks as ``quantized, indices, loss = quantizer(x)`` and carries a ``stats`` dict of detached
diagnostics. Inputs are ``(..., dim)`` by default; ``channel_dim`` selects another axis (e.g. ``1`` for
``B x C x H x W``). This module also holds the input checks and layout helpers the quantizers share, so
that every quantizer rejects bad input with the same clear messages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from ..validation import check_choice, check_int

__all__ = [
    "QuantizerOutput",
    "Quantizer",
    "IndexLayout",
    "REQUIRED_STATS",
    "check_choice",
    "check_input",
    "check_mask",
    "check_nonfinite",
    "check_indices",
    "lens_to_mask",
    "flatten_input",
    "apply_projection",
    "nonfinite_rows",
    "nan_rows",
    "mean_stats",
    "move_channel_last",
    "restore_channel_dim",
]


@dataclass
class QuantizerOutput:
    """What every quantizer's ``forward`` returns.

    Attributes:
        quantized: the quantized tensor, same shape and dtype as the input.
        indices: int64 code indices, the input's shape without the channel axis, plus the quantizer's
            trailing index axes (:attr:`Quantizer.index_layout`: groups, residual levels, ...).
        loss: scalar auxiliary loss to add to the task loss (a zero scalar where a method has none).
        stats: detached scalar diagnostics; every quantizer reports at least :data:`REQUIRED_STATS`.
        extras: method-specific differentiable tensors (e.g. a residual quantizer's per-level partial
            sums), empty unless asked for.

    Unpacks as a 3-tuple: ``quantized, indices, loss = out``.
    """

    quantized: Tensor
    indices: Tensor
    loss: Tensor
    stats: dict[str, Tensor] = field(default_factory=dict)
    extras: dict[str, Tensor] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Tensor]:
        return iter((self.quantized, self.indices, self.loss))

    def __len__(self) -> int:
        return 3

    def __getitem__(self, i: int) -> Tensor:
        return (self.quantized, self.indices, self.loss)[i]


#: stats keys every quantizer returns: codebook usage (fraction of codes used in the batch) and
#: perplexity (exp of the entropy of the batch's code frequencies), pooled as the quantizer documents.
REQUIRED_STATS = ("usage", "perplexity")


@dataclass(frozen=True)
class IndexLayout:
    """How a quantizer's ``indices`` address codes.

    Attributes:
        trailing: shape of the index axes after the input's leading shape (``()`` for one index per
            position; ``(G,)`` for groups, ``(L,)`` for residual levels, ``(G, L)`` for grouped residual).
        sizes: number of codes each index column can take, one per column in row-major order over
            ``trailing`` (one entry when ``trailing == ()``).
        shared: every column indexes the same codebook (usage is then pooled over columns).
    """

    trailing: tuple[int, ...]
    sizes: tuple[int, ...]
    shared: bool = False

    def __post_init__(self) -> None:
        n = math.prod(self.trailing)
        if len(self.sizes) != n:
            raise ValueError(f"IndexLayout: {len(self.sizes)} sizes for {n} index columns {self.trailing}")

    @property
    def columns(self) -> int:
        """Number of index columns (1 without trailing axes)."""
        return len(self.sizes)

    def high(self, device: torch.device | None = None) -> Tensor | int:
        """Exclusive upper bound of each index column, broadcastable against ``indices``."""
        if len(set(self.sizes)) == 1:
            return self.sizes[0]
        return torch.tensor(self.sizes, dtype=torch.int64, device=device).reshape(self.trailing)


class Quantizer(nn.Module):
    """Base class and contract of every vqkit quantizer.

    A quantizer maps ``x`` (channels on ``channel_dim``) to a :class:`QuantizerOutput` and declares:

    * ``codebook_size``: codes per index column (an int, or a tuple when columns differ);
    * :attr:`index_layout`: the trailing index axes and the codes per column;
    * :meth:`decode` ``(indices, dtype=None)``: exactly the eval-mode output for those indices, with the
      index dtype / shape / range checked here (subclasses implement :meth:`decode_codes`);
    * :attr:`codebook`: the code vectors in the output space, detached (shapes per class);
      :attr:`latent_codebook` where the space the codes are searched in differs (projections);
    * the stats in :data:`REQUIRED_STATS`.

    Subclasses implement ``forward(x, mask=None, *, lens=None)``, ``index_layout`` and ``decode_codes``;
    :meth:`from_dim` is how the registry builds one from ``dim`` and keyword arguments.
    """

    dim: int
    channel_dim: int
    codebook_size: int | tuple[int, ...]

    def __init__(self, dim: int, channel_dim: int = -1) -> None:
        super().__init__()
        check_int("dim", dim, 1)
        if not isinstance(channel_dim, int) or isinstance(channel_dim, bool):
            raise TypeError(f"channel_dim: expected an int axis (e.g. -1 or 1), got {channel_dim!r}")
        self.dim = dim
        self.channel_dim = channel_dim

    @classmethod
    def from_dim(cls, dim: int, **kwargs: Any) -> Quantizer:
        """Build for ``dim`` input channels (what :func:`vqkit.make_quantizer` calls)."""
        return cls(dim, **kwargs)

    @property
    def index_layout(self) -> IndexLayout:  # pragma: no cover - abstract
        raise NotImplementedError

    def decode_codes(self, indices: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Validated int64 ``indices`` -> channel-last outputs ``(..., dim)``."""
        raise NotImplementedError

    def check_decode_indices(self, indices: object) -> Tensor:
        """``indices`` as int64 after the dtype / trailing-shape / range checks of :attr:`index_layout`."""
        layout = self.index_layout
        return check_indices(indices, layout.trailing, layout.high(getattr(indices, "device", None)),
                             trailing_name=self._trailing_name)

    #: how errors name the trailing index axis (e.g. "groups")
    _trailing_name: str | None = None

    def decode(self, indices: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """``indices`` (as returned by ``forward``) -> exactly the eval-mode ``quantized`` for them, with the
        channel axis at ``channel_dim``; ``dtype`` is the dtype of the forward input to reproduce (default:
        the module's compute dtype)."""
        out = self.decode_codes(self.check_decode_indices(indices))
        if dtype is not None:
            out = out.to(dtype)
        return restore_channel_dim(out, self.channel_dim) if out.ndim >= 2 else out

    @property
    def codebook(self) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def latent_codebook(self) -> Tensor:
        """The codes in the space they are searched in (before any output projection); the same as
        :attr:`codebook` for quantizers without projections."""
        return self.codebook


# ----------------------------------------------------------------------------------------------
# input checks
# ----------------------------------------------------------------------------------------------


def check_input(name: str, x: object, dim: int, channel_dim: int) -> Tensor:
    """Check that ``x`` is a floating tensor with ``dim`` channels on ``channel_dim``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor (float32/bfloat16/float16/float64), got {x.dtype}")
    if x.ndim < 2:
        raise ValueError(
            f"{name}: expected at least 2 dims (batch and channel, e.g. (N, {dim}) or (B, {dim}, H, W)), "
            f"got shape {tuple(x.shape)}"
        )
    if not -x.ndim <= channel_dim < x.ndim:
        raise ValueError(f"channel_dim: axis {channel_dim} is out of range for {name} of shape {tuple(x.shape)}")
    if x.shape[channel_dim] != dim:
        raise ValueError(
            f"{name}: expected size {dim} on channel_dim={channel_dim}, got shape {tuple(x.shape)} "
            f"(size {x.shape[channel_dim]})"
        )
    return x


def check_mask(mask: Tensor | None, expected_shape: torch.Size) -> Tensor | None:
    """Check an optional boolean mask (True = real position) of the input's shape minus channels."""
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask: expected a bool torch.Tensor or None, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask: expected dtype torch.bool (True = real position), got {mask.dtype}")
    if mask.shape != expected_shape:
        raise ValueError(
            f"mask: expected shape {tuple(expected_shape)} (the input's shape without the channel axis), "
            f"got {tuple(mask.shape)}"
        )
    return mask


def lens_to_mask(lens: object, lead: torch.Size, device: torch.device) -> Tensor:
    """``lens (B,)`` valid lengths -> mask ``(B, T)`` with ``mask[b, t] = t < lens[b]`` for inputs whose shape
    without the channel axis is ``(B, T)`` (sequences, e.g. ``(B, T, dim)`` or ``(B, dim, T)``)."""
    if not isinstance(lens, Tensor) or lens.dtype.is_floating_point or lens.dtype == torch.bool \
            or lens.dtype.is_complex:
        got = lens.dtype if isinstance(lens, Tensor) else type(lens).__name__
        raise TypeError(f"lens: expected an integer tensor of valid lengths, got {got}")
    if len(lead) != 2:
        raise ValueError(f"lens: needs inputs of shape (B, T) without the channel axis (sequences), got "
                         f"{tuple(lead)}; pass mask= instead")
    if lens.shape != lead[:1]:
        raise ValueError(f"lens: expected shape ({lead[0]},) (one length per sequence), got {tuple(lens.shape)}")
    lens = lens.to(device)
    if not torch.compiler.is_compiling() and lens.numel() and (bool((lens < 0).any()) or bool((lens > lead[1]).any())):
        raise ValueError(f"lens: expected lengths in [0, {lead[1]}], got min {int(lens.min())} max {int(lens.max())}")
    return torch.arange(lead[1], device=device)[None, :] < lens[:, None]


def check_nonfinite(name: str, x: Tensor) -> None:
    """Raise if ``x (N, D)`` holds NaN or Inf (one device sync; rows masked out must be zeroed first)."""
    if x.numel() == 0:
        return
    lo, hi = torch.aminmax(x.detach())  # one read pass; NaN propagates, +-Inf shows in lo / hi
    if not bool(torch.isfinite(lo) & torch.isfinite(hi)):
        n_bad = int((~torch.isfinite(x)).sum())
        raise ValueError(
            f"{name}: expected finite values, got {n_bad} NaN/Inf entries of {x.numel()} (at positions the mask "
            f"marks as real; pass mask= or lens= for padding, or check_finite=False to get NaN outputs instead)"
        )


#: kept for callers of the old name
check_finite = check_nonfinite


def check_indices(indices: object, trailing: int | tuple[int, ...] | None, high: Tensor | int, name: str = "indices",
                  trailing_name: str | None = None) -> Tensor:
    """Integer tensor with trailing axes ``trailing`` (an int for one axis; None or ``()`` for none) and
    values in ``[0, high)`` (``high`` may be a per-column tensor); returns it as int64. The range check
    syncs once (skipped under ``torch.compile``)."""
    if not isinstance(indices, Tensor) or indices.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        got = indices.dtype if isinstance(indices, Tensor) else type(indices).__name__
        raise TypeError(f"{name}: expected an integer (int64) tensor, got {got}")
    trailing = () if trailing is None else ((trailing,) if isinstance(trailing, int) else tuple(trailing))
    if trailing and (indices.ndim < len(trailing) or tuple(indices.shape[-len(trailing):]) != trailing):
        if len(trailing) == 1:
            size = f"{trailing_name}={trailing[0]}" if trailing_name else str(trailing[0])
            what = f"a trailing axis of size {size}"
        else:
            what = f"trailing axes {trailing}" + (f" ({trailing_name})" if trailing_name else "")
        raise ValueError(f"{name}: expected {what}, got shape {tuple(indices.shape)}")
    indices = indices.long()
    if not torch.compiler.is_compiling() and indices.numel() > 0:
        bad = (indices < 0) | (indices >= high)
        if bool(bad.any()):
            shown = high if isinstance(high, int) else high.tolist()
            raise ValueError(
                f"{name}: expected values in [0, {shown}), got min {int(indices.min())} max {int(indices.max())}"
            )
    return indices


def nonfinite_rows(check: bool, flat: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The non-finite input rule for rows ``flat (N, D)``: with ``check`` (eager) raise naming ``x``
    (one host sync) and return ``(flat, valid, None)``; otherwise, and always under ``torch.compile``,
    zero the non-finite rows and return ``(flat, valid, bad)`` with them marked as padding in ``valid``
    and ``bad (N,)`` the rows whose outputs must come back NaN with index -1."""
    if check and not torch.compiler.is_compiling():
        check_nonfinite("x", flat)
        return flat, valid, None
    finite = torch.isfinite(flat).all(-1)
    flat = torch.where(finite[:, None], flat, flat.new_zeros(()))
    return flat, finite if valid is None else valid & finite, ~finite


def nan_rows(out: Tensor, bad: Tensor | None) -> Tensor:
    """``out (..., N, D)`` with the rows ``bad (N,)`` set to NaN (unchanged when ``bad`` is None)."""
    return out if bad is None else torch.where(bad[:, None], torch.full_like(out[..., :1, :], float("nan")), out)


def mean_stats(stats: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Key-wise mean of several quantizers' stats (groups, levels)."""
    return {k: torch.stack([s[k] for s in stats]).mean() for k in stats[0]}


def apply_projection(layer: nn.Module, t: Tensor) -> Tensor:
    """An optional projection (``nn.Identity`` or ``nn.Linear``). Outside autocast the input is cast to the
    layer's dtype, so a bf16 input meets fp32 weights (or fp32 input a module cast to bf16) without a
    dtype error; callers cast the result back to the input's dtype."""
    if isinstance(layer, nn.Identity):
        return t
    return layer(t if torch.is_autocast_enabled(t.device.type) else t.to(layer.weight.dtype))


def flatten_input(quantizer: Quantizer, x: object, mask: Tensor | None, lens: Tensor | None = None
                  ) -> tuple[Tensor, Tensor | None, torch.Size]:
    """``x`` -> ``(N, dim)`` channel-last rows, ``(N,)`` bool validity (None = all valid), leading shape.

    Rows the mask (or ``lens``) marks as padding are replaced by zeros, so whatever they held (NaN, Inf,
    1e20) reaches neither the output of the valid rows nor any statistic or gradient.
    """
    check_input("x", x, quantizer.dim, quantizer.channel_dim)
    x_last = move_channel_last(x, quantizer.channel_dim)
    lead = x_last.shape[:-1]
    if lens is not None:
        if mask is not None:
            raise ValueError("lens: give either mask= or lens=, not both")
        mask = lens_to_mask(lens, lead, x.device)
    check_mask(mask, lead)
    flat = x_last.reshape(-1, quantizer.dim)
    if mask is None:
        return flat, None, lead
    valid = mask.reshape(-1).to(flat.device)
    return torch.where(valid[:, None], flat, flat.new_zeros(())), valid, lead


# ----------------------------------------------------------------------------------------------
# layout
# ----------------------------------------------------------------------------------------------


def move_channel_last(x: Tensor, channel_dim: int) -> Tensor:
    """``(..., C, ...)`` -> ``(..., C)`` with the channel axis moved last."""
    if channel_dim in (-1, x.ndim - 1):
        return x
    return x.movedim(channel_dim, -1)


def restore_channel_dim(x: Tensor, channel_dim: int) -> Tensor:
    """Inverse of :func:`move_channel_last`."""
    if channel_dim in (-1, x.ndim - 1):
        return x
    return x.movedim(-1, channel_dim)
