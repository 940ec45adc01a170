"""Optional fused kernels. Nothing here is imported unless used: :mod:`vqkit.kernels.triton_search` needs
the ``triton`` package (GPU wheels ship it with CUDA builds of torch)."""

from __future__ import annotations

import functools
import importlib.util

__all__ = ["triton_importable"]


@functools.lru_cache(maxsize=1)
def triton_importable() -> bool:
    """True when ``import triton`` would succeed (checked once, without importing it)."""
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):
        return False
