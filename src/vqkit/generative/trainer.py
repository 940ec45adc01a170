"""Train a token prior on a token file, with checkpoints, resume and a metric log.

:func:`train_prior` writes a run directory::

    <run>/prior.json        the prior's kind and arguments, the training config, the token spec and hash
    <run>/metrics.jsonl     train records (loss, accuracy, lr, grad_norm) and held-out ("test") records
    <run>/checkpoints/      safetensors + JSON checkpoints (vqkit.training.checkpoint)
    <run>/run.json          final metrics and wall time

Batches, masks and class dropout are pure functions of ``(seed, step)`` and the global RNG (dropout)
is checkpointed, so on the CPU a run interrupted and resumed ends bit-identical to an uninterrupted one.
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

from ..training import MetricLogger, latest_checkpoint, load_checkpoint, save_checkpoint
from ..training.rundir import CHECKPOINT_DIR, SUMMARY_FILE
from .order import batch_indices, step_generator
from .priors import build_prior
from .tokens import TokenSet, load_tokens
from .transformer import TokenPrior

__all__ = ["PriorConfig", "PriorRunResult", "train_prior", "load_prior", "read_prior_run", "evaluate_prior",
           "PRIOR_FILE"]

PRIOR_FILE = "prior.json"
# config fields that may change when resuming a run (the rest must match the checkpointed run)
_RESUMABLE = ("steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints")


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
    ``wall_time_s`` of this call; the trained ``prior`` (eval mode)."""

    run_dir: Path
    step: int
    final: dict[str, float]
    wall_time_s: float
    prior: TokenPrior


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


def _check_resume(out: Path, spec: dict[str, Any], config: PriorConfig, tokens: TokenSet) -> Path:
    """The checkpoint to resume from, after checking that ``out``'s run trained the same thing."""
    checkpoint = latest_checkpoint(out)
    if checkpoint is None:
        raise FileNotFoundError(f"resume: no checkpoint found in {out / CHECKPOINT_DIR}")
    saved = read_prior_run(out)
    if saved.get("prior") != spec:
        raise ValueError(f"resume: {out} holds prior {saved.get('prior')}, the call asks for {spec}")
    old = {k: v for k, v in saved.get("config", {}).items() if k not in _RESUMABLE}
    new = {k: v for k, v in config.to_dict().items() if k not in _RESUMABLE}
    if old != new:
        diff = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
        raise ValueError(f"resume: config differs from the run in {out} (saved, given): {diff}; only "
                         f"{', '.join(_RESUMABLE)} may change")
    if saved.get("tokens") != tokens.spec.to_dict() or saved.get("tokens_sha256") != tokens.content_hash():
        raise ValueError(f"resume: the tokens differ from those the run in {out} was trained on "
                         f"(spec {saved.get('tokens')}, sha256 {str(saved.get('tokens_sha256'))[:16]}...; given "
                         f"{tokens.spec.to_dict()}, sha256 {tokens.content_hash()[:16]}...)")
    return checkpoint


def train_prior(
    tokens: TokenSet | str | Path,
    out_dir: str | Path,
    config: PriorConfig | None = None,
    *,
    val_tokens: TokenSet | str | Path | None = None,
    resume: bool = False,
    device: torch.device | str = "cpu",
    on_step: Callable[[int], None] | None = None,
) -> PriorRunResult:
    """Train a token prior on ``tokens`` into ``out_dir``.

    Args:
        tokens: the training token set (or its file).
        out_dir: run directory (created; must not hold another run unless ``resume``).
        config: :class:`PriorConfig` (default: its defaults).
        val_tokens: held-out tokens (same spec): ``val_loss`` / ``val_accuracy`` every ``eval_every``
            steps and at the end.
        resume: continue from the newest checkpoint in ``out_dir`` (``config`` may change only in
            ``steps`` and the logging / checkpoint intervals).
        device: where to train.
        on_step: called with the number of completed steps after each step (after its logging and checkpoint).
    Returns:
        :class:`PriorRunResult`.
    """
    started = time.perf_counter()
    config = config or PriorConfig()
    tokens = tokens if isinstance(tokens, TokenSet) else load_tokens(tokens)
    if val_tokens is not None:
        val_tokens = val_tokens if isinstance(val_tokens, TokenSet) else load_tokens(val_tokens)
        a, b = tokens.spec.to_dict(), val_tokens.spec.to_dict()
        a.pop("source"), b.pop("source")
        if a != b:
            raise ValueError(f"val_tokens: spec {b} differs from the training tokens' {a}")
    out, device = Path(out_dir), torch.device(device)
    spec = _prior_spec(config, tokens)
    checkpoint = None
    if resume:
        checkpoint = _check_resume(out, spec, config, tokens)
    elif (out / PRIOR_FILE).exists() or (out / CHECKPOINT_DIR).exists():
        raise FileExistsError(f"out_dir: {out} already holds a prior run; pass resume=True or use another directory")

    torch.manual_seed(config.seed)
    prior = build_prior(spec["kind"], **spec["args"]).to(device)
    optimizer = _optimizer(prior, config)
    start = 0
    if checkpoint is not None:
        start = int(load_checkpoint(checkpoint, prior, optimizer)["step"])
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / PRIOR_FILE, {"prior": spec, "config": config.to_dict(), "tokens": tokens.spec.to_dict(),
                                   "tokens_sha256": tokens.content_hash()})
    extra = {"prior": spec, "config": config.to_dict(), "tokens": tokens.spec.to_dict()}

    seqs = tokens.sequences()
    final: dict[str, float] = {}
    logger = MetricLogger(out, resume_step=start if checkpoint is not None else None)
    prior.train()
    try:
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
            if val_tokens is not None and (last or (config.eval_every and done % config.eval_every == 0)):
                val = evaluate_prior(prior, val_tokens, conditional=config.conditional, seed=config.seed)
                logger.log(done, "test", val)
                if last:
                    final.update({f"val_{k}": v for k, v in val.items()})
            if last:
                final.update(stats)
            if last or (config.checkpoint_every and done % config.checkpoint_every == 0):
                save_checkpoint(out, done, prior, optimizer, extra=extra, keep=config.keep_checkpoints)
            if on_step is not None:
                on_step(done)
    finally:
        logger.close()
    wall = time.perf_counter() - started
    _write_json(out / SUMMARY_FILE, {"steps": config.steps, "resumed_from_step": start or None, "final": final,
                                      "wall_time_s": round(wall, 3), "device": str(device),
                                      "threads": torch.get_num_threads(), "torch": torch.__version__})
    prior.eval()
    return PriorRunResult(out, max(start, config.steps), final, wall, prior)


def read_prior_run(run_dir: str | Path) -> dict[str, Any]:
    """The ``prior.json`` of a prior run: ``{"prior": {"kind", "args"}, "config", "tokens", "tokens_sha256"}``."""
    path = Path(run_dir) / PRIOR_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a prior run directory (no {PRIOR_FILE})")
    return json.loads(path.read_text())


def load_prior(run_dir: str | Path, *, device: torch.device | str = "cpu") -> tuple[TokenPrior, dict[str, Any]]:
    """The newest checkpoint of a prior run: (prior in eval mode on ``device``, its ``prior.json``)."""
    info = read_prior_run(run_dir)
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise FileNotFoundError(f"{Path(run_dir) / CHECKPOINT_DIR}: no checkpoint of the prior")
    prior = build_prior(info["prior"]["kind"], **info["prior"]["args"])
    load_checkpoint(checkpoint, prior, None, restore_rng=False)
    return prior.to(device).eval(), info
