"""What every vqkit model returns, and the interface the trainer relies on.

A model is an ``nn.Module`` with a ``task`` (``"reconstruction"`` or ``"classification"``), a ``quantizer``
attribute (any module following the :class:`~vqkit.quantizers.base.QuantizerOutput` contract) and
``forward(x) -> ModelOutput``. The trainer knows nothing else about it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from ..quantizers.base import QuantizerOutput

__all__ = ["ModelOutput", "QuantizedModel", "QuantizerFactory", "TASKS", "check_image_shape"]

TASKS = ("reconstruction", "classification")

#: ``make_quantizer(dim, channel_dim) -> nn.Module``: builds the bottleneck once the model knows the
#: width of the features at the quantizer position (see :func:`vqkit.models.factory.quantizer_factory`).
QuantizerFactory = Callable[[int, int], nn.Module]


@dataclass
class ModelOutput:
    """``output``: reconstruction ``(B, C, H, W)`` or logits ``(B, num_classes)``; ``quant``: the
    bottleneck's :class:`QuantizerOutput` (its ``loss`` is added to the task loss by the trainer)."""

    output: Tensor
    quant: QuantizerOutput


class QuantizedModel(nn.Module):
    """Base class: a network with one quantized bottleneck ``self.quantizer``."""

    task: str
    quantizer: nn.Module

    def forward(self, x: Tensor) -> ModelOutput:  # pragma: no cover - abstract
        raise NotImplementedError


def check_image_shape(image_shape: object) -> tuple[int, int, int]:
    """Validate ``(C, H, W)`` with positive ints."""
    if (not isinstance(image_shape, (tuple, list)) or len(image_shape) != 3
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in image_shape)):
        raise ValueError(f"image_shape: expected (C, H, W) with positive ints, got {image_shape!r}")
    c, h, w = image_shape
    return int(c), int(h), int(w)
