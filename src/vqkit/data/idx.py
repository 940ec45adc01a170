"""Reader for the IDX file format (MNIST, Fashion-MNIST, ...), plain or gzip-compressed.

Layout: a 4-byte magic number ``0x00 0x00 <type> <ndim>``, then ``ndim`` big-endian uint32 sizes, then the
values, big-endian, row-major. Types: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
0x0E float64.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from .errors import DatasetFormatError
from .paths import PathLike

__all__ = ["read_idx"]

_IDX_TYPES: dict[int, str] = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != _GZIP_MAGIC:  # IDX starts with two zero bytes, so the two can't be confused
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DatasetFormatError(f"{path}: corrupt or truncated gzip data ({e}); re-download or reinstall it") from e


def read_idx(path: PathLike) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw, detected from the content) into a native-endian numpy array.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DatasetFormatError: bad magic number, unknown type, or a size that does not match the header.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[:2] != b"\x00\x00":
        head = raw[:4].hex() or "(empty file)"
        raise DatasetFormatError(f"{path}: not an IDX file: magic number {head}, expected 0000<type><ndim>")
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_TYPES:
        known = ", ".join(f"0x{t:02X}" for t in _IDX_TYPES)
        raise DatasetFormatError(f"{path}: unknown IDX data type 0x{type_code:02X}, expected one of {known}")
    if ndim == 0:
        raise DatasetFormatError(f"{path}: IDX header declares 0 dimensions, expected >= 1")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetFormatError(f"{path}: truncated IDX header: {len(raw)} bytes, expected >= {header}")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[type_code])
    expected = math.prod(shape) * dtype.itemsize
    given = len(raw) - header
    if given != expected:
        what = "truncated" if given < expected else "trailing bytes in"
        raise DatasetFormatError(
            f"{path}: {what} IDX file: header says shape {shape} of {dtype.name} ({expected} data bytes), "
            f"file has {given} data bytes"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=True)  # native byte order, writable
