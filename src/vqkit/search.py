"""Nearest-code search without materializing the N x K distance matrix.

Squared euclidean distance is ``||x||^2 - 2 x.c + ||c||^2``. The ``||x||^2`` term does not change the
argmin, so the search scores ``||c||^2 - 2 x.c`` and adds ``||x||^2`` to the per-row minimum at the end.
Expanded like this the terms cancel catastrophically when the vectors share a large offset (embeddings
around 1000 with spread 1: ``x.c`` ~ 1e6 in fp32 has an absolute error of ~0.1, larger than the gaps
between codes). So every score is computed about the codebook mean ``m``: the codes are centered once
(``c' = c - m``, the bias is ``||c'||^2``) and each chunk of queries is centered as it is copied into the
reused matmul buffer (``x' = x - m``), which costs one pass over ``x`` next to the ``N x K x D`` matmul.
The distance ``||x' - c'||^2`` equals ``||x - c||^2`` exactly in real arithmetic, and in floating point
its error is relative to the spread of the data, not to its offset.
Cosine distance is the squared euclidean distance between l2-normalized vectors, ``2 - 2 cos``; it is
scored as ``-x^.c^`` (so both metrics are a minimum). All distances are computed in fp32 (fp64 for fp64 inputs; autocast
is disabled inside) whatever the input dtype: bf16 distances pick a different code for a large share of
tokens, and fp16 overflows once squared norms pass 65504.

Two implementations, picked by :func:`nearest_code` (``backend="auto"``):

* **torch** (any device): rows are processed in chunks. Each chunk's ``rows x K`` fp32 score block comes
  from one fused BLAS call (``addmm`` with the code norms as the bias, or, for ``D <= 16``, one ``mm`` on
  inputs augmented with a ones column and codes with their norm column) written into a buffer that is
  allocated once and reused, so the block stays in cache and no page is faulted in per chunk. The block is
  reduced while it is still in cache by a *blocked argmin*: ``amin`` over contiguous blocks of ``B`` codes
  (a vectorized reduction, ~10x faster on CPU than ``min`` with indices), ``min`` over the ``K / B``
  block minima, and an ``argmin`` over the one winning block per row. Ties go to the lowest index exactly as
  with ``argmin``. Chunk sizes come from :func:`plan_search` (tuned on a 2-core AVX-512 CPU, see
  ``docs/performance.md``); for ``D > 16`` and for huge ``K`` the codes are split into blocks as well
  (a running ``(min, index)`` per row merges them), so the extra memory is at most ``memory_budget``
  bytes of scores for any ``N`` and ``K``, plus ``O(N)`` result vectors and ``O(K D)`` padded codes (and
  an fp32 / normalized copy of the input when it is not fp32 or the metric is cosine).
* **triton** (CUDA tensors, when ``triton`` is importable): :mod:`vqkit.kernels.triton_search` fuses the
  distance matmul with a running argmin, so the ``N x K`` matrix never reaches global memory.

Under ``torch.compile`` the search is one opaque custom op (``torch.ops.vqkit.nearest_code``): no graph
break, no unrolled chunk loop, the same kernels as in eager mode.
"""

from __future__ import annotations

import functools
import math
import os
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .dtypes import accumulation_dtype

__all__ = [
    "SearchResult",
    "SearchPlan",
    "nearest_code",
    "sample_code",
    "chunk_rows",
    "plan_search",
    "triton_available",
    "search_center",
    "DEFAULT_MEMORY_BUDGET",
    "METRICS",
    "BACKENDS",
]

METRICS = ("euclidean", "cosine")
BACKENDS = ("auto", "torch", "triton")

#: upper bound in bytes on one chunk's ``rows x codes`` fp32 score block (the search's extra memory).
DEFAULT_MEMORY_BUDGET = 32 * 2**20

#: tuned score-block sizes in bytes (see plan_search): small ``D`` / larger ``D``.
_TARGET_BLOCK_BYTES_SMALL_D = 4 * 2**20
_TARGET_BLOCK_BYTES = 8 * 2**20
#: codes per block for ``D > _AUGMENT_MAX_DIM``: more rows per BLAS call beat whole-codebook rows.
_CODE_BLOCK = 4096
#: fewest rows per chunk before the codes are split into blocks instead (BLAS needs some rows).
_MIN_ROWS = 16
#: inputs with ``D <= _AUGMENT_MAX_DIM`` get a ones column so the norms ride inside one ``mm``.
_AUGMENT_MAX_DIM = 16


class SearchResult(NamedTuple):
    """``indices``: int64 ``(...)``; ``distances``: ``(...)`` fp32 (fp64 for fp64 inputs), the squared
    distance to the chosen code."""

    indices: Tensor
    distances: Tensor


class SearchPlan(NamedTuple):
    """How the torch path walks the ``N x K`` score matrix.

    ``rows``: rows per chunk; ``code_block``: codes per block (a multiple of ``reduce_block``, or ``K``
    padded); ``reduce_block``: codes per ``amin`` block of the blocked argmin (0 = plain ``min``);
    ``padded_codes``: ``K`` rounded up to a multiple of ``reduce_block``; ``augmented``: norms folded into
    the matmul through a ones column.
    """

    rows: int
    code_block: int
    reduce_block: int
    padded_codes: int
    augmented: bool

    @property
    def block_bytes(self) -> int:
        """Bytes of the reused score buffer."""
        return 4 * self.rows * self.code_block


def chunk_rows(codebook_size: int, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> int:
    """Rows per chunk so that one ``rows x codebook_size`` fp32 block fits in ``memory_budget`` bytes."""
    return max(1, memory_budget // (4 * codebook_size))


def _reduce_block(k: int) -> int:
    if k >= 4096:
        return 256
    if k >= 256:
        return 64
    return 0


def plan_search(
    n: int,
    k: int,
    d: int,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    chunk_size: int | None = None,
    code_chunk_size: int | None = None,
) -> SearchPlan:
    """Chunking of the torch search for ``n`` queries, ``k`` codes of dimension ``d``.

    Tuned on the 2-core AVX-512 machine of ``benchmarks/results`` (1 and 2 threads): for ``d <= 16`` the
    matmul is bound by writing the score block, so whole-codebook rows in a ~4 MiB block (16 rows at
    K = 65536, 2048 at K = 512) that the reduction reads back from cache win; for larger ``d`` the matmul
    is compute-bound and MKL is fastest with more rows per call, so the codes go in blocks of 4096 with
    ~8 MiB score blocks (512 rows; 20-25% faster than whole-codebook rows at K = 65536). Never more than
    ``memory_budget`` bytes; when 16 rows of the (block of) codes exceed it, the code block shrinks.

    Args:
        n, k, d: problem size.
        memory_budget: upper bound on the score block in bytes.
        chunk_size: force the rows per chunk (then ``memory_budget`` only bounds ``code_chunk_size``'s
            default: the old, budget-only behaviour).
        code_chunk_size: force the codes per block (rounded up to the reduce block).
    """
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size: expected an int >= 1, got {chunk_size!r}")
    if code_chunk_size is not None and (isinstance(code_chunk_size, bool) or not isinstance(code_chunk_size, int)
                                        or code_chunk_size < 1):
        raise ValueError(f"code_chunk_size: expected an int >= 1, got {code_chunk_size!r}")
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, int) or memory_budget < 1:
        raise ValueError(f"memory_budget: expected an int >= 1 (bytes), got {memory_budget!r}")
    reduce = _reduce_block(k)
    kp = k if reduce == 0 else -(-k // reduce) * reduce
    unit = reduce or 1
    n1 = max(1, n)
    small_d = d <= _AUGMENT_MAX_DIM
    target = min(_TARGET_BLOCK_BYTES_SMALL_D if small_d else _TARGET_BLOCK_BYTES, memory_budget)
    if code_chunk_size is not None:
        block = min(kp, -(-code_chunk_size // unit) * unit)
    elif chunk_size is not None:
        block = kp
    else:
        block = kp if small_d else min(kp, _CODE_BLOCK)
        if 4 * _MIN_ROWS * block > memory_budget and block > unit:  # the budget forces smaller code blocks
            block = max(unit, (memory_budget // (4 * _MIN_ROWS)) // unit * unit)
    if chunk_size is not None:
        rows = chunk_size
    else:
        rows = max(_MIN_ROWS, target // (4 * block))
        rows = min(rows, max(1, memory_budget // (4 * block)))
    rows = min(rows, n1)
    return SearchPlan(rows, block, reduce, kp, d <= _AUGMENT_MAX_DIM)


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
    if x.device != codebook.device:
        raise ValueError(f"x, codebook: expected tensors on one device, got {x.device} and {codebook.device}")


# ----------------------------------------------------------------------------------------------
# torch path
# ----------------------------------------------------------------------------------------------


def _torch_search(flat: Tensor, codes: Tensor, metric: str, plan: SearchPlan) -> tuple[Tensor, Tensor]:
    """``flat (N, D)``, ``codes (K, D)`` of one float dtype (fp32 or fp64) -> int64 indices, distances in
    that dtype (no autograd)."""
    n, d = flat.shape
    k = codes.shape[0]
    dev, dt = flat.device, flat.dtype
    rows, block, reduce, kp, augmented = plan
    if metric == "cosine":  # unit vectors: nothing to cancel, no centering
        flat = F.normalize(flat, dim=-1)
        codes = F.normalize(codes, dim=-1)
        center = None
        scale, bias = -1.0, torch.zeros(k, dtype=dt, device=dev)
    else:
        center = search_center(codes)
        codes = codes - center
        scale, bias = -2.0, codes.pow(2).sum(1)
    if kp > k:  # padded codes score +inf and never win
        codes = torch.cat([codes, codes.new_zeros(kp - k, d)])
        bias = torch.cat([bias, bias.new_full((kp - k,), math.inf)])
    if augmented:
        # one mm on [x', 1] . [scale * c', bias]^T: the bias costs no separate pass over the block
        weights = torch.cat([codes * scale, bias[:, None]], dim=1)
        xbuf = torch.ones(rows, d + 1, dtype=dt, device=dev)
    else:
        weights = codes
        xbuf = torch.empty(rows, d, dtype=dt, device=dev) if center is not None else None

    indices = torch.empty(n, dtype=torch.int64, device=dev)
    best = torch.empty(n, dtype=dt, device=dev)
    sqnorm = torch.empty(n, dtype=dt, device=dev) if center is not None else None
    scores = torch.empty(rows * block, dtype=dt, device=dev)
    if reduce:
        nb_max = block // reduce
        block_min = torch.empty(rows * nb_max, dtype=dt, device=dev)
        which = torch.empty(rows, dtype=torch.int64, device=dev)
        offsets = torch.arange(rows, dtype=torch.int64, device=dev) * nb_max
        cand = torch.empty(rows, reduce, dtype=dt, device=dev)
        within = torch.empty(rows, dtype=torch.int64, device=dev)
    if block < kp:
        part_val = torch.empty(rows, dtype=dt, device=dev)
        part_idx = torch.empty(rows, dtype=torch.int64, device=dev)
        better = torch.empty(rows, dtype=torch.bool, device=dev)

    for start in range(0, n, rows):
        stop = min(start + rows, n)
        r = stop - start
        if augmented:
            xb = xbuf[:r, :d]
            if center is None:
                xb.copy_(flat[start:stop])
            else:
                torch.sub(flat[start:stop], center, out=xb)
            lhs = xbuf[:r]
        elif center is not None:
            xb = lhs = xbuf[:r]
            torch.sub(flat[start:stop], center, out=xb)
        else:
            lhs = flat[start:stop]
        if sqnorm is not None:  # ||x'||^2 of the centered rows, while they are in cache
            torch.linalg.vector_norm(xb, dim=1, out=sqnorm[start:stop]).square_()
        for k0 in range(0, kp, block):
            k1 = min(k0 + block, kp)
            w = k1 - k0
            sc = scores[: r * w].view(r, w)
            if augmented:
                torch.mm(lhs, weights[k0:k1].t(), out=sc)
            else:
                torch.addmm(bias[k0:k1], lhs, weights[k0:k1].t(), beta=1.0, alpha=scale, out=sc)
            first = k0 == 0
            val = best[start:stop] if first else part_val[:r]
            idx = indices[start:stop] if first else part_idx[:r]
            if reduce:
                nb = w // reduce
                bm = block_min[: r * nb].view(r, nb)
                torch.amin(sc.view(r, nb, reduce), dim=2, out=bm)
                j = which[:r]
                torch.min(bm, dim=1, out=(val, j))
                # the winning block of each row: rows of the (r * nb, reduce) view
                rows_of_blocks = torch.add(j, offsets[:r] if nb == nb_max else offsets[:r] // nb_max * nb)
                c = cand[:r]
                torch.index_select(sc.view(r * nb, reduce), 0, rows_of_blocks, out=c)
                torch.argmin(c, dim=1, out=within[:r])
                torch.add(within[:r], j, alpha=reduce, out=idx)
            else:
                torch.min(sc, dim=1, out=(val, idx))
            if not first:  # strict < keeps the earlier (lower) index on ties
                b = better[:r]
                torch.lt(val, best[start:stop], out=b)
                idx.add_(k0)
                torch.where(b, idx, indices[start:stop], out=indices[start:stop])
                torch.where(b, val, best[start:stop], out=best[start:stop])
    if metric == "cosine":
        distances = best.mul_(2.0).add_(2.0).clamp_min_(0.0)
    else:
        distances = best.add_(sqnorm).clamp_min_(0.0)
    return indices, distances


# ----------------------------------------------------------------------------------------------
# dispatch
# ----------------------------------------------------------------------------------------------


def triton_available() -> bool:
    """True when the fused Triton kernel can run: CUDA present (or Triton's CPU interpreter switched on
    with ``TRITON_INTERPRET=1``) and :mod:`vqkit.kernels.triton_search` importable (``triton`` installed)."""
    if not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") == "1"):
        return False
    return _triton_kernel_importable()


@functools.lru_cache(maxsize=1)
def _triton_kernel_importable() -> bool:
    from .kernels import triton_importable

    if not triton_importable():
        return False
    try:
        from .kernels import triton_search  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken triton install: fall back to the torch path
        return False
    return True


def _use_triton(x: Tensor, backend: str) -> bool:
    if backend == "torch":
        return False
    if backend == "triton":
        return True
    # the kernel computes in fp32: fp64 inputs keep the fp64 torch path
    return x.device.type == "cuda" and x.dtype != torch.float64 and triton_available()


def search_center(codes: Tensor) -> Tensor:
    """The point euclidean scores are computed about: the codebook mean ``(D,)``, rounded to a power-of-two
    grid 64x finer than the codes' spread, in ``codes``' dtype.

    The rounding keeps the centering exact for data on coarse grids (so exact ties stay exact ties and go
    to the lowest index) while still removing the offset down to a fraction of the spread. A non-finite
    codebook gives the zero center.
    """
    c = codes.detach()
    mean = c.mean(0)  # in the codes' dtype (>= fp32 here): the grid rounding below absorbs its error
    spread = (c - mean).abs().amax()
    # sync-free: grid = 2^(floor(log2(spread)) - 6); spread 0 keeps the mean; non-finite -> 0
    grid = torch.exp2(torch.floor(torch.log2(spread)) - 6.0)
    rounded = torch.where(spread > 0, torch.round(mean / grid) * grid, mean)
    ok = torch.isfinite(rounded).all()
    return torch.where(ok, rounded, torch.zeros_like(rounded))


def _search_flat(flat: Tensor, codes: Tensor, metric: str, backend: str, chunk_size: int | None,
                 code_chunk_size: int | None, memory_budget: int) -> tuple[Tensor, Tensor]:
    """Search on ``(N, D)`` rows of any floating dtype; no autograd, autocast off."""
    if _use_triton(flat, backend):
        from .kernels.triton_search import triton_nearest_code

        return triton_nearest_code(flat, codes, metric)
    dt = accumulation_dtype(flat, codes)
    flat = flat.to(dt).contiguous()
    codes = codes.to(dt).contiguous()
    plan = plan_search(flat.shape[0], codes.shape[0], flat.shape[1], memory_budget, chunk_size, code_chunk_size)
    return _torch_search(flat, codes, metric, plan)


@torch.library.custom_op("vqkit::nearest_code", mutates_args=())
def _nearest_code_op(x: Tensor, codebook: Tensor, metric: str, backend: str, chunk_size: int,
                     code_chunk_size: int, memory_budget: int) -> tuple[Tensor, Tensor]:
    """The search as one opaque op for ``torch.compile`` (0 = automatic chunk sizes)."""
    with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
        return _search_flat(x, codebook, metric, backend, chunk_size or None, code_chunk_size or None,
                            memory_budget)


@_nearest_code_op.register_fake
def _nearest_code_fake(x: Tensor, codebook: Tensor, metric: str, backend: str, chunk_size: int,
                       code_chunk_size: int, memory_budget: int) -> tuple[Tensor, Tensor]:
    n = x.shape[0]
    return x.new_empty((n,), dtype=torch.int64), x.new_empty((n,), dtype=accumulation_dtype(x, codebook))


def nearest_code(
    x: Tensor,
    codebook: Tensor,
    metric: str = "euclidean",
    *,
    chunk_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    code_chunk_size: int | None = None,
    backend: str = "auto",
) -> SearchResult:
    """Index of (and distance to) the nearest code for every vector.

    Args:
        x: ``(..., D)`` query vectors, any floating dtype.
        codebook: ``(K, D)`` code vectors.
        metric: ``"euclidean"`` (squared L2) or ``"cosine"`` (``2 - 2 cos``, i.e. squared L2 between
            normalized vectors).
        chunk_size: rows per chunk (torch path); default from :func:`plan_search`.
        memory_budget: upper bound in bytes on one chunk's fp32 score block (torch path).
        code_chunk_size: codes per block (torch path); default: all codes unless the budget forces a split.
        backend: ``"auto"`` (Triton on CUDA tensors when importable, torch elsewhere), ``"torch"`` or
            ``"triton"`` (CUDA, or CPU under ``TRITON_INTERPRET=1``).
    Returns:
        :class:`SearchResult` with int64 ``indices`` ``(...)`` and ``distances`` ``(...)`` (fp32, or fp64
        when ``x`` or ``codebook`` is fp64).
        Ties go to the lowest index, as with ``argmin``.
    """
    _check(x, codebook, metric)
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    if backend == "triton" and not triton_available():
        raise RuntimeError("backend='triton': needs the triton package and a CUDA device "
                           "(or TRITON_INTERPRET=1 for Triton's CPU interpreter)")
    # validates chunk arguments eagerly, with the argument names in the message
    plan_search(1, codebook.shape[0], codebook.shape[1], memory_budget, chunk_size, code_chunk_size)
    lead = x.shape[:-1]
    flat = x.detach().reshape(-1, x.shape[-1])
    codes = codebook.detach()
    if torch.compiler.is_compiling():
        indices, distances = _nearest_code_op(flat, codes, metric, backend, chunk_size or 0, code_chunk_size or 0,
                                              memory_budget)
    else:
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            indices, distances = _search_flat(flat, codes, metric, backend, chunk_size, code_chunk_size,
                                              memory_budget)
    return SearchResult(indices.reshape(lead), distances.reshape(lead))


def sample_code(
    x: Tensor,
    codebook: Tensor,
    temperature: float,
    metric: str = "euclidean",
    *,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> Tensor:
    """Draw a code per vector from ``softmax_k(-d(x, c_k) / temperature)`` (the Gumbel-max trick).

    ``argmax_k(-d_k / temperature + g_k)`` with ``g_k ~ Gumbel(0, 1)`` from the global RNG is an exact
    sample; the distances are computed as in :func:`nearest_code` (about the codebook mean, in >= fp32) in
    row chunks of at most ``memory_budget`` bytes, never ``N x K`` at once. As ``temperature -> 0`` it
    becomes the nearest code.

    Args:
        x: ``(..., D)``; codebook: ``(K, D)``; temperature: > 0.
        metric: ``"euclidean"`` or ``"cosine"``.
    Returns:
        int64 indices ``(...)`` (no autograd).
    """
    _check(x, codebook, metric)
    if not temperature > 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature: expected a finite float > 0, got {temperature!r}")
    lead = x.shape[:-1]
    with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
        dt = accumulation_dtype(x, codebook)
        flat = x.detach().reshape(-1, x.shape[-1]).to(dt)
        codes = codebook.detach().to(dt)
        if metric == "cosine":
            flat, codes = F.normalize(flat, dim=-1), F.normalize(codes, dim=-1)
            bias = codes.new_full((codes.shape[0],), 2.0)  # d = 2 - 2 x.c
            scale = -2.0
        else:
            center = search_center(codes)
            codes = codes - center
            bias, scale = codes.pow(2).sum(1), -2.0
        rows = chunk_rows(4 * codes.shape[0], memory_budget)  # distances, uniforms and their logs per chunk
        out = torch.empty(flat.shape[0], dtype=torch.int64, device=flat.device)
        for s in range(0, flat.shape[0], rows):
            xc = flat[s:s + rows] if metric == "cosine" else flat[s:s + rows] - center
            d = torch.addmm(bias, xc, codes.t(), alpha=scale)
            if metric != "cosine":
                d += xc.pow(2).sum(1, keepdim=True)
            u = torch.rand_like(d).clamp_(min=torch.finfo(dt).tiny)
            out[s:s + rows] = (-d / temperature - torch.log(-torch.log(u))).argmax(1)
    return out.reshape(lead)
