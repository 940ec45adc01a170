"""The quantizer contract shared by every vqkit quantizer.

Every quantizer is an ``nn.Module`` whose ``forward(x, mask=None)`` returns a :class:`QuantizerOutput`.
It unpacks as ``quantized, indices, loss = quantizer(x)`` and carries a ``stats`` dict of detached
diagnostics. Inputs are ``(..., dim)`` by default; ``channel_dim`` selects another axis (e.g. ``1`` for
``B x C x H x W``). This module also holds the input checks and layout helpers the quantizers share, so
that every quantizer rejects bad input with the same clear messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import Tensor, nn

__all__ = [
    "QuantizerOutput",
    "Quantizer",
    "check_positive_int",
    "check_choice",
    "check_input",
    "check_mask",
    "check_finite",
    "move_channel_last",
    "restore_channel_dim",
]


@dataclass
class QuantizerOutput:
    """What every quantizer's ``forward`` returns.

    Attributes:
        quantized: the quantized tensor, same shape and dtype as the input.
        indices: int64 code indices, the input's shape without the channel axis (plus a trailing
            axis for grouped / residual / multi-codebook quantizers).
        loss: scalar auxiliary loss to add to the task loss (a zero scalar where a method has none).
        stats: detached scalar diagnostics (usage, perplexity, dead codes, quantization error ...).

    Unpacks as a 3-tuple: ``quantized, indices, loss = out``.
    """

    quantized: Tensor
    indices: Tensor
    loss: Tensor
    stats: dict[str, Tensor] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Tensor]:
        return iter((self.quantized, self.indices, self.loss))

    def __len__(self) -> int:
        return 3

    def __getitem__(self, i: int) -> Tensor:
        return (self.quantized, self.indices, self.loss)[i]


class Quantizer(nn.Module):
    """Base class: holds ``dim`` / ``channel_dim`` and the public decode API.

    Subclasses implement ``forward(x, mask=None) -> QuantizerOutput`` and
    ``decode(indices) -> Tensor`` (the eval-mode output for those indices, channel axis placed as in
    ``forward``).
    """

    dim: int
    channel_dim: int

    def __init__(self, dim: int, channel_dim: int = -1) -> None:
        super().__init__()
        check_positive_int("dim", dim)
        if not isinstance(channel_dim, int) or isinstance(channel_dim, bool):
            raise TypeError(f"channel_dim: expected an int axis (e.g. -1 or 1), got {channel_dim!r}")
        self.dim = dim
        self.channel_dim = channel_dim

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """Alias of :meth:`decode`."""
        return self.decode(indices)

    def decode(self, indices: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


# ----------------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------------


def check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    """Raise unless ``value`` is an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int >= {minimum}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return value


def check_choice(name: str, value: object, choices: tuple) -> object:
    """Raise unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")
    return value


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


def check_finite(name: str, x: Tensor) -> None:
    """Raise if ``x`` holds NaN or Inf (one device sync; call from non-hot paths)."""
    if x.numel() == 0:
        return
    lo, hi = torch.aminmax(x.detach())  # one read pass; NaN propagates, +-Inf shows in lo / hi
    if not bool(torch.isfinite(lo) & torch.isfinite(hi)):
        n_bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name}: expected finite values, got {n_bad} NaN/Inf entries of {x.numel()}")


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
