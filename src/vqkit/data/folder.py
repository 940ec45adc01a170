"""A generic image folder: ``root/<class_name>/<image>`` decoded with Pillow (optional dependency).

Classes are the sub-directories of ``root`` (hidden ones skipped), sorted by name; class ``i`` is the ``i``-th.
Images are the files with a known image extension (case-insensitive), sorted by name.

Split: if ``root/train`` and ``root/test`` both exist they are the splits (classes come from
``root/train``; ``root/test`` may not have others). Otherwise the images are split with
:func:`~vqkit.data.splits.stratified_split` (``test_fraction``, ``seed``), the same on every run.

All images get the size and channel count of a reference image (the first image of the train side) unless
``image_size`` / ``channels`` are given; without ``image_size`` a differently sized image is an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .base import ImageDataset
from .errors import DatasetFormatError, DatasetNotFoundError
from .paths import PathLike
from .splits import check_split, stratified_split

__all__ = ["IMAGE_EXTENSIONS", "load_image_folder"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")
_GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F")
_HINT = (
    "arrange the images as <root>/<class_name>/<image file> (or <root>/train/<class_name>/... and "
    "<root>/test/<class_name>/...) and pass root=<root>."
)


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the 'imagefolder' dataset needs Pillow: pip install Pillow") from e
    return Image


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_in(path: Path) -> list[Path]:
    return sorted(
        p for p in path.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _scan(directory: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    """Image files under ``directory/<class>/`` and their class ids; unknown class folders are an error."""
    found = [d.name for d in _subdirs(directory)]
    extra = sorted(set(found) - set(classes))
    if extra:
        raise ValueError(f"{directory}: class folders {extra} are not in the train classes {classes}")
    files: list[Path] = []
    labels: list[int] = []
    for i, c in enumerate(classes):
        if (directory / c).is_dir():
            imgs = _images_in(directory / c)
            files += imgs
            labels += [i] * len(imgs)
    return files, labels


def _check_size(image_size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(hw) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in hw):
        raise ValueError(f"image_size: expected a positive int or (height, width), got {image_size!r}")
    return hw  # type: ignore[return-value]


def _decode(path: Path, mode: str, size_hw: tuple[int, int] | None) -> np.ndarray:
    """One image as uint8 ``(H, W)`` (mode ``"L"``) or ``(H, W, 3)`` (mode ``"RGB"``)."""
    Image = _pil()
    try:
        with Image.open(path) as im:
            im = im.convert(mode)
            if size_hw is not None and im.size != (size_hw[1], size_hw[0]):
                resample = getattr(Image, "Resampling", Image).BILINEAR
                im = im.resize((size_hw[1], size_hw[0]), resample)
            return np.asarray(im, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as e:  # UnidentifiedImageError is an OSError
        raise DatasetFormatError(f"{path}: cannot decode image ({e})") from e


def load_image_folder(
    split: str = "train",
    root: PathLike | None = None,
    *,
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> ImageDataset:
    """Load one split of an image folder as uint8 ``(N, C, H, W)``.

    Args:
        split: ``"train"`` or ``"test"``.
        root: the folder (required).
        image_size: resize every image to ``(height, width)`` (an int means square); default: keep the
            reference image's size (then all images must have it).
        channels: 1 (grayscale) or 3 (RGB); default: 1 if the reference image is grayscale, else 3.
        test_fraction, seed: the fixed split used when there are no ``train``/``test`` sub-folders.
    """
    check_split(split)
    if root is None:
        raise ValueError(f"root: the 'imagefolder' dataset needs a directory, got None; {_HINT}")
    if channels is not None and (isinstance(channels, bool) or channels not in (1, 3)):
        raise ValueError(f"channels: expected 1 (grayscale), 3 (RGB) or None (infer), got {channels!r}")
    size_hw = _check_size(image_size)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetNotFoundError("imagefolder", "the image folder", [root], _HINT)

    if (root / "train").is_dir() and (root / "test").is_dir():
        classes = [d.name for d in _subdirs(root / "train")]
        reference_files, _ = _scan(root / "train", classes)
        files, labels = _scan(root / split, classes)
    else:
        classes = [d.name for d in _subdirs(root)]
        files, labels = _scan(root, classes)
        reference_files = files
        if files:
            train_idx, test_idx = stratified_split(np.asarray(labels), test_fraction, seed)
            keep = train_idx if split == "train" else test_idx
            files, labels = [files[i] for i in keep], [labels[i] for i in keep]
    if not classes or not reference_files:
        raise DatasetNotFoundError(
            "imagefolder", f"class folders with images ({', '.join(IMAGE_EXTENSIONS)})", [root], _HINT
        )
    if not files:
        raise ValueError(f"root: the {split!r} split of {root} has no images")

    Image = _pil()
    ref = reference_files[0]
    with Image.open(ref) as im:
        ref_mode, (ref_w, ref_h) = im.mode, im.size
    if channels is None:
        channels = 1 if ref_mode in _GRAY_MODES else 3
    mode = "L" if channels == 1 else "RGB"
    height, width = size_hw if size_hw is not None else (ref_h, ref_w)

    images = np.empty((len(files), height, width, channels), dtype=np.uint8)
    for i, path in enumerate(files):
        arr = _decode(path, mode, size_hw)
        if arr.shape[:2] != (height, width):
            raise ValueError(
                f"{path}: image is {arr.shape[0]}x{arr.shape[1]} (HxW) but {ref} is {height}x{width}; "
                "pass image_size=(height, width) to resize all images"
            )
        images[i] = arr.reshape(height, width, channels)
    return ImageDataset(
        np.ascontiguousarray(images.transpose(0, 3, 1, 2)),
        np.asarray(labels, dtype=np.int64),
        num_classes=len(classes),
        name=f"imagefolder:{root.name}/{split}",
        class_names=classes,
    )
