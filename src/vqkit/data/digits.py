"""scikit-learn's bundled 8x8 handwritten digits: the default dataset (never downloads).

1797 grayscale images ``(1, 8, 8)``, 10 classes. Pixel values 0..16 are mapped exactly to uint8 0..255 by
``(v * 255 + 8) // 16`` (round half up of ``v * 255 / 16``). The train/test split is fixed: a stratified
split (:func:`~vqkit.data.splits.stratified_split`, ``test_fraction=0.2``, ``seed=0``) giving
1437 train / 360 test images, the same on every machine and NumPy version.
"""

from __future__ import annotations

import numpy as np

from .base import ImageDataset
from .paths import PathLike
from .splits import check_split, stratified_split

__all__ = ["load_digits", "DIGITS_SEED", "DIGITS_TEST_FRACTION"]

DIGITS_SEED = 0
DIGITS_TEST_FRACTION = 0.2


def load_digits(split: str = "train", root: PathLike | None = None) -> ImageDataset:
    """The digits split ``"train"`` (1437) or ``"test"`` (360); ``root`` is ignored (the data is bundled)."""
    check_split(split)
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the 'digits' dataset needs scikit-learn: pip install scikit-learn (or pip install 'vqkit[train]')"
        ) from e
    bunch = _sk_load_digits()
    values = np.asarray(bunch.data, dtype=np.int64).reshape(-1, 1, 8, 8)
    images = ((values * 255 + 8) // 16).astype(np.uint8)
    labels = np.asarray(bunch.target, dtype=np.int64)
    train_idx, test_idx = stratified_split(labels, DIGITS_TEST_FRACTION, DIGITS_SEED)
    idx = train_idx if split == "train" else test_idx
    return ImageDataset(
        np.ascontiguousarray(images[idx]),
        labels[idx],
        num_classes=10,
        name=f"digits/{split}",
        class_names=[str(i) for i in range(10)],
    )
