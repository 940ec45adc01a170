"""Fixed, deterministic train/test splits for datasets that ship without one."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["SPLITS", "check_split", "stratified_split"]


def stratified_split(labels: np.ndarray, test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split example indices into train and test, class-balanced and reproducible.

    The test set has ``ceil(test_fraction * N)`` examples (the scikit-learn convention), shared among the
    classes in proportion to their sizes (largest remainder; ties go to the lower class id). Within each class
    the test examples are drawn with ``np.random.RandomState(seed)``, whose stream NumPy keeps frozen
    across versions, so the split never changes.

    Args:
        labels: integer class ids ``(N,)``.
        test_fraction: in ``(0, 1)``.
        seed: seed of the permutation.

    Returns:
        ``(train_idx, test_idx)``: sorted int64 index arrays that partition ``range(N)``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels: expected shape (N,), got {labels.shape}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction: expected a float in (0, 1), got {test_fraction!r}")
    n = labels.shape[0]
    classes, counts = np.unique(labels, return_counts=True)
    n_test = math.ceil(test_fraction * n)
    quota = counts * n_test / max(n, 1)
    take = np.floor(quota).astype(np.int64)
    order = np.argsort(-(quota - take), kind="stable")  # largest remainder first, ties by class order
    take[order[: n_test - int(take.sum())]] += 1
    rng = np.random.RandomState(seed)
    test_parts = []
    for c, k in zip(classes, take):
        members = np.flatnonzero(labels == c)
        test_parts.append(members[rng.permutation(members.shape[0])[:k]])
    test_mask = np.zeros(n, dtype=bool)
    if test_parts:
        test_mask[np.concatenate(test_parts)] = True
    return np.flatnonzero(~test_mask).astype(np.int64), np.flatnonzero(test_mask).astype(np.int64)


SPLITS = ("train", "test")


def check_split(split: str) -> str:
    """Return ``split`` if it is ``"train"`` or ``"test"``, else raise a ValueError."""
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    return split
