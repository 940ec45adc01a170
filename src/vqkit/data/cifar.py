"""CIFAR-10 and CIFAR-100 from the "python version" archives (never downloaded).

Expected folders (from https://www.cs.toronto.edu/~kriz/cifar.html):

* CIFAR-10: ``cifar-10-batches-py/`` with ``data_batch_1`` .. ``data_batch_5`` (train, 50000) and ``test_batch``
  (10000), from ``cifar-10-python.tar.gz``;
* CIFAR-100: ``cifar-100-python/`` with ``train`` (50000) and ``test`` (10000), from ``cifar-100-python.tar.gz``;
  labels are the 100 fine labels.

``root`` may be that folder or the directory containing it (``$VQKIT_DATA`` is used when ``root`` is None).
The pickles are read with :func:`~vqkit.data.safe_pickle.safe_load`, which cannot run code. Images are
``(3, 32, 32)`` uint8.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .base import ImageDataset
from .errors import DatasetFormatError, DatasetNotFoundError
from .paths import ENV_VAR, PathLike, candidate_dirs
from .safe_pickle import safe_load
from .splits import check_split

__all__ = ["CIFAR10_CLASSES", "load_cifar10", "load_cifar100"]

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)


@dataclass(frozen=True)
class _CifarSpec:
    name: str
    folder: str
    archive: str
    files: dict[str, tuple[str, ...]]
    label_key: str
    num_classes: int
    meta_file: str
    meta_key: str


_CIFAR10 = _CifarSpec(
    name="cifar10",
    folder="cifar-10-batches-py",
    archive="cifar-10-python.tar.gz",
    files={"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
    label_key="labels",
    num_classes=10,
    meta_file="batches.meta",
    meta_key="label_names",
)
_CIFAR100 = _CifarSpec(
    name="cifar100",
    folder="cifar-100-python",
    archive="cifar-100-python.tar.gz",
    files={"train": ("train",), "test": ("test",)},
    label_key="fine_labels",
    num_classes=100,
    meta_file="meta",
    meta_key="fine_label_names",
)


def _str_keys(obj: Any, path: Path) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise DatasetFormatError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {k.decode("latin-1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _read_batch(path: Path, spec: _CifarSpec) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch -> uint8 images ``(n, 3, 32, 32)`` and int64 labels ``(n,)``."""
    entry = _str_keys(safe_load(path), path)
    for key in ("data", spec.label_key):
        if key not in entry:
            raise DatasetFormatError(f"{path}: missing key {key!r} (has {sorted(entry)})")
    data = entry["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetFormatError(f"{path}: 'data' must be a uint8 array (n, 3072), got {got}")
    try:
        labels = np.asarray(entry[spec.label_key], dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise DatasetFormatError(f"{path}: {spec.label_key!r} must be a list of ints ({e})") from e
    if labels.shape != (data.shape[0],):
        raise DatasetFormatError(
            f"{path}: {spec.label_key!r} has shape {labels.shape}, expected ({data.shape[0]},) to match 'data'"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise DatasetFormatError(
            f"{path}: {spec.label_key!r} values must be in [0, {spec.num_classes}), "
            f"got range [{labels.min()}, {labels.max()}]"
        )
    return data.reshape(-1, 3, 32, 32), labels


def _class_names(folder: Path, spec: _CifarSpec) -> Sequence[str] | None:
    path = folder / spec.meta_file
    if not path.is_file():
        return CIFAR10_CLASSES if spec is _CIFAR10 else None
    names = _str_keys(safe_load(path), path).get(spec.meta_key)
    if not isinstance(names, list) or len(names) != spec.num_classes:
        raise DatasetFormatError(f"{path}: {spec.meta_key!r} must be a list of {spec.num_classes} names")
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


def _load(spec: _CifarSpec, split: str, root: PathLike | None) -> ImageDataset:
    check_split(split)
    names = spec.files[split]
    dirs = candidate_dirs(root, (spec.folder,))
    for folder in dirs:
        if all((folder / n).is_file() for n in names):
            break
    else:
        hint = (
            f"download {spec.archive} from https://www.cs.toronto.edu/~kriz/cifar.html, extract it with "
            f"`tar xzf {spec.archive} -C <dir>` (creates <dir>/{spec.folder}), then pass root=<dir> or set "
            f"{ENV_VAR}=<dir> (vqkit never downloads)."
        )
        raise DatasetNotFoundError(spec.name, f"the {split!r} split ({', '.join(names)})", dirs, hint)
    batches = [_read_batch(folder / n, spec) for n in names]
    images = np.concatenate([b[0] for b in batches])  # always a fresh, writable, contiguous copy
    labels = np.concatenate([b[1] for b in batches])
    return ImageDataset(
        images, labels, num_classes=spec.num_classes, name=f"{spec.name}/{split}",
        class_names=_class_names(folder, spec),
    )


def load_cifar10(split: str = "train", root: PathLike | None = None) -> ImageDataset:
    """CIFAR-10 ``"train"`` (50000) or ``"test"`` (10000): images ``(N, 3, 32, 32)``, 10 classes."""
    return _load(_CIFAR10, split, root)


def load_cifar100(split: str = "train", root: PathLike | None = None) -> ImageDataset:
    """CIFAR-100 ``"train"`` (50000) or ``"test"`` (10000): images ``(N, 3, 32, 32)``, 100 fine classes."""
    return _load(_CIFAR100, split, root)
