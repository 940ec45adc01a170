"""The cosine masking schedule of MaskGIT (Chang et al. 2022), for training and for decoding.

Training: per example draw ``u ~ U(0, 1)``, mask ratio ``r = cos(pi / 2 * u)`` in ``(0, 1]``, and mask
``n = clamp(ceil(r * L), 1, L)`` positions chosen uniformly at random (at least one masked).

Decoding with ``T`` steps: after step ``t`` (0-based) ``floor(L * cos(pi / 2 * (t + 1) / T))`` positions
stay masked, made strictly decreasing (each step reveals at least one position while any is masked),
so the last step leaves none.

Random draws use an optional CPU ``torch.Generator`` and happen on the CPU, so results do not depend
on the device the model runs on.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["cosine_mask_ratio", "mask_counts", "random_mask", "decoding_schedule"]


def cosine_mask_ratio(u: Tensor) -> Tensor:
    """``cos(pi / 2 * u)``: 1 at ``u = 0`` (all masked), 0 at ``u = 1``; any shape."""
    return torch.cos(u * (math.pi / 2))


def mask_counts(ratios: Tensor, length: int) -> Tensor:
    """Masked positions per example: ``clamp(ceil(ratios * length), 1, length)``, int64, same shape."""
    return torch.ceil(ratios.double() * length).long().clamp(1, length)


def random_mask(batch: int, length: int, *, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """A training mask.

    Args:
        batch: B >= 1 examples.
        length: L >= 1 positions.
        generator: CPU generator for the draws (default: the global CPU RNG).
    Returns:
        ``mask`` bool ``(B, L)`` (True = masked; row ``b`` has exactly ``mask_counts(ratios, L)[b]``
        True entries) and ``ratios`` float32 ``(B,)`` in ``(0, 1]``, both on the CPU.
    """
    if batch < 1 or length < 1:
        raise ValueError(f"batch, length: expected ints >= 1, got {batch}, {length}")
    u = torch.rand(batch, generator=generator)
    ratios = cosine_mask_ratio(u)
    counts = mask_counts(ratios, length)
    # rank of each position in a random permutation; the `count` lowest ranks are masked
    ranks = torch.rand(batch, length, generator=generator).argsort(dim=1).argsort(dim=1)
    return ranks < counts[:, None], ratios


def decoding_schedule(length: int, steps: int) -> list[int]:
    """Positions still masked after each of ``steps`` decoding steps (starting from ``length`` masked).

    The counts follow ``floor(length * cos(pi / 2 * (t + 1) / steps))``, forced to decrease by at least
    one per step while positive; the last entry is 0. With ``steps > length`` the trailing steps have
    nothing left to reveal (their count stays 0).
    """
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"length: expected an int >= 1, got {length!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected an int >= 1, got {steps!r}")
    counts, prev = [], length
    for t in range(steps):
        c = 0 if t == steps - 1 else math.floor(length * math.cos(math.pi / 2 * (t + 1) / steps))
        c = max(0, min(c, prev - 1))
        counts.append(c)
        prev = c
    return counts
