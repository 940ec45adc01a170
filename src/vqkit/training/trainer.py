"""The training loop behind ``vqkit train``.

:func:`train` runs a :class:`~vqkit.training.recipe.Recipe` into a run directory (layout:
:mod:`vqkit.training.rundir`). Loss = task loss (MSE or cross-entropy) + ``quantizer.loss_weight`` x the
quantizer's loss. Data order, model init and every random choice of the quantizers derive from ``seed``;
a run resumed from a checkpoint (``resume=True``) on CPU ends bit-identical to an uninterrupted one
(parameters, buffers, optimizer state and ``metrics.jsonl``).

Never losing a run: checkpoints are written every ``log.checkpoint_every`` steps, every
``log.checkpoint_minutes`` of wall time, at the last step, and at the end of the current step when the
process gets SIGINT (Ctrl-C) or SIGTERM (then :class:`TrainingInterrupted` is raised; a second signal
stops at once). ``resume=True`` continues from the newest intact checkpoint, or restarts a run that has
none from step 0; every file it reads is checked before anything is written (see
:mod:`vqkit.training.resume`).

Under ``torchrun`` (``WORLD_SIZE > 1``) the model is wrapped in DistributedDataParallel, every rank takes
a contiguous ``batch_size / world_size`` slice of each global batch (DDP averages the gradients, so the
update matches single-process training on the global batch up to batch-statistics layers), train
metrics are averaged over ranks, evaluation is sharded and all-reduced, and only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from .. import distributed as dist_utils
from . import parallel
from .build import build_from_recipe, load_datasets
from .checkpoint import remove_leftovers, save_checkpoint, set_aside
from .console import note, progress_bar, require_progress_bar
from .evaluate import evaluate
from .logging import MetricLogger, tensorboard_writer_class
from .objective import task_loss
from .optim import build_optimizer, lr_at
from .recipe import Recipe, to_toml
from .resume import ResumePlan, plan_resume
from .rundir import RunDir
from .sampling import BatchStream

__all__ = ["train", "RunResult", "TrainingInterrupted"]


@dataclass
class RunResult:
    """``run_dir``; ``step`` reached; ``final``: held-out metrics at the end; ``wall_time_s`` of this call;
    ``rank`` of this process; ``already_finished``: a resume found the run complete and did nothing."""

    run_dir: Path
    step: int
    final: dict[str, float]
    wall_time_s: float
    rank: int = 0
    already_finished: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class TrainingInterrupted(Exception):
    """Training stopped on SIGINT / SIGTERM after saving a checkpoint at the end of the current step."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None, run_dir: Path, rank: int = 0,
                 hint: str | None = None) -> None:
        self.signum, self.step, self.checkpoint, self.run_dir, self.rank = signum, step, checkpoint, run_dir, rank
        where = f"checkpoint {checkpoint}" if checkpoint is not None else "checkpoint written by rank 0"
        hint = hint or f"continue with `vqkit train --out {run_dir} --resume`"
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; {where}; {hint}")


class _StopRequest:
    """SIGINT / SIGTERM handlers that ask the loop to stop at the end of the step; a second signal raises
    KeyboardInterrupt at once. Installed only from the main thread."""

    def __init__(self, enabled: bool) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._enabled = enabled and threading.current_thread() is threading.main_thread()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> _StopRequest:
        if self._enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def agreed(self, device: torch.device) -> int | None:
        """The signal to stop for, agreed over ranks (any rank's signal stops all of them)."""
        if not dist_utils.is_distributed():
            return self.signum
        flag = torch.tensor([float(self.signum or 0)], device=device)
        dist_utils.all_reduce_sum_(flag)
        return None if flag.item() == 0 else (self.signum or signal.SIGTERM)


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
    if not dist_utils.is_distributed():
        return metrics
    t = torch.tensor(list(metrics.values()), dtype=torch.float64, device=device)
    dist_utils.all_reduce_sum_(t)
    t /= dist_utils.world_size()
    return dict(zip(metrics, t.tolist()))


def _is_due(step: int, every: int, last: int) -> bool:
    return step == last or (every > 0 and step % every == 0)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def train(
    recipe: Recipe,
    out_dir: str | Path,
    *,
    resume: bool = False,
    on_step: Callable[[int], None] | None = None,
    label: str | None = None,
    handle_signals: bool = True,
    notes: Sequence[str] = (),
) -> RunResult:
    """Train ``recipe`` into ``out_dir``.

    Args:
        recipe: what to train.
        out_dir: run directory (created; must not hold another run unless ``resume``).
        resume: continue from the newest intact checkpoint in ``out_dir`` (or restart from step 0 a run
            that has none).
        on_step: called with the number of completed steps after each step (after its logging,
            evaluation and checkpoint), e.g. for custom monitoring.
        label: the progress bar's label (default: the recipe's name).
        handle_signals: on SIGINT / SIGTERM, finish the step, save a checkpoint and raise
            :class:`TrainingInterrupted` (only when called from the main thread).
        notes: status lines the main process shows (on stderr) once the checks pass, before training.
    Returns:
        :class:`RunResult` (on every rank). ``vqkit train`` then writes the report
        (:func:`~vqkit.training.report.write_report`) when ``log.report``.
    Raises:
        TrainingInterrupted: a signal stopped training (a checkpoint of the last completed step was saved).
    """
    recipe.validate()
    ctx = parallel.setup(recipe.device)
    try:
        result = _train(recipe, RunDir(out_dir), ctx, resume, on_step, label or recipe.name, handle_signals,
                        list(notes))
    except TrainingInterrupted:  # agreed over ranks and raised on every rank at the same step: all arrive
        parallel.teardown(ctx)
        raise
    except BaseException:
        parallel.teardown(ctx, clean=False)
        raise
    parallel.teardown(ctx)
    return result


def _check_out_dir(run: RunDir, resume: bool) -> None:
    if resume:
        if not run.root.is_dir():
            raise FileNotFoundError(f"--resume: {run.root} does not exist; start a run there without --resume")
    elif run.holds_run():
        raise FileExistsError(f"--out: {run.root} already holds a run; pass --resume to continue it (a run "
                              "without checkpoints restarts from step 0), or choose another --out")


def _already_finished(run: RunDir, recipe: Recipe, plan: ResumePlan) -> dict[str, float] | None:
    """The final metrics of ``run.json`` when the run is complete at ``recipe.steps``, else None."""
    if plan.checkpoint is None or plan.step != recipe.steps or plan.corrupt or not run.summary.is_file():
        return None
    try:
        summary = json.loads(run.summary.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(summary, dict) and summary.get("steps") == recipe.steps and isinstance(summary.get("final"), dict):
        return summary["final"]
    return None


def _train(recipe: Recipe, run: RunDir, ctx: parallel.DistContext, resume: bool,
           on_step: Callable[[int], None] | None, label: str, handle_signals: bool, notes: list[str]) -> RunResult:
    started = time.perf_counter()
    device, main = ctx.device, ctx.is_main
    verbose = main and recipe.log.progress

    # ---- checks: nothing is written until all of them pass ----
    _check_out_dir(run, resume)
    if main and recipe.log.tensorboard:
        tensorboard_writer_class()
    if verbose:
        require_progress_bar()
    train_ds, test_ds = load_datasets(recipe)
    model = build_from_recipe(recipe, train_ds).to(device)
    optimizer = build_optimizer(model, recipe.optim)
    plan = plan_resume(run, recipe, model, optimizer) if resume else ResumePlan(None)
    finished = _already_finished(run, recipe, plan) if resume else None
    if finished is not None:
        note(f"{run.root} already finished its {recipe.steps} steps ({run.summary.name}); nothing to train. "
             "Extend it with --set steps=N, rewrite its report with `vqkit report`", enabled=main)
        return RunResult(run.root, recipe.steps, finished, time.perf_counter() - started, ctx.rank, True)
    if ctx.distributed:
        torch.distributed.barrier()  # every rank has checked before rank 0 writes

    # ---- from here on the run directory is written (rank 0) ----
    if main:
        run.root.mkdir(parents=True, exist_ok=True)
        for path in remove_leftovers(run.root):
            note(f"removed {path.name}, left by an interrupted checkpoint write", enabled=verbose)
        for path, _ in plan.corrupt:
            set_aside(path)
        for message in notes + plan.notes:  # warnings always, the rest with log.progress
            note(message, enabled=verbose or message.startswith("warning:"))
        _write_atomic(run.recipe, to_toml(recipe))
    if plan.checkpoint is not None:
        plan.checkpoint.apply(model, optimizer)
    start = plan.step
    stop = _StopRequest(handle_signals)

    net: nn.Module = model
    if ctx.distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    stream = BatchStream(len(train_ds), recipe.batch_size, recipe.seed, ctx.rank, ctx.world_size)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if recipe.bf16 else contextlib.nullcontext
    weight = recipe.quantizer.loss_weight
    recipe_dict = recipe.to_dict()
    earlier = 0.0  # wall time of the run's earlier sessions, up to the checkpoint resumed from
    if plan.checkpoint is not None and isinstance(plan.checkpoint.state.get("wall_time_s"), (int, float)):
        earlier = float(plan.checkpoint.state["wall_time_s"])

    def extra() -> dict[str, Any]:
        return {"recipe": recipe_dict, "wall_time_s": round(earlier + time.perf_counter() - started, 3),
                "threads": torch.get_num_threads(), "world_size": ctx.world_size, "vqkit": __version__}

    final: dict[str, float] = {}
    eval_note = f"the first {recipe.data.eval_limit} test images" if 0 < recipe.data.eval_limit < len(test_ds) \
        else f"the test split ({len(test_ds)} images)"
    logger = MetricLogger(run.root, tensorboard=recipe.log.tensorboard, enabled=main,
                          resume_step=start if resume else None)
    bar = progress_bar(recipe.steps, start, label, verbose)
    last_save = time.monotonic()
    saved_step = start if plan.checkpoint is not None else -1
    model.train()
    try:
        with stop:
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
                    if done == recipe.steps:
                        note(f"final held-out evaluation on {eval_note}", enabled=verbose)
                    else:
                        bar.set_postfix_str(f"evaluating on {eval_note}", refresh=True)
                    result = evaluate(model, test_ds, batch_size=recipe.data.eval_batch_size, device=device,
                                      limit=recipe.data.eval_limit, bf16=recipe.bf16)
                    logger.log(done, "test", result.metrics)
                    if done == recipe.steps:
                        final = result.metrics
                by_time = recipe.log.checkpoint_minutes > 0 and time.monotonic() - last_save >= 60 * recipe.log.checkpoint_minutes
                if main and (_is_due(done, recipe.log.checkpoint_every, recipe.steps) or by_time):
                    save_checkpoint(run.root, done, model, optimizer, extra=extra(), keep=recipe.log.keep_checkpoints)
                    last_save, saved_step = time.monotonic(), done
                bar.update(1)
                if on_step is not None:
                    on_step(done)
                signum = stop.agreed(device)
                if signum is not None and done < recipe.steps:
                    checkpoint = None
                    if main:
                        if saved_step != done:
                            save_checkpoint(run.root, done, model, optimizer, extra=extra(),
                                            keep=recipe.log.keep_checkpoints)
                        checkpoint = run.checkpoint(done)
                    raise TrainingInterrupted(signum, done, checkpoint, run.root, ctx.rank)
    finally:
        bar.close()
        logger.close()
        # drop the DDP wrapper here, not with this frame: a traceback keeps the frame (and the reducer, which
        # holds the process group) alive until after teardown destroys the group
        net = None  # noqa: F841

    if not final:  # nothing left to train (resumed a run that stopped after its last checkpoint)
        note(f"evaluating the final model on {eval_note}", enabled=verbose)
        final = evaluate(model, test_ds, batch_size=recipe.data.eval_batch_size, device=device,
                         limit=recipe.data.eval_limit, bf16=recipe.bf16).metrics
    wall = time.perf_counter() - started
    if main:
        _write_summary(run, recipe, ctx, final, earlier + wall, wall, start)
    return RunResult(run.root, max(start, recipe.steps), final, wall, ctx.rank)


def _write_summary(run: RunDir, recipe: Recipe, ctx: parallel.DistContext, final: dict[str, float], wall: float,
                   session_wall: float, start: int) -> None:
    """``run.json``; ``wall_time_s`` covers every session of the run (up to the checkpoints resumed from),
    ``session_wall_time_s`` this one."""
    summary: dict[str, Any] = {
        "name": recipe.name,
        "steps": recipe.steps,
        "resumed_from_step": start if start else None,
        "final": final,
        "wall_time_s": round(wall, 3),
        "session_wall_time_s": round(session_wall, 3),
        "world_size": ctx.world_size,
        "device": str(ctx.device),
        "torch": torch.__version__,
        "vqkit": __version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
    }
    _write_atomic(run.summary, json.dumps(summary, indent=1) + "\n")
