"""Held-out evaluation: task metric (reconstruction MSE or accuracy) and codebook usage / perplexity
over a whole split (not per batch), sharded over ranks and summed with all-reduce.

Code usage follows the quantizer's :attr:`~vqkit.quantizers.base.Quantizer.index_layout` (codes per
index column, shared or not); :class:`CodeCounter` accumulates it batch by batch.

Residual quantizers (``forward(..., num_levels=n)``) can be evaluated with their first ``n`` levels only
(``evaluate(..., num_levels=n)``; :func:`evaluate_levels` does ``n = 1 .. L``): the bitrate ladder of one
model trained with quantize dropout.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import distributed as dist_utils
from ..data import ImageDataset
from ..metrics import MAX_HISTOGRAM_CODES, distinct_counts, perplexity
from ..quantizers.base import IndexLayout

__all__ = ["CodeCounter", "evaluate", "evaluate_levels", "EvalResult"]


class CodeCounter:
    """Held-out code counts of a quantizer with index layout ``layout``.

    Columns of up to ``MAX_HISTOGRAM_CODES`` codes are histogrammed (``counts``: ``(columns, max K)``
    float64, one row when the columns share a codebook); larger implicit codebooks keep the indices and
    count distinct values at the end. Negative indices (dropped residual levels) are not counted.
    """

    def __init__(self, layout: IndexLayout, device: torch.device | str = "cpu") -> None:
        self.layout = layout
        self.sizes = layout.sizes[:1] if layout.shared else layout.sizes
        self.dense = max(self.sizes) <= MAX_HISTOGRAM_CODES
        width = max(self.sizes)
        self.counts = torch.zeros(len(self.sizes), width, dtype=torch.float64, device=device) if self.dense else None
        self._kept: list[Tensor] = []

    def add(self, indices: Tensor) -> None:
        """Count a batch of ``indices`` (``(..., *layout.trailing)``)."""
        cols = indices.reshape(-1, self.layout.columns)
        if self.layout.shared:
            cols = cols.reshape(-1, 1)
        if not self.dense:
            self._kept.append(cols)
            return
        width = self.counts.shape[1]
        offsets = torch.arange(cols.shape[1], device=cols.device) * width
        flat = (cols + offsets)[cols >= 0]
        self.counts += torch.bincount(flat, minlength=width * cols.shape[1]).double().view(cols.shape[1], width)

    def result(self, sharded: bool = False) -> tuple[float, float]:
        """``(usage, perplexity)``: the fraction of all codes used at least once, and the mean per-column
        perplexity; summed over ranks when ``sharded`` (every rank must call)."""
        if self.dense:
            if sharded:
                dist_utils.all_reduce_sum_(self.counts)
            used = sum(int((row[:k] > 0).sum()) for row, k in zip(self.counts, self.sizes))
            return used / sum(self.sizes), float(perplexity(self.counts).mean())
        cols = torch.cat(self._kept) if self._kept else torch.zeros(0, len(self.sizes), dtype=torch.int64)
        if sharded:
            cols = dist_utils.all_gather_rows(cols.contiguous())
        used, ppl = 0, []
        for c in range(cols.shape[1]):
            counts = distinct_counts(cols[:, c], cols[:, c] >= 0)
            used += int((counts > 0).sum())
            ppl.append(float(perplexity(counts)))
        return used / sum(self.sizes), sum(ppl) / max(len(ppl), 1)


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
    num_levels: int | None = None,
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
        num_levels: call the quantizer with ``num_levels=n`` (a residual quantizer then uses its first ``n``
            levels; usage and perplexity count those levels' codes); None = the quantizer as trained.
    """
    device = torch.device(device)
    n = len(dataset) if limit <= 0 else min(limit, len(dataset))
    sharded = distributed and dist_utils.is_distributed()
    rank, world = (dist_utils.rank(), dist_utils.world_size()) if sharded else (0, 1)
    lo, hi = n * rank // world, n * (rank + 1) // world
    layout = getattr(model.quantizer, "index_layout", None)
    levels_hook = None
    if num_levels is not None:
        levels_hook = _call_with_levels(model.quantizer, num_levels)
        layout = None if layout is None else _first_levels(layout, num_levels)
    counter = CodeCounter(layout, device) if layout is not None else None
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
            if counter is not None:
                counter.add(out.quant.indices)
    finally:
        model.train(was_training)
        if levels_hook is not None:
            levels_hook.remove()
    if sharded:
        dist_utils.all_reduce_sum_(sums)
    task_name = "mse" if model.task == "reconstruction" else "accuracy"
    metrics = {task_name: float(sums[0] / sums[2].clamp_min(1)),
               "quantizer_loss": float(sums[1] / sums[3].clamp_min(1))}
    counts = None
    if counter is not None:
        metrics["usage"], metrics["perplexity"] = counter.result(sharded)
        counts = None if counter.counts is None else counter.counts.cpu()
    return EvalResult(metrics, counts)


def _call_with_levels(quantizer: nn.Module, n: int) -> torch.utils.hooks.RemovableHandle:
    """A forward pre-hook that adds ``num_levels=n`` to every call of ``quantizer`` (remove it after use)."""
    if "num_levels" not in inspect.signature(quantizer.forward).parameters:
        raise ValueError(f"num_levels: {type(quantizer).__name__} has no levels (only residual quantizers take "
                         f"num_levels)")
    total = getattr(quantizer, "num_levels", None)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= (total or n):
        raise ValueError(f"num_levels: expected an int in [1, {total}], got {n!r}")

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return args, {**kwargs, "num_levels": n}

    return quantizer.register_forward_pre_hook(hook, with_kwargs=True)


def _first_levels(layout: IndexLayout, n: int) -> IndexLayout:
    """The layout of the indices of the first ``n`` levels (the last trailing axis)."""
    sizes = torch.tensor(layout.sizes).reshape(layout.trailing)[..., :n]
    return IndexLayout((*layout.trailing[:-1], n), tuple(sizes.reshape(-1).tolist()), layout.shared)


def evaluate_levels(model: nn.Module, dataset: ImageDataset, **kwargs) -> list[EvalResult]:
    """:func:`evaluate` with the first ``n = 1 .. L`` levels of ``model.quantizer`` (a residual quantizer
    with ``num_levels = L``); entry ``n - 1`` is the result at ``n`` levels. ``kwargs`` go to :func:`evaluate`."""
    total = getattr(model.quantizer, "num_levels", None)
    if not isinstance(total, int):
        raise ValueError(f"evaluate_levels: {type(model.quantizer).__name__} has no num_levels (not a residual "
                         f"quantizer)")
    return [evaluate(model, dataset, num_levels=n, **kwargs) for n in range(1, total + 1)]
