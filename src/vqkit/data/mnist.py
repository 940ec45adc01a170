"""MNIST and Fashion-MNIST from their IDX files (never downloaded).

Each split needs two files in one directory, plain or ``.gz``: ``train-images-idx3-ubyte`` +
``train-labels-idx1-ubyte`` (60000 images) and ``t10k-images-idx3-ubyte`` + ``t10k-labels-idx1-ubyte``
(10000 images); the ``train-images.idx3-ubyte`` spelling is accepted too. Images are ``(1, 28, 28)`` uint8.

Where they are looked for (see :mod:`vqkit.data.paths`): ``root`` if given, else ``$VQKIT_DATA``, else the
default directory (Fashion-MNIST: ``/usr/share/datasets/fashion-mnist``, from the Debian package
``dataset-fashion-mnist``; MNIST has none); each also with the usual sub-folders (``fashion-mnist``,
``mnist``, torchvision's ``FashionMNIST/raw`` and ``MNIST/raw``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .base import ImageDataset
from .errors import DatasetFormatError, DatasetNotFoundError
from .idx import read_idx
from .paths import ENV_VAR, PathLike, candidate_dirs
from .splits import check_split

__all__ = ["FASHION_MNIST_DIR", "load_fashion_mnist", "load_mnist"]

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_ROOT_HINT = f"pass root=<that directory> or set {ENV_VAR}=<that directory>"


@dataclass(frozen=True)
class _IdxDataset:
    name: str
    subdirs: tuple[str, ...]
    defaults: tuple[str, ...]
    class_names: tuple[str, ...]
    hint: str


_MNIST = _IdxDataset(
    name="mnist",
    subdirs=("mnist", "MNIST/raw"),
    defaults=(),
    class_names=tuple(str(i) for i in range(10)),
    hint="put the four MNIST files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
    "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz; .gz or uncompressed) in one directory and "
    f"{_ROOT_HINT} (vqkit never downloads).",
)
_FASHION = _IdxDataset(
    name="fashion-mnist",
    subdirs=("fashion-mnist", "fashion_mnist", "FashionMNIST/raw"),
    defaults=(FASHION_MNIST_DIR,),
    class_names=(
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ),
    hint=f"apt-get install dataset-fashion-mnist (installs the files into {FASHION_MNIST_DIR}), or put the four "
    f"Fashion-MNIST IDX files (.gz or uncompressed) in one directory and {_ROOT_HINT} (vqkit never downloads).",
)


def _find_file(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem.replace("-idx", ".idx")):
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _load(spec: _IdxDataset, split: str, root: PathLike | None) -> ImageDataset:
    check_split(split)
    image_stem, label_stem = _FILES[split]
    dirs = candidate_dirs(root, spec.subdirs, spec.defaults)
    for d in dirs:
        image_path, label_path = _find_file(d, image_stem), _find_file(d, label_stem)
        if image_path is not None and label_path is not None:
            break
    else:
        wanted = f"the {split!r} split ({image_stem}[.gz] and {label_stem}[.gz], in the same directory)"
        raise DatasetNotFoundError(spec.name, wanted, dirs, spec.hint)
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DatasetFormatError(f"{image_path}: expected uint8 images (N, H, W), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DatasetFormatError(f"{label_path}: expected uint8 labels (N,), got {labels.dtype} {labels.shape}")
    if labels.shape[0] != images.shape[0]:
        raise DatasetFormatError(
            f"{label_path}: {labels.shape[0]} labels, but {image_path} has {images.shape[0]} images"
        )
    num_classes = len(spec.class_names)
    if labels.size and int(labels.max()) >= num_classes:
        raise DatasetFormatError(f"{label_path}: label {int(labels.max())} out of range [0, {num_classes})")
    return ImageDataset(
        images[:, None],
        labels.astype(np.int64),
        num_classes=num_classes,
        name=f"{spec.name}/{split}",
        class_names=spec.class_names,
    )


def load_mnist(split: str = "train", root: PathLike | None = None) -> ImageDataset:
    """MNIST ``"train"`` (60000) or ``"test"`` (10000): images ``(N, 1, 28, 28)``, 10 classes.

    No default location: give ``root`` or set ``$VQKIT_DATA``.
    """
    return _load(_MNIST, split, root)


def load_fashion_mnist(split: str = "train", root: PathLike | None = None) -> ImageDataset:
    """Fashion-MNIST ``"train"`` (60000) or ``"test"`` (10000): images ``(N, 1, 28, 28)``, 10 classes.

    Default location ``/usr/share/datasets/fashion-mnist`` (``apt-get install dataset-fashion-mnist``).
    """
    return _load(_FASHION, split, root)
