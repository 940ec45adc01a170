"""Fused nearest-code search for CUDA: distance matmul + running argmin in one Triton kernel.

Euclidean scores are computed about a center ``m`` (the codebook mean on a coarse power-of-two grid, see
:func:`vqkit.search.search_center`): the codes are centered once on the host and each ``x`` tile is
centered in registers as it is loaded (in fp32, then cast back to the tile's dtype for the dot), so
embeddings that share a large offset do not cancel (bf16/fp16 tiles are centered only when the offset is
larger than the spread: there, rounding the centered values back to 8 or 11 bits would cost more than
it saves). Each program owns ``BLOCK_M`` query rows and walks
a range of codes in tiles of ``BLOCK_N``: it computes the ``BLOCK_M x BLOCK_N`` tile of ``x' . c'`` with
``tl.dot`` (fp32 accumulation; fp32 inputs in IEEE
precision, never TF32, so the choice matches the fp32 torch path; bf16/fp16 inputs on tensor cores,
whose products are exact in fp32), turns it into scores ``||c||^2 - 2 x.c`` (``-x^.c^`` for cosine),
and folds the tile's row minima into a running ``(best, index)`` pair held in registers. The ``N x K``
score matrix never reaches global memory: the kernel reads ``x`` and the codebook and writes
``N x splits`` candidates. When there are too few row blocks to fill the GPU (small ``N``, huge ``K``),
the codes are split over a second grid axis and the ``splits`` candidates per row are merged on the host
(lowest index among exact ties, like ``argmin``). Block sizes are autotuned per ``(K, D, dtype)``.

Not measured on a GPU when written (the development machine had none); ``TRITON_INTERPRET=1`` runs the
same kernel on CPU through Triton's interpreter, which is how the tests exercise it without a GPU. One
difference there: Triton 3.9's interpreter computes ``tl.dot`` on bf16 operands wrongly (it multiplies the
bit patterns), so under the interpreter bf16 tiles are upcast to fp32 before the dot (``UPCAST``); the
result is the same math, since bf16 products are exact in fp32 and the accumulation is fp32 anyway.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from ..search import search_center

__all__ = ["triton_nearest_code", "nearest_code_kernel", "AUTOTUNE_CONFIGS"]

#: the block shapes the autotuner tries (BLOCK_N is a multiple of 64 so split boundaries align).
AUTOTUNE_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_D": bd}, num_warps=w, num_stages=s)
    for bm, bn, bd, w, s in (
        (128, 128, 32, 8, 3),
        (128, 128, 64, 8, 3),
        (128, 256, 32, 8, 3),
        (128, 64, 64, 4, 4),
        (64, 128, 64, 4, 4),
        (64, 256, 32, 8, 3),
        (64, 64, 32, 4, 4),
        (256, 128, 32, 8, 3),
        (32, 128, 32, 4, 4),  # few rows (small N) / tiny D
    )
]
#: split boundaries are multiples of this (the largest BLOCK_N above).
_SPLIT_ALIGN = 256


@triton.jit
def nearest_code_kernel(
    x_ptr, c_ptr, bias_ptr, m_ptr, val_ptr, idx_ptr,
    N, K, D, stride_x, stride_c, codes_per_split, n_splits,
    n_bucket,  # unused in the body: part of the autotune key so very different N retune
    SCALE: tl.constexpr,
    CENTER: tl.constexpr,
    IEEE: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < N
    rows64 = rows.to(tl.int64)
    k_start = pid_s * codes_per_split
    k_stop = tl.minimum(k_start + codes_per_split, K)
    best = tl.full([BLOCK_M], float("inf"), tl.float32)
    best_idx = tl.zeros([BLOCK_M], dtype=tl.int64)
    for k0 in range(k_start, k_stop, BLOCK_N):
        cols = k0 + tl.arange(0, BLOCK_N)
        col_ok = cols < k_stop
        cols64 = cols.to(tl.int64)
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            dims = d0 + tl.arange(0, BLOCK_D)
            dim_ok = dims < D
            xt = tl.load(x_ptr + rows64[:, None] * stride_x + dims[None, :],
                         mask=row_ok[:, None] & dim_ok[None, :], other=0.0)
            ct = tl.load(c_ptr + cols64[None, :] * stride_c + dims[:, None],
                         mask=col_ok[None, :] & dim_ok[:, None], other=0.0)
            if CENTER:  # x' = x - m in fp32 (padding rows/dims stay 0 after the mask below)
                mt = tl.load(m_ptr + dims, mask=dim_ok, other=0.0)
                xc = xt.to(tl.float32) - mt[None, :]
                xc = tl.where(row_ok[:, None] & dim_ok[None, :], xc, 0.0)
                xt = xc.to(xt.dtype)
            if UPCAST:  # only under the interpreter, whose tl.dot mishandles bf16 (products are exact in fp32)
                xt = xt.to(tl.float32)
                ct = ct.to(tl.float32)
            if IEEE:
                acc = tl.dot(xt, ct, acc, input_precision="ieee")
            else:
                acc = tl.dot(xt, ct, acc)
        bias = tl.load(bias_ptr + cols, mask=col_ok, other=float("inf"))
        scores = bias[None, :] + SCALE * acc
        scores = tl.where(col_ok[None, :], scores, float("inf"))
        tile_best, tile_arg = tl.min(scores, axis=1, return_indices=True, return_indices_tie_break_left=True)
        better = tile_best < best  # strict: earlier tiles (lower indices) win ties
        best = tl.where(better, tile_best, best)
        best_idx = tl.where(better, tile_arg.to(tl.int64) + k0, best_idx)
    out = rows64 * n_splits + pid_s
    tl.store(val_ptr + out, best, mask=row_ok)
    tl.store(idx_ptr + out, best_idx, mask=row_ok)


_tuned_kernel = triton.autotune(configs=AUTOTUNE_CONFIGS, key=["K", "D", "n_bucket", "SCALE", "CENTER", "IEEE",
                                                             "UPCAST"])(
    nearest_code_kernel
)

#: one small config for Triton's CPU interpreter (autotuning there would only time numpy).
_INTERPRET_META = dict(BLOCK_M=32, BLOCK_N=64, BLOCK_D=32)


#: Triton decides at decoration (import) time whether kernels are interpreted.
_INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _interpreting() -> bool:
    return _INTERPRETED


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 4
    return torch.cuda.get_device_properties(device).multi_processor_count


def _operands(x: Tensor, codes: Tensor, metric: str) -> tuple[Tensor, Tensor, Tensor, Tensor, float, bool]:
    """Kernel inputs: same-dtype contiguous ``x`` and centered codes, fp32 bias ``||c'||^2``, fp32 center
    (zeros for cosine), score scale, IEEE flag."""
    if metric == "cosine":
        x = F.normalize(x.float(), dim=-1)
        codes = F.normalize(codes.float(), dim=-1)
        zeros = codes.new_zeros(codes.shape[0])
        return x.contiguous(), codes.contiguous(), zeros, codes.new_zeros(codes.shape[1]), -1.0, True
    low = (torch.float16, torch.bfloat16)
    if x.dtype == codes.dtype and x.dtype in low:
        dtype = x.dtype
    else:
        dtype = torch.float32
    center = search_center(codes.float())
    if dtype != torch.float32:
        # bf16/fp16 tiles: the centered values are rounded back to the tile dtype, which costs precision
        # when there is no offset to remove; center only when the offset dominates the spread (sync-free)
        spread = (codes.float() - center).abs().amax()
        center = torch.where(center.abs().amax() > 4.0 * spread, center, torch.zeros_like(center))
    centered = codes.float() - center
    bias = centered.pow(2).sum(1)
    return (x.to(dtype).contiguous(), centered.to(dtype).contiguous(), bias, center.contiguous(), -2.0,
            dtype == torch.float32)


def triton_nearest_code(x: Tensor, codes: Tensor, metric: str = "euclidean", *,
                        splits: int | None = None) -> tuple[Tensor, Tensor]:
    """``x (N, D)``, ``codes (K, D)`` (fp32/bf16/fp16) -> int64 indices ``(N,)``, fp32 distances ``(N,)``.

    ``splits`` forces the number of code ranges (default: enough programs for two waves over the SMs).
    """
    n, d = x.shape
    k = codes.shape[0]
    xs, cs, bias, center, scale, ieee = _operands(x, codes, metric)
    if n == 0:
        return torch.empty(0, dtype=torch.int64, device=x.device), torch.empty(0, device=x.device)
    if splits is None:
        row_blocks = math.ceil(n / 128)
        splits = max(1, min(math.ceil(2 * _num_sms(x.device) / row_blocks), math.ceil(k / 1024)))
    per_split = math.ceil(math.ceil(k / splits) / _SPLIT_ALIGN) * _SPLIT_ALIGN
    splits = math.ceil(k / per_split)
    vals = torch.empty(n, splits, dtype=torch.float32, device=x.device)
    idxs = torch.empty(n, splits, dtype=torch.int64, device=x.device)
    n_bucket = 1 << max(0, (n - 1).bit_length())
    args = (xs, cs, bias, center, vals, idxs, n, k, d, xs.stride(0), cs.stride(0), per_split, splits, n_bucket)
    centered = metric != "cosine"
    if _interpreting():
        grid = (triton.cdiv(n, _INTERPRET_META["BLOCK_M"]), splits)
        upcast = xs.dtype == torch.bfloat16  # Triton 3.9's interpreter computes bf16 tl.dot wrongly
        nearest_code_kernel[grid](*args, SCALE=scale, CENTER=centered, IEEE=ieee, UPCAST=upcast,
                                  **_INTERPRET_META)
    else:
        def grid(meta):
            return (triton.cdiv(n, meta["BLOCK_M"]), splits)

        _tuned_kernel[grid](*args, SCALE=scale, CENTER=centered, IEEE=ieee, UPCAST=False)
    if splits == 1:
        best, indices = vals[:, 0], idxs[:, 0]
    else:  # lowest index among the splits' exact ties (ranges are ordered)
        best = vals.amin(1)
        indices = torch.where(vals == best[:, None], idxs, k).amin(1)
        indices = torch.where(indices == k, idxs[:, 0], indices)
    if metric == "cosine":
        distances = (2.0 + 2.0 * best).clamp_min_(0.0)
    else:
        distances = (best + (x.float() - center).pow(2).sum(1)).clamp_min_(0.0)
    return indices, distances
