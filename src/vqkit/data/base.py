"""The in-memory image dataset every loader returns."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["ImageDataset"]


def _as_tensor(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    if isinstance(x, np.ndarray) and not x.flags.writeable:
        x = x.copy()  # torch cannot share a read-only buffer
    return torch.as_tensor(x)


class ImageDataset(Dataset):
    """Images kept as uint8 in memory, served as float32 in ``[0, 1]`` (``x / 255``; no normalization).

    Works with :class:`torch.utils.data.DataLoader` and ``DistributedSampler`` through ``__len__`` /
    ``__getitem__``; the trainer's hot loop should use :meth:`get_batch` instead (one gather and one
    conversion per batch, no per-item Python).

    Args:
        images: uint8 ``(N, C, H, W)`` tensor (or numpy array).
        labels: integer ``(N,)`` tensor (or array), stored as int64, each in ``[0, num_classes)``.
        num_classes: number of classes (>= 1).
        name: a short name for logs and reports, e.g. ``"digits/train"``.
        class_names: optional human-readable name of each class (``num_classes`` of them).
    """

    def __init__(
        self,
        images: torch.Tensor | np.ndarray,
        labels: torch.Tensor | np.ndarray,
        num_classes: int,
        name: str,
        class_names: Sequence[str] | None = None,
    ) -> None:
        images, labels = _as_tensor(images), _as_tensor(labels)
        if images.dtype != torch.uint8:
            raise TypeError(f"images: expected dtype torch.uint8, got {images.dtype}")
        if images.ndim != 4:
            raise ValueError(f"images: expected shape (N, C, H, W), got {tuple(images.shape)}")
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise TypeError(f"labels: expected an integer dtype, got {labels.dtype}")
        if labels.shape != images.shape[:1]:
            raise ValueError(f"labels: expected shape ({images.shape[0]},) to match images, got {tuple(labels.shape)}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes: expected an int >= 1, got {num_classes!r}")
        labels = labels.to(torch.int64)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise ValueError(
                f"labels: expected values in [0, {num_classes}), got range [{int(labels.min())}, {int(labels.max())}]"
            )
        if class_names is not None:
            class_names = tuple(str(c) for c in class_names)
            if len(class_names) != num_classes:
                raise ValueError(f"class_names: expected {num_classes} names, got {len(class_names)}")
        self.images: torch.Tensor = images.contiguous()
        self.labels: torch.Tensor = labels.to(images.device).contiguous()
        self.num_classes: int = num_classes
        self.name: str = str(name)
        self.class_names: tuple[str, ...] | None = class_names

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    @property
    def device(self) -> torch.device:
        return self.images.device

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """One example: float32 image ``(C, H, W)`` in ``[0, 1]`` and its integer label."""
        return self.images[index].to(torch.float32).div_(255.0), int(self.labels[index])

    def get_batch(
        self, idx: torch.Tensor | Sequence[int], device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch by index: float32 images ``(B, C, H, W)`` in ``[0, 1]`` and int64 labels ``(B,)``.

        Args:
            idx: integer indices ``(B,)`` (negative ones count from the end, like ``__getitem__``).
            device: where to put the batch (default: where the dataset lives). The uint8 images are moved
                before the float conversion, so a host-to-GPU copy moves 4x fewer bytes.
        """
        idx = torch.as_tensor(idx, device=self.images.device)
        if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
            raise TypeError(f"idx: expected an integer tensor, got dtype {idx.dtype}")
        if idx.ndim != 1:
            raise ValueError(f"idx: expected shape (B,), got {tuple(idx.shape)}")
        n = len(self)
        idx = idx.to(torch.int64)
        if idx.numel():
            lo, hi = int(idx.min()), int(idx.max())
            if lo < -n or hi >= n:
                raise IndexError(f"idx: expected values in [{-n}, {n}) for a dataset of {n}, got range [{lo}, {hi}]")
            if lo < 0:
                idx = torch.where(idx < 0, idx + n, idx)
        images = self.images.index_select(0, idx)
        labels = self.labels.index_select(0, idx)
        if device is not None:
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
        return images.to(torch.float32).div_(255.0), labels

    def to(self, device: torch.device | str) -> ImageDataset:
        """A copy with images and labels on ``device`` (e.g. keep a small dataset on the GPU; then use
        :meth:`get_batch`, not a multi-worker DataLoader)."""
        return ImageDataset(
            self.images.to(device), self.labels.to(device), self.num_classes, self.name, self.class_names
        )

    def __repr__(self) -> str:
        c, h, w = self.image_shape
        return (
            f"ImageDataset(name={self.name!r}, n={len(self)}, image_shape=({c}, {h}, {w}), "
            f"num_classes={self.num_classes}, device={self.device})"
        )
