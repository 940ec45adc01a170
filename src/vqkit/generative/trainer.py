"""Train a token prior on a token file, with checkpoints, resume and a metric log.

:func:`train_prior` writes a run directory::

    <run>/prior.json        the prior's kind and arguments, the training config, the token spec and hash
    <run>/metrics.jsonl     train records (loss, accuracy, lr, grad_norm) and held-out ("test") records
    <run>/checkpoints/      safetensors + JSON checkpoints (vqkit.training.checkpoint)
    <run>/run.json          final metrics and wall time

Batches, masks and class dropout are pure functions of ``(seed, step)`` and the global RNG (dropout)
is checkpointed, so on the CPU a run interrupted and resumed ends bit-identical to an uninterrupted one.

Never losing a run works as in ``vqkit train`` (:mod:`vqkit.training.trainer`), with the same parts:
checkpoints every ``checkpoint_every`` steps, every ``checkpoint_minutes`` of wall time, at the last step
and at the end of the current step on SIGINT / SIGTERM (then
:class:`~vqkit.training.TrainingInterrupted` is raised); a resume reads the newest intact checkpoint
(:func:`~vqkit.training.checkpoint.find_checkpoint`; newer corrupt ones are set aside and named), restarts
a run without checkpoints from step 0, removes the leftovers of an interrupted checkpoint write and
drops a torn last line of ``metrics.jsonl``. Every check passes before anything is written.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..training import CheckpointError, MetricLogger, TrainingInterrupted, save_checkpoint
from ..training.checkpoint import Checkpoint, find_checkpoint, remove_leftovers, set_aside
from ..training.console import note, progress_bar, require_progress_bar
from ..training.logging import MetricsFileError, read_metrics, scan_metrics
from ..training.rundir import PRIOR_FILE, RunDir
from ..training.trainer import _StopRequest  # the SIGINT / SIGTERM handling of `vqkit train`
from .order import batch_indices, step_generator
from .priors import build_prior
from .tokens import TokenSet, load_tokens
from .transformer import TokenPrior

__all__ = ["PriorConfig", "PriorRunResult", "train_prior", "load_prior", "read_prior_run", "read_summary",
           "evaluate_prior", "PRIOR_FILE"]

# config fields that may change when resuming a run (the rest must match the checkpointed run)
_RESUMABLE = ("steps", "log_every", "eval_every", "checkpoint_every", "checkpoint_minutes", "keep_checkpoints")


@dataclass
class PriorConfig:
    """What :func:`train_prior` trains.

    Attributes:
        kind: ``"maskgit"`` or ``"autoregressive"``.
        model: prior arguments besides the token space (``dim``, ``depth``, ``heads``, ``mlp_ratio``,
            ``dropout``, and ``class_dropout`` for maskgit).
        conditional: condition on the token file's labels (class-conditional prior).
        steps, batch_size: optimizer steps and batch size.
        lr, weight_decay, betas: AdamW (weight decay on linear weights only, not on embeddings, norms, biases).
        warmup_steps: linear warm-up; then ``schedule`` ``"constant"`` or ``"cosine"`` (to 0 at ``steps``).
        grad_clip: clip the global gradient norm (0 = off).
        seed: init, data order and masks.
        log_every, eval_every, checkpoint_every: every N steps (0 = only at the end; eval needs val tokens).
        checkpoint_minutes: also checkpoint when this much wall time passed since the last one (0 = off).
        keep_checkpoints: checkpoints to keep.
    """

    kind: str = "maskgit"
    model: dict[str, Any] = field(default_factory=dict)
    conditional: bool = True
    steps: int = 1000
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 0
    schedule: str = "cosine"
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0
    checkpoint_every: int = 0
    checkpoint_minutes: float = 0.0
    keep_checkpoints: int = 2

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        self.model = dict(self.model)
        for names, low in ((("steps", "batch_size", "keep_checkpoints"), 1),
                           (("warmup_steps", "log_every", "eval_every", "checkpoint_every", "seed"), 0)):
            for name in names:
                value = getattr(self, name)
                if isinstance(value, bool) or not isinstance(value, int) or value < low:
                    raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule: expected 'constant' or 'cosine', got {self.schedule!r}")
        if not self.lr > 0:
            raise ValueError(f"lr: expected > 0, got {self.lr!r}")
        if not (self.checkpoint_minutes >= 0 and math.isfinite(self.checkpoint_minutes)):
            raise ValueError(f"checkpoint_minutes: expected a float >= 0, got {self.checkpoint_minutes!r}")
        reserved = {"vocab_sizes", "length", "num_classes"} & set(self.model)
        if reserved:
            raise ValueError(f"model: {sorted(reserved)} come from the token file, not the config")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PriorConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"prior config: unknown key(s) {sorted(unknown)}; valid: {sorted(names)}")
        return cls(**d)

    def lr_at(self, step: int) -> float:
        """Learning rate of step ``step`` (0-based)."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return self.lr
        progress = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        return self.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class PriorRunResult:
    """``run_dir``; ``step`` reached; ``final`` metrics (last train record, and ``val_*`` with val tokens);
    ``wall_time_s`` of this call; the trained ``prior`` (eval mode); ``already_finished``: a resume found
    the run complete and trained nothing."""

    run_dir: Path
    step: int
    final: dict[str, float]
    wall_time_s: float
    prior: TokenPrior
    already_finished: bool = False


def _prior_spec(config: PriorConfig, tokens: TokenSet) -> dict[str, Any]:
    return {"kind": config.kind,
            "args": {"vocab_sizes": list(tokens.spec.layout.vocab_sizes), "length": tokens.spec.length,
                     "num_classes": tokens.spec.num_classes if config.conditional else 0, **config.model}}


def _optimizer(prior: nn.Module, config: PriorConfig) -> torch.optim.Optimizer:
    decay, other = [], []
    for module in prior.modules():
        for name, p in module.named_parameters(recurse=False):
            (decay if isinstance(module, nn.Linear) and name == "weight" else other).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                              {"params": other, "weight_decay": 0.0}], lr=config.lr, betas=config.betas)


@torch.no_grad()
def evaluate_prior(prior: TokenPrior, tokens: TokenSet, *, conditional: bool, batch_size: int = 256,
                   seed: int = 0) -> dict[str, float]:
    """Mean ``loss`` and ``accuracy`` of ``prior.training_loss`` over all of ``tokens`` (fixed masks from
    ``seed``, so repeated calls agree), weighted by batch size; the prior is in eval mode for the call."""
    seqs, was_training = tokens.sequences(), prior.training
    prior.eval()
    totals, n = {"loss": 0.0, "accuracy": 0.0}, 0
    try:
        for i, start in enumerate(range(0, len(tokens), batch_size)):
            batch = seqs[start:start + batch_size]
            labels = tokens.labels[start:start + batch_size] if conditional else None
            _, stats = prior.training_loss(batch, labels, generator=step_generator(seed, i, stream=1))
            for k in totals:
                totals[k] += stats[k] * batch.shape[0]
            n += batch.shape[0]
    finally:
        prior.train(was_training)
    return {k: v / n for k, v in totals.items()}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def _check_resume(run: RunDir, spec: dict[str, Any], config: PriorConfig, tokens: TokenSet) -> None:
    """Check that ``run`` holds a prior run of the same prior, config (up to :data:`_RESUMABLE`) and tokens."""
    if not run.prior_info.is_file():
        raise FileNotFoundError(f"resume: no checkpoint found in {run.checkpoints} and no {run.prior_info.name}: "
                                f"{run.root} is not a prior run; start one there without resume")
    saved = read_prior_run(run.root)
    if saved.get("prior") != spec:
        raise ValueError(f"resume: {run.root} holds prior {saved.get('prior')}, the call asks for {spec}")
    old = {k: v for k, v in saved.get("config", {}).items() if k not in _RESUMABLE}
    new = {k: v for k, v in config.to_dict().items() if k not in _RESUMABLE}
    if old != new:
        diff = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
        raise ValueError(f"resume: config differs from the run in {run.root} (saved, given): {diff}; only "
                         f"{', '.join(_RESUMABLE)} may change")
    if saved.get("tokens") != tokens.spec.to_dict() or saved.get("tokens_sha256") != tokens.content_hash():
        raise ValueError(f"resume: the tokens differ from those the run in {run.root} was trained on "
                         f"(spec {saved.get('tokens')}, sha256 {str(saved.get('tokens_sha256'))[:16]}...; given "
                         f"{tokens.spec.to_dict()}, sha256 {tokens.content_hash()[:16]}...)")


def _resume_checkpoint(run: RunDir, prior: nn.Module, optimizer: torch.optim.Optimizer, config: PriorConfig,
                       notes: list[str]) -> tuple[Checkpoint | None, list[Path]]:
    """The newest intact checkpoint (None: restart from step 0) and the corrupt newer ones to set aside;
    appends what will happen to ``notes``. Nothing is written."""
    steps = config.steps
    checkpoint, skipped = find_checkpoint(run.root, prior, optimizer)
    if checkpoint is None and skipped:
        reasons = "; ".join(str(e) for _, e in skipped)
        raise CheckpointError(f"resume: no intact checkpoint in {run.checkpoints}: {reasons}. Delete "
                              f"{run.checkpoints} to restart the run from step 0, or start over in another directory")
    for path, error in skipped:
        notes.append(f"warning: {error}; resuming from the older intact checkpoint {checkpoint.path.name} "
                     f"instead ({path.name} is set aside as .corrupt-{path.name})")
    if checkpoint is None:
        notes.append(f"no checkpoint in {run.root} yet: restarting the run from step 0")
    else:
        if checkpoint.step > steps:
            raise ValueError(f"steps: {steps} is below the {checkpoint.step} steps this run already trained "
                             f"({checkpoint.path}); continue it with steps >= {checkpoint.step}, or train a "
                             "shorter run in another directory")
        old_steps = checkpoint.state.get("config", {}).get("steps")
        if config.schedule == "cosine" and isinstance(old_steps, int) and old_steps != steps and checkpoint.step < steps:
            notes.append(f"warning: with the cosine schedule the learning rate from step {checkpoint.step} on follows "
                         f"the new length ({steps} steps, was {old_steps}), so the run is not the same as one trained "
                         f"for {steps} steps from the start")
        threads = checkpoint.state.get("threads")
        if isinstance(threads, int) and threads != torch.get_num_threads():
            notes.append(f"warning: {checkpoint.path.name} was trained with {threads} intra-op thread(s), this "
                         f"session uses {torch.get_num_threads()}: the result can differ in the last bits from an "
                         f"uninterrupted run (use {threads} thread(s) to match it)")
        notes.append(f"resuming from {checkpoint.path.name} (step {checkpoint.step} of {steps})")
    try:
        _, torn = scan_metrics(run.metrics)
    except MetricsFileError as e:
        raise MetricsFileError(f"resume: {e}, or start over in another directory") from None
    if torn:
        notes.append(f"warning: {run.metrics}: dropped a torn last line (a write interrupted by a kill)")
    return checkpoint, [p for p, _ in skipped]


def read_summary(run_dir: str | Path) -> dict[str, Any] | None:
    """``run.json`` of a run as a dict, None when missing or unreadable."""
    path = RunDir(run_dir).summary
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def _finished_final(run: RunDir, config: PriorConfig, checkpoint: Checkpoint | None,
                    corrupt: list[Path]) -> dict[str, float] | None:
    """The final metrics of ``run.json`` when the run is complete at ``config.steps``, else None."""
    if checkpoint is None or checkpoint.step != config.steps or corrupt:
        return None
    summary = read_summary(run.root)
    if summary and summary.get("steps") == config.steps and isinstance(summary.get("final"), dict):
        return summary["final"]
    return None


def train_prior(
    tokens: TokenSet | str | Path,
    out_dir: str | Path,
    config: PriorConfig | None = None,
    *,
    val_tokens: TokenSet | str | Path | None = None,
    resume: bool = False,
    device: torch.device | str = "cpu",
    on_step: Callable[[int], None] | None = None,
    handle_signals: bool = True,
    progress: bool = False,
    label: str = "prior",
    info: Mapping[str, Any] | None = None,
    notes: list[str] | None = None,
    on_start: Callable[[], None] | None = None,
    resume_hint: str = "call train_prior again with the same arguments and resume=True",
) -> PriorRunResult:
    """Train a token prior on ``tokens`` into ``out_dir``.

    Args:
        tokens: the training token set (or its file).
        out_dir: run directory (created; must not hold another run unless ``resume``).
        config: :class:`PriorConfig` (default: its defaults).
        val_tokens: held-out tokens (same spec): ``val_loss`` / ``val_accuracy`` every ``eval_every``
            steps and at the end.
        resume: continue from the newest intact checkpoint in ``out_dir`` (``config`` may change only in
            ``steps`` and the logging / checkpoint intervals); a run without checkpoints restarts from 0.
        device: where to train.
        on_step: called with the number of completed steps after each step (after its logging and checkpoint).
        handle_signals: on SIGINT / SIGTERM finish the step, save a checkpoint and raise
            :class:`~vqkit.training.TrainingInterrupted` (only from the main thread).
        progress: show a progress bar and status lines (stderr).
        label: the progress bar's label.
        info: extra JSON-able entries stored in ``prior.json`` (e.g. the recipe and the tokenizer run).
        notes: status lines to show once the checks pass (warnings are always shown).
        on_start: called once every check has passed, when the run directory starts being written (e.g.
            to write the recipe next to the run).
        resume_hint: how to continue, in the message of :class:`~vqkit.training.TrainingInterrupted`.
    Returns:
        :class:`PriorRunResult`.
    Raises:
        TrainingInterrupted: a signal stopped training (a checkpoint of the last completed step was saved).
    """
    started = time.perf_counter()
    config = config or PriorConfig()
    notes = list(notes or [])
    tokens = tokens if isinstance(tokens, TokenSet) else load_tokens(tokens)
    if val_tokens is not None:
        val_tokens = val_tokens if isinstance(val_tokens, TokenSet) else load_tokens(val_tokens)
        a, b = tokens.spec.to_dict(), val_tokens.spec.to_dict()
        a.pop("source"), b.pop("source")
        if a != b:
            raise ValueError(f"val_tokens: spec {b} differs from the training tokens' {a}")
    run, device = RunDir(out_dir), torch.device(device)
    spec = _prior_spec(config, tokens)

    # ---- checks: nothing is written until all of them pass ----
    if resume:
        _check_resume(run, spec, config, tokens)
    elif run.prior_info.exists() or run.checkpoints.exists():
        raise FileExistsError(f"out_dir: {run.root} already holds a prior run; pass resume=True or use another directory")
    if progress:
        require_progress_bar()
    torch.manual_seed(config.seed)
    prior = build_prior(spec["kind"], **spec["args"]).to(device)
    optimizer = _optimizer(prior, config)
    checkpoint, corrupt = _resume_checkpoint(run, prior, optimizer, config, notes) if resume else (None, [])
    finished = _finished_final(run, config, checkpoint, corrupt) if resume else None
    if finished is not None:
        checkpoint.apply(prior, None, restore_rng=False)
        note(f"{run.root} already finished its {config.steps} steps; nothing to train", enabled=progress)
        return PriorRunResult(run.root, config.steps, finished, time.perf_counter() - started, prior.eval(), True)

    # ---- from here on the run directory is written ----
    run.root.mkdir(parents=True, exist_ok=True)
    for path in remove_leftovers(run.root):
        note(f"removed {path.name}, left by an interrupted checkpoint write", enabled=progress)
    for path in corrupt:
        set_aside(path)
    for message in notes:
        note(message, enabled=progress or message.startswith("warning:"))
    if on_start is not None:
        on_start()
    token_info = {"tokens": tokens.spec.to_dict(), "tokens_sha256": tokens.content_hash()}
    _write_json(run.prior_info, {"prior": spec, "config": config.to_dict(), **token_info, **dict(info or {})})
    start = 0
    earlier = 0.0  # wall time of the run's earlier sessions, up to the checkpoint resumed from
    if checkpoint is not None:
        checkpoint.apply(prior, optimizer)
        start = checkpoint.step
        if isinstance(checkpoint.state.get("wall_time_s"), (int, float)):
            earlier = float(checkpoint.state["wall_time_s"])

    def extra() -> dict[str, Any]:
        return {"prior": spec, "config": config.to_dict(), "tokens": tokens.spec.to_dict(),
                "wall_time_s": round(earlier + time.perf_counter() - started, 3), "threads": torch.get_num_threads()}

    seqs = tokens.sequences()
    final: dict[str, float] = {}
    logger = MetricLogger(run.root, resume_step=start if resume else None)
    bar = progress_bar(config.steps, start, label, progress)
    stop = _StopRequest(handle_signals)
    last_save, saved_step = time.monotonic(), start if checkpoint is not None else -1
    prior.train()
    try:
        with stop:
            for step in range(start, config.steps):
                idx = batch_indices(len(tokens), config.batch_size, config.seed, step)
                labels = tokens.labels[idx].to(device) if config.conditional else None
                lr = config.lr_at(step)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss, stats = prior.training_loss(seqs[idx].to(device), labels,
                                                  generator=step_generator(config.seed, step))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip > 0:
                    stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(prior.parameters(), config.grad_clip))
                optimizer.step()
                stats["lr"] = lr
                done = step + 1
                last = done == config.steps
                if last or (config.log_every and done % config.log_every == 0):
                    logger.log(done, "train", stats)
                    bar.set_postfix({k: f"{stats[k]:.4g}" for k in ("loss", "accuracy")}, refresh=False)
                if val_tokens is not None and (last or (config.eval_every and done % config.eval_every == 0)):
                    val = evaluate_prior(prior, val_tokens, conditional=config.conditional, seed=config.seed)
                    logger.log(done, "test", val)
                    if last:
                        final.update({f"val_{k}": v for k, v in val.items()})
                if last:
                    final.update(stats)
                by_time = (config.checkpoint_minutes > 0
                           and time.monotonic() - last_save >= 60 * config.checkpoint_minutes)
                if last or by_time or (config.checkpoint_every and done % config.checkpoint_every == 0):
                    save_checkpoint(run.root, done, prior, optimizer, extra=extra(), keep=config.keep_checkpoints)
                    last_save, saved_step = time.monotonic(), done
                bar.update(1)
                if on_step is not None:
                    on_step(done)
                if stop.signum is not None and not last:
                    if saved_step != done:
                        save_checkpoint(run.root, done, prior, optimizer, extra=extra(), keep=config.keep_checkpoints)
                    raise TrainingInterrupted(stop.signum, done, run.checkpoint(done), run.root,
                                              hint=resume_hint)
    finally:
        bar.close()
        logger.close()
    if not final:  # nothing left to train: resumed a run stopped after its last checkpoint
        final = _final_from_log(run)
    wall = time.perf_counter() - started
    _write_json(run.summary, {"steps": config.steps, "resumed_from_step": start or None, "final": final,
                              "wall_time_s": round(earlier + wall, 3), "session_wall_time_s": round(wall, 3),
                              "device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__})
    prior.eval()
    return PriorRunResult(run.root, max(start, config.steps), final, wall, prior)


def _final_from_log(run: RunDir) -> dict[str, float]:
    """The last train record (and ``val_*`` of the last test record) of ``metrics.jsonl``."""
    records = read_metrics(run.root)
    final: dict[str, float] = {}
    for split, prefix in (("test", "val_"), ("train", "")):
        last = [r for r in records if r["split"] == split][-1:]
        if last:
            final.update({f"{prefix}{k}": v for k, v in last[0].items() if k not in ("step", "split")})
    return final


def read_prior_run(run_dir: str | Path) -> dict[str, Any]:
    """The ``prior.json`` of a prior run: ``{"prior": {"kind", "args"}, "config", "tokens", "tokens_sha256", ...}``."""
    path = RunDir(run_dir).prior_info
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a prior run directory (no {PRIOR_FILE}); give a directory written "
                                "by `vqkit prior`")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not (isinstance(data, dict) and isinstance(data.get("prior"), dict) and "kind" in data["prior"]):
        raise ValueError(f"{path}: not a prior description (no 'prior' kind and arguments)")
    return data


def load_prior(run_dir: str | Path, *, device: torch.device | str = "cpu") -> tuple[TokenPrior, dict[str, Any]]:
    """The newest intact checkpoint of a prior run: (prior in eval mode on ``device``, its ``prior.json``).

    Raises:
        FileNotFoundError: not a prior run, or no checkpoint yet.
        CheckpointError: no checkpoint is intact (the message names the files).
    """
    info = read_prior_run(run_dir)
    prior = build_prior(info["prior"]["kind"], **info["prior"]["args"])
    run = RunDir(run_dir)
    dirs = run.step_dirs()
    if not dirs:
        raise FileNotFoundError(f"{run.checkpoints}: no checkpoint of the prior yet (train it with `vqkit prior`)")
    checkpoint, skipped = find_checkpoint(run.root, prior)
    if checkpoint is None:
        raise CheckpointError(f"{run.checkpoints}: no intact checkpoint: " + "; ".join(str(e) for _, e in skipped))
    checkpoint.apply(prior, None, restore_rng=False)
    return prior.to(device).eval(), info
