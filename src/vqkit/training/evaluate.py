"""Held-out evaluation: task metric (reconstruction MSE or accuracy) and codebook usage / perplexity
over a whole split (not per batch), sharded over ranks and summed with all-reduce.

Code usage needs to know how a quantizer's indices map to codebooks: :func:`code_space` gives, per
index column (the trailing axis of grouped / residual / multi-codebook indices), the number of codes.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import distributed as dist_utils
from ..data import ImageDataset
from ..quantizers.vector import GroupedVectorQuantizer, ResidualVectorQuantizer

__all__ = ["CodeSpace", "code_space", "index_counts", "usage_and_perplexity", "evaluate", "EvalResult"]

MAX_EVAL_CODES = 2**20  # larger implicit codebooks (FSQ, latent) are not histogrammed


@dataclass(frozen=True)
class CodeSpace:
    """``sizes``: codes available to each index column; ``trailing``: indices carry a trailing column
    axis; ``shared``: all columns index one codebook (usage is then pooled over columns)."""

    sizes: tuple[int, ...]
    trailing: bool
    shared: bool = False


def code_space(quantizer: nn.Module) -> CodeSpace | None:
    """How the indices of ``quantizer`` map to codes; None if unknown or too large to histogram."""
    if isinstance(quantizer, GroupedVectorQuantizer):
        k = quantizer.quantizers[0].codebook_size
        return CodeSpace((k,) * quantizer.groups, True, quantizer.shared_codebook)
    if isinstance(quantizer, ResidualVectorQuantizer):
        k = quantizer.levels[0].codebook_size
        return CodeSpace((k,) * quantizer.num_levels, True, quantizer.shared_codebook)
    name = type(quantizer).__name__
    if name == "FSQ":
        if quantizer.codebook_size > MAX_EVAL_CODES:
            return None
        g = quantizer.num_codebooks
        return CodeSpace((quantizer.codebook_size,) * g, g > 1)
    if name == "LatentQuantizer":
        if quantizer.index_mode == "per_dim":
            return CodeSpace(tuple(quantizer.radices), True)
        return None if quantizer.codebook_size > MAX_EVAL_CODES else CodeSpace((quantizer.codebook_size,), False)
    k = getattr(quantizer, "codebook_size", None)
    if isinstance(k, int) and 0 < k <= MAX_EVAL_CODES:
        return CodeSpace((k,), False)
    return None


def index_counts(indices: Tensor, space: CodeSpace) -> Tensor:
    """Histogram ``(columns, max size)`` float64 of ``indices`` (one row when ``shared``)."""
    cols = indices.reshape(-1, len(space.sizes)) if space.trailing else indices.reshape(-1, 1)
    width = max(space.sizes)
    if space.shared:
        return torch.bincount(cols.reshape(-1), minlength=width).double()[None]
    offsets = torch.arange(cols.shape[1], device=cols.device) * width
    flat = (cols + offsets).reshape(-1)
    return torch.bincount(flat, minlength=width * cols.shape[1]).double().view(cols.shape[1], width)


def usage_and_perplexity(counts: Tensor, space: CodeSpace) -> tuple[float, float]:
    """Fraction of codes used at least once (over all columns) and mean per-column perplexity."""
    sizes = (space.sizes[0],) if space.shared else space.sizes
    used = sum(int((row[:k] > 0).sum()) for row, k in zip(counts, sizes))
    total = counts.sum(1, keepdim=True).clamp_min(1e-12)
    p = counts / total
    ppl = torch.exp(-(p * p.clamp_min(1e-300).log()).sum(1))
    return used / sum(sizes), float(ppl.mean())


@dataclass
class EvalResult:
    """``metrics``: task metric (``mse`` or ``accuracy``), ``loss`` (task), ``quantizer_loss``, ``usage``,
    ``perplexity``; ``counts``: the code histogram ``(columns, K)`` (None when not available)."""

    metrics: dict[str, float]
    counts: Tensor | None


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: ImageDataset,
    *,
    batch_size: int = 1000,
    device: torch.device | str = "cpu",
    limit: int = 0,
    bf16: bool = False,
    distributed: bool = True,
) -> EvalResult:
    """Evaluate ``model`` (unwrapped, put in eval mode for the call) on ``dataset``.

    Under torch.distributed each rank evaluates a contiguous shard and the sums are all-reduced, so
    every rank returns the same result; every rank must call this.

    Args:
        model: a :class:`~vqkit.models.QuantizedModel`.
        dataset: the held-out split.
        batch_size: evaluation batch.
        device: where to run.
        limit: evaluate only the first ``limit`` examples (0 = all).
        bf16: run the forward under bfloat16 autocast.
        distributed: shard over ranks when a process group is initialized (every rank must call);
            False evaluates the whole split in this process only, without collectives.
    """
    device = torch.device(device)
    n = len(dataset) if limit <= 0 else min(limit, len(dataset))
    sharded = distributed and dist_utils.is_distributed()
    rank, world = (dist_utils.rank(), dist_utils.world_size()) if sharded else (0, 1)
    lo, hi = n * rank // world, n * (rank + 1) // world
    space = code_space(model.quantizer)
    counts = None
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # task sum, quantizer loss sum, items, examples
    was_training = model.training
    model.eval()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    try:
        for start in range(lo, hi, batch_size):
            idx = torch.arange(start, min(start + batch_size, hi))
            x, y = dataset.get_batch(idx, device)
            with autocast:
                out = model(x)
            pred = out.output.float()
            if model.task == "reconstruction":
                sums[0] += F.mse_loss(pred, x, reduction="sum").double()
                sums[2] += x.numel()
            else:
                sums[0] += (pred.argmax(1) == y).sum().double()
                sums[2] += y.numel()
            sums[1] += out.quant.loss.double() * x.shape[0]
            sums[3] += x.shape[0]
            if space is not None:
                c = index_counts(out.quant.indices, space)
                counts = c if counts is None else counts + c
    finally:
        model.train(was_training)
    if space is not None:
        if counts is None:
            width = max(space.sizes)
            counts = torch.zeros(1 if space.shared else len(space.sizes), width, dtype=torch.float64, device=device)
        if sharded:
            dist_utils.all_reduce_sum_(counts)
    if sharded:
        dist_utils.all_reduce_sum_(sums)
    task_name = "mse" if model.task == "reconstruction" else "accuracy"
    metrics = {task_name: float(sums[0] / sums[2].clamp_min(1)),
               "quantizer_loss": float(sums[1] / sums[3].clamp_min(1))}
    if space is not None:
        metrics["usage"], metrics["perplexity"] = usage_and_perplexity(counts, space)
    return EvalResult(metrics, None if counts is None else counts.cpu())
