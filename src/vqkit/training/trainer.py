"""The training loop behind ``vqkit train``.

:func:`train` runs a :class:`~vqkit.training.recipe.Recipe` into a run directory::

    <run>/recipe.toml       the resolved recipe (what ``--resume`` continues)
    <run>/metrics.jsonl     per-step train records and held-out ("test") records
    <run>/checkpoints/      safetensors + JSON checkpoints (see :mod:`vqkit.training.checkpoint`)
    <run>/run.json          summary: final held-out metrics, wall time, world size, versions
    <run>/report.md         written at the end when ``log.report`` (see :mod:`vqkit.training.report`)

Loss = task loss (MSE or cross-entropy) + ``quantizer.loss_weight`` x the quantizer's loss. Data order,
model init and every random choice of the quantizers derive from ``seed``; a run resumed from a
checkpoint (``resume=True``) on CPU ends bit-identical to an uninterrupted one (parameters, buffers,
optimizer state and ``metrics.jsonl``).

Under ``torchrun`` (``WORLD_SIZE > 1``) the model is wrapped in DistributedDataParallel, every rank takes
a contiguous ``batch_size / world_size`` slice of each global batch (DDP averages the gradients, so the
update matches single-process training on the global batch up to batch-statistics layers), train
metrics are averaged over ranks, evaluation is sharded and all-reduced, and only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..data import ImageDataset, load_dataset
from ..models import build_model
from ..models.base import QuantizedModel
from . import parallel
from .checkpoint import CHECKPOINT_DIR, latest_checkpoint, load_checkpoint, save_checkpoint
from .evaluate import evaluate
from .logging import METRICS_FILE, MetricLogger
from .objective import task_loss
from .optim import build_optimizer, lr_at
from .recipe import Recipe, to_toml
from .sampling import BatchStream

__all__ = ["train", "RunResult", "build_from_recipe", "load_datasets", "RECIPE_FILE", "SUMMARY_FILE"]

RECIPE_FILE = "recipe.toml"
SUMMARY_FILE = "run.json"


@dataclass
class RunResult:
    """``run_dir``; ``step`` reached; ``final``: held-out metrics at the end; ``wall_time_s`` of this call."""

    run_dir: Path
    step: int
    final: dict[str, float]
    wall_time_s: float


def load_datasets(recipe: Recipe) -> tuple[ImageDataset, ImageDataset]:
    """The train and test splits of ``recipe.data`` (``root = ""`` means the loader's default)."""
    root = recipe.data.root or None
    return (load_dataset(recipe.data.dataset, "train", root), load_dataset(recipe.data.dataset, "test", root))


def build_from_recipe(recipe: Recipe, dataset: ImageDataset) -> QuantizedModel:
    """The recipe's model (with its quantizer) for images like ``dataset``'s, seeded by ``recipe.seed``."""
    torch.manual_seed(recipe.seed)
    return build_model(recipe.model.kind, dataset.image_shape, dataset.num_classes, recipe.quantizer_spec(),
                       **recipe.model.args)


def _train_step(net: nn.Module, task: str, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, *,
                lr: float, quantizer_weight: float, grad_clip: float,
                autocast: Callable[[], contextlib.AbstractContextManager]) -> dict[str, torch.Tensor | float]:
    """One optimizer step on ``task loss + quantizer_weight * quantizer loss``; returns detached metrics
    (losses, batch task metrics, the quantizer's stats, ``grad_norm`` when clipping, ``lr``)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    with autocast():
        out = net(x)
    loss_task, batch_metrics = task_loss(task, out.output, x, y)
    loss = loss_task + quantizer_weight * out.quant.loss.float()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    metrics: dict[str, torch.Tensor | float] = {"loss": loss.detach(), **batch_metrics,
                                                 "quantizer_loss": out.quant.loss.detach(), **out.quant.stats}
    if grad_clip > 0:
        metrics["grad_norm"] = torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
    optimizer.step()
    metrics["lr"] = lr
    return metrics


def _mean_over_ranks(metrics: dict[str, float], device: torch.device) -> dict[str, float]:
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return metrics
    t = torch.tensor(list(metrics.values()), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(metrics, t.tolist()))


def _is_due(step: int, every: int, last: int) -> bool:
    return step == last or (every > 0 and step % every == 0)


def _check_out_dir(out: Path, resume: bool) -> Path | None:
    if resume:
        ckpt = latest_checkpoint(out)
        if ckpt is None:
            raise FileNotFoundError(f"--resume: no checkpoint found in {out / CHECKPOINT_DIR}")
        return ckpt
    if (out / METRICS_FILE).exists() or (out / CHECKPOINT_DIR).exists():
        raise FileExistsError(f"--out: {out} already holds a run; pass --resume to continue it, or another --out")
    return None


def train(
    recipe: Recipe,
    out_dir: str | Path,
    *,
    resume: bool = False,
    on_step: Callable[[int], None] | None = None,
) -> RunResult:
    """Train ``recipe`` into ``out_dir``.

    Args:
        recipe: what to train.
        out_dir: run directory (created; must not hold another run unless ``resume``).
        resume: continue from the newest checkpoint in ``out_dir``.
        on_step: called with the number of completed steps after each step (after its logging,
            evaluation and checkpoint), e.g. for custom monitoring.
    Returns:
        :class:`RunResult` (on every rank).
    """
    recipe.validate()
    ctx = parallel.setup(recipe.device)
    try:
        return _train(recipe, Path(out_dir), ctx, resume, on_step)
    finally:
        parallel.teardown(ctx)


def _train(recipe: Recipe, out: Path, ctx: parallel.DistContext, resume: bool,
           on_step: Callable[[int], None] | None) -> RunResult:
    from tqdm.auto import tqdm

    started = time.perf_counter()
    device, main = ctx.device, ctx.is_main
    checkpoint = _check_out_dir(out, resume)
    if ctx.distributed:
        dist.barrier()  # every rank has checked --out before rank 0 writes into it
    train_ds, test_ds = load_datasets(recipe)
    model = build_from_recipe(recipe, train_ds).to(device)
    optimizer = build_optimizer(model, recipe.optim)
    start = 0
    if checkpoint is not None:
        start = int(load_checkpoint(checkpoint, model, optimizer)["step"])
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / RECIPE_FILE).write_text(to_toml(recipe))

    net: nn.Module = model
    if ctx.distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    stream = BatchStream(len(train_ds), recipe.batch_size, recipe.seed, ctx.rank, ctx.world_size)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if recipe.bf16 else contextlib.nullcontext
    weight = recipe.quantizer.loss_weight
    final: dict[str, float] = {}
    logger = MetricLogger(out, tensorboard=recipe.log.tensorboard, enabled=main,
                          resume_step=start if checkpoint is not None else None)
    bar = tqdm(total=recipe.steps, initial=start, desc=recipe.name, dynamic_ncols=True,
               disable=not (main and recipe.log.progress))
    model.train()
    try:
        for step in range(start, recipe.steps):
            lr = lr_at(recipe.optim, step, recipe.steps)
            x, y = train_ds.get_batch(stream.local_batch(step), device)
            metrics = _train_step(net, model.task, optimizer, x, y, lr=lr, quantizer_weight=weight,
                                  grad_clip=recipe.optim.grad_clip, autocast=autocast)
            done = step + 1
            if _is_due(done, recipe.log.every, recipe.steps):
                metrics = _mean_over_ranks({k: float(v) for k, v in metrics.items()}, device)
                logger.log(done, "train", metrics)
                bar.set_postfix({k: f"{metrics[k]:.4g}" for k in ("loss", "usage", "perplexity") if k in metrics},
                                refresh=False)
            if _is_due(done, recipe.log.eval_every, recipe.steps):
                result = evaluate(model, test_ds, batch_size=recipe.data.eval_batch_size, device=device,
                                  limit=recipe.data.eval_limit, bf16=recipe.bf16)
                logger.log(done, "test", result.metrics)
                if done == recipe.steps:
                    final = result.metrics
            if main and _is_due(done, recipe.log.checkpoint_every, recipe.steps):
                save_checkpoint(out, done, model, optimizer, extra={"recipe": recipe.to_dict()},
                                keep=recipe.log.keep_checkpoints)
            bar.update(1)
            if on_step is not None:
                on_step(done)
    finally:
        bar.close()
        logger.close()

    if not final:  # nothing left to train (resumed a finished run): evaluate the final model
        final = evaluate(model, test_ds, batch_size=recipe.data.eval_batch_size, device=device,
                         limit=recipe.data.eval_limit, bf16=recipe.bf16).metrics
    wall = time.perf_counter() - started
    if main:
        _write_summary(out, recipe, ctx, final, wall, start)
    result = RunResult(out, max(start, recipe.steps), final, wall)
    if main and recipe.log.report:
        from .report import write_report

        write_report(out)
    return result


def _write_summary(out: Path, recipe: Recipe, ctx: parallel.DistContext, final: dict[str, float], wall: float,
                   start: int) -> None:
    from .. import __version__

    summary: dict[str, Any] = {
        "name": recipe.name,
        "steps": recipe.steps,
        "resumed_from_step": start if start else None,
        "final": final,
        "wall_time_s": round(wall, 3),
        "world_size": ctx.world_size,
        "device": str(ctx.device),
        "torch": torch.__version__,
        "vqkit": __version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
    }
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=1) + "\n")
