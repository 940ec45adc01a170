"""Task losses: reconstruction MSE for autoencoders, cross-entropy for classifiers."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["task_loss"]


def task_loss(task: str, output: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """The task loss and detached batch metrics.

    Args:
        task: ``"reconstruction"`` (``output`` ``(B, C, H, W)`` vs ``x``) or ``"classification"``
            (logits ``(B, classes)`` vs labels ``y (B,)``).
    Returns:
        ``(loss, {"mse": ...})`` or ``(loss, {"ce": ..., "accuracy": ...})``; computed in fp32.
    """
    if task == "reconstruction":
        loss = F.mse_loss(output.float(), x.float())
        return loss, {"mse": loss.detach()}
    if task == "classification":
        loss = F.cross_entropy(output.float(), y)
        return loss, {"ce": loss.detach(), "accuracy": (output.argmax(1) == y).float().mean()}
    raise ValueError(f"task: expected 'reconstruction' or 'classification', got {task!r}")
