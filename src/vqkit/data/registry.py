"""Datasets by name: :func:`load_dataset`, :func:`register_dataset`, :func:`available_datasets`.

A loader is any callable ``loader(split, root, **kwargs) -> ImageDataset``. Names are case-insensitive and
``_`` is the same as ``-`` (``"Fashion_MNIST"`` is ``"fashion-mnist"``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from .base import ImageDataset
from .cifar import load_cifar10, load_cifar100
from .digits import load_digits
from .folder import load_image_folder
from .mnist import load_fashion_mnist, load_mnist
from .paths import PathLike
from .splits import check_split

__all__ = ["DatasetLoader", "available_datasets", "load_dataset", "register_dataset"]


class DatasetLoader(Protocol):
    def __call__(self, split: str, root: PathLike | None, **kwargs: Any) -> ImageDataset: ...


_REGISTRY: dict[str, DatasetLoader] = {}


def _key(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"name: expected a dataset name (str), got {type(name).__name__}")
    return name.strip().lower().replace("_", "-")


def register_dataset(
    name: str, loader: DatasetLoader | None = None, *, overwrite: bool = False
) -> Any:
    """Register ``loader`` under ``name``; without ``loader``, returns a decorator.

    Raises ValueError if ``name`` is taken, unless ``overwrite=True``.
    """
    key = _key(name)

    def add(fn: DatasetLoader) -> DatasetLoader:
        if not callable(fn):
            raise TypeError(f"loader: expected a callable, got {type(fn).__name__}")
        if key in _REGISTRY and not overwrite:
            raise ValueError(f"name: dataset {key!r} is already registered (pass overwrite=True to replace it)")
        _REGISTRY[key] = fn
        return fn

    return add if loader is None else add(loader)


def available_datasets() -> list[str]:
    """The registered dataset names, sorted."""
    return sorted(_REGISTRY)


def load_dataset(name: str, split: str = "train", root: PathLike | None = None, **kwargs: Any) -> ImageDataset:
    """Load split ``"train"`` or ``"test"`` of a registered dataset; images are float32 in ``[0, 1]`` per batch.

    Args:
        name: one of :func:`available_datasets` (``digits``, ``mnist``, ``fashion-mnist``, ``cifar10``,
            ``cifar100``, ``imagefolder`` built in).
        split: ``"train"`` or ``"test"``.
        root: where the files are (see :mod:`vqkit.data.paths`); unused by ``digits``.
        **kwargs: passed to the loader (e.g. ``image_size=`` / ``channels=`` for ``imagefolder``).

    Raises:
        ValueError: unknown ``name`` (the message lists the known ones) or ``split``.
        FileNotFoundError: the files are missing (the message lists every path tried and how to get them).
    """
    key = _key(name)
    if key not in _REGISTRY:
        raise ValueError(f"name: unknown dataset {name!r}; known datasets: {', '.join(available_datasets())}")
    check_split(split)
    return _REGISTRY[key](split, root, **kwargs)


_BUILTIN: dict[str, Callable[..., ImageDataset]] = {
    "digits": load_digits,
    "mnist": load_mnist,
    "fashion-mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "imagefolder": load_image_folder,
}
for _name, _loader in _BUILTIN.items():
    register_dataset(_name, _loader)
