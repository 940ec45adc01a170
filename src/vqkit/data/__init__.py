"""Datasets for vqkit: small in-memory image datasets, loaded from local files only (never downloaded).

Every loader returns an :class:`ImageDataset`: uint8 ``(N, C, H, W)`` images in memory, served as float32
in ``[0, 1]`` (no mean/std normalization), int64 labels. Use :func:`load_dataset` by name:

======================  ==========================================================================
``digits``              scikit-learn's bundled 8x8 digits (default; 1437 train / 360 test, fixed split)
``fashion-mnist``       IDX files; default ``/usr/share/datasets/fashion-mnist``
                        (``apt-get install dataset-fashion-mnist``)
``mnist``               IDX files; needs ``root=`` or ``$VQKIT_DATA``
``cifar10``/``cifar100`` python-pickle folders, read without running code; need ``root=`` or ``$VQKIT_DATA``
``imagefolder``         ``root/<class>/<image>`` via Pillow; ``image_size=``, ``channels=``
======================  ==========================================================================

``$VQKIT_DATA`` (one or more directories, ``os.pathsep``-separated) is searched when ``root`` is None.
New datasets: :func:`register_dataset`.
"""

from .base import ImageDataset
from .cifar import load_cifar10, load_cifar100
from .digits import load_digits
from .errors import DatasetFormatError, DatasetNotFoundError
from .folder import load_image_folder
from .idx import read_idx
from .mnist import load_fashion_mnist, load_mnist
from .paths import ENV_VAR
from .registry import DatasetLoader, available_datasets, load_dataset, register_dataset
from .safe_pickle import RestrictedUnpickler, safe_load
from .splits import stratified_split

__all__ = [
    "ENV_VAR",
    "DatasetFormatError",
    "DatasetLoader",
    "DatasetNotFoundError",
    "ImageDataset",
    "RestrictedUnpickler",
    "available_datasets",
    "load_cifar10",
    "load_cifar100",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_image_folder",
    "load_mnist",
    "read_idx",
    "register_dataset",
    "safe_load",
    "stratified_split",
]
