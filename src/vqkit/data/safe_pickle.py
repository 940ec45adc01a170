"""Loading pickled dataset files (CIFAR) without letting them run code.

A pickle can call any importable function while loading. :class:`RestrictedUnpickler` resolves globals
from a fixed allow-list (the numpy array/dtype reconstructors, and latin-1 ``_codecs.encode`` that protocol-2
pickles use for ``bytes``) without importing anything by name, and rejects every other global with a
:class:`pickle.UnpicklingError`. Containers, numbers, strings and bytes need no globals.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .paths import PathLike

__all__ = ["RestrictedUnpickler", "safe_load"]

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` restricted to the text encodings pickle uses for bytes objects."""
    if codecs.lookup(encoding).name not in ("latin-1", "iso8859-1", "utf-8", "ascii"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return codecs.encode(text, encoding, errors)


_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}
for _mod in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_mod}.multiarray", "_reconstruct")] = _multiarray._reconstruct
    _ALLOWED[(f"{_mod}.multiarray", "scalar")] = _multiarray.scalar
    _ALLOWED[(f"{_mod}.numeric", "_frombuffer")] = _numeric._frombuffer


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that only resolves the allow-listed globals above (``encoding="bytes"`` by default)."""

    def __init__(self, file: BinaryIO, *, encoding: str = "bytes") -> None:
        super().__init__(file, encoding=encoding)

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"global {module}.{name} is not allowed in a dataset pickle (allowed: numpy arrays, dtypes, "
                "builtin containers); refusing to load a file that could run code"
            ) from None


def safe_load(path: PathLike) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler` (Python-2 strings come back as ``bytes``)."""
    with open(Path(path), "rb") as f:
        return RestrictedUnpickler(f).load()
