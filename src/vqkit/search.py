"""Nearest-code search without materializing the N x K distance matrix.

Squared euclidean distance is ``||x||^2 - 2 x.c + ||c||^2``. The ``||x||^2`` term does not change the
argmin, so each chunk of rows computes only ``||c||^2 - 2 x C^T`` with one fused ``addmm`` and reduces it
with ``min`` while it is still in cache; ``||x||^2`` is added to the per-row minimum afterwards. Peak extra
memory is one ``chunk x K`` fp32 block, chosen from a byte budget, independent of N. Cosine distance is
the squared euclidean distance between l2-normalized vectors, ``2 - 2 cos``, found by an argmax of the
normalized inner products. All distances are computed in fp32 (autocast is disabled inside), whatever the
input dtype: bf16 distances pick a different code for a large share of tokens, and fp16 overflows once
squared norms pass 65504.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["SearchResult", "nearest_code", "chunk_rows", "DEFAULT_MEMORY_BUDGET", "METRICS"]

METRICS = ("euclidean", "cosine")

#: bytes allowed for one chunk's ``chunk x K`` fp32 score block.
DEFAULT_MEMORY_BUDGET = 32 * 2**20


class SearchResult(NamedTuple):
    """``indices``: int64 ``(...)``; ``distances``: fp32 ``(...)``, the distance to the chosen code."""

    indices: Tensor
    distances: Tensor


def chunk_rows(codebook_size: int, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> int:
    """Rows per chunk so that one ``rows x codebook_size`` fp32 block fits in ``memory_budget`` bytes."""
    return max(1, memory_budget // (4 * codebook_size))


def _check(x: Tensor, codebook: Tensor, metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric: expected one of {METRICS}, got {metric!r}")
    if not isinstance(codebook, Tensor) or codebook.ndim != 2 or codebook.shape[0] < 1:
        shape = tuple(codebook.shape) if isinstance(codebook, Tensor) else type(codebook).__name__
        raise ValueError(f"codebook: expected a (K, D) tensor with K >= 1, got {shape}")
    if not isinstance(x, Tensor) or x.ndim < 1 or x.shape[-1] != codebook.shape[1]:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x: expected shape (..., {codebook.shape[1]}) to match codebook (K, D), got {shape}")
    if not x.is_floating_point() or not codebook.is_floating_point():
        raise TypeError(f"x, codebook: expected floating-point tensors, got {x.dtype} and {codebook.dtype}")


def nearest_code(
    x: Tensor,
    codebook: Tensor,
    metric: str = "euclidean",
    *,
    chunk_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> SearchResult:
    """Index of (and distance to) the nearest code for every vector.

    Args:
        x: ``(..., D)`` query vectors, any floating dtype.
        codebook: ``(K, D)`` code vectors.
        metric: ``"euclidean"`` (squared L2) or ``"cosine"`` (``2 - 2 cos``, i.e. squared L2 between
            normalized vectors).
        chunk_size: rows per chunk; default from ``memory_budget``.
        memory_budget: bytes for one ``chunk x K`` fp32 score block.
    Returns:
        :class:`SearchResult` with int64 ``indices`` ``(...)`` and fp32 ``distances`` ``(...)``.
        Ties go to the lowest index, as with ``argmin``.
    """
    _check(x, codebook, metric)
    lead = x.shape[:-1]
    with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
        flat = x.detach().reshape(-1, x.shape[-1]).float()
        codes = codebook.detach().float()
        n, k = flat.shape[0], codes.shape[0]
        rows = chunk_size if chunk_size is not None else chunk_rows(k, memory_budget)
        if rows < 1:
            raise ValueError(f"chunk_size: expected an int >= 1, got {rows}")
        indices = torch.empty(n, dtype=torch.int64, device=x.device)
        best = torch.empty(n, dtype=torch.float32, device=x.device)
        if metric == "euclidean":
            codes_t = codes.t()
            code_sq = codes.pow(2).sum(1)
            for start in range(0, n, rows):
                stop = min(start + rows, n)
                scores = torch.addmm(code_sq, flat[start:stop], codes_t, beta=1.0, alpha=-2.0)
                torch.min(scores, dim=1, out=(best[start:stop], indices[start:stop]))
            distances = (best + flat.pow(2).sum(1)).clamp_min_(0.0)
        else:
            flat = F.normalize(flat, dim=-1)
            codes_t = F.normalize(codes, dim=-1).t()
            for start in range(0, n, rows):
                stop = min(start + rows, n)
                scores = flat[start:stop] @ codes_t
                torch.max(scores, dim=1, out=(best[start:stop], indices[start:stop]))
            distances = (2.0 - 2.0 * best).clamp_min_(0.0)
    return SearchResult(indices.reshape(lead), distances.reshape(lead))
