"""What ``--resume`` continues: the run's recipe and its newest intact checkpoint, checked before
anything in the run directory is written.

- The recipe comes from ``recipe.toml``, which must be complete (``vqkit train`` writes every key); when
  it is missing, empty or broken, the recipe stored with the newest readable checkpoint is used instead,
  and the user is told so.
- The checkpoint is the newest one that :func:`~vqkit.training.checkpoint.read_checkpoint` accepts
  for the recipe's model and optimizer; newer corrupt ones are reported and set aside
  (``checkpoints/.corrupt-step_...``); with no intact checkpoint at all the resume is refused (a run
  without any checkpoint restarts from step 0).
- ``steps`` below the checkpoint's step is refused; ``metrics.jsonl`` must be readable (a torn last line
  is dropped, with a note).
- A quantizer argument the recipe leaves unset whose library default changed after the release that wrote
  the checkpoint (:data:`~vqkit.quantizers.vector.DEFAULT_CHANGES`) is refused until the recipe pins it, so a
  resumed run never switches settings silently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..quantizers.vector import DEFAULT_CHANGES, DefaultChange, VectorQuantizer
from .checkpoint import Checkpoint, CheckpointError, converted_affine_codebooks, find_checkpoint, peek_state, release_tuple
from .console import note
from .logging import MetricsFileError, scan_metrics
from .recipe import Recipe, RecipeError, read_recipe_file, recipe_differences
from .rundir import RunDir

__all__ = ["resume_recipe", "ResumePlan", "plan_resume", "stale_defaults"]


def _checkpoint_recipe(run: RunDir) -> tuple[Recipe, Path] | None:
    """The recipe stored in the newest checkpoint whose ``state.json`` holds a valid one."""
    for _, path in reversed(run.step_dirs()):
        state = peek_state(path)
        if state is None:
            continue
        try:
            return Recipe.from_dict(state["recipe"]), path
        except (ValueError, KeyError, TypeError):
            continue
    return None


def resume_recipe(out: str | Path, notes: list[str] | None = None) -> Recipe:
    """The recipe ``--resume`` continues in run directory ``out``; a note about a fallback to a
    checkpoint's copy is appended to ``notes`` (printed when None).

    Raises:
        FileNotFoundError: ``out`` is not a run directory.
        RecipeError: ``recipe.toml`` is unusable and no checkpoint holds a recipe; the message says how
            to restore it.
    """
    run = RunDir(out)
    if not run.root.is_dir():
        raise FileNotFoundError(f"--resume: {run.root} does not exist; start a run there without --resume")
    try:
        return read_recipe_file(run.recipe, complete=True)
    except (FileNotFoundError, RecipeError) as e:
        problem = str(e)
    fallback = _checkpoint_recipe(run)
    if fallback is None:
        if not run.recipe.exists() and not run.holds_run():
            raise FileNotFoundError(f"--resume: {run.root} is not a run directory (no {run.recipe.name}, "
                                    "no checkpoints)")
        raise RecipeError(f"--resume: {problem}; no checkpoint holds a copy of the recipe either: restore the "
                          f"file (e.g. `vqkit recipes NAME > {run.recipe}` plus the changes you ran with) or "
                          "start over with another --out")
    recipe, path = fallback
    message = (f"warning: {problem}; using the recipe stored with checkpoint {path.name} instead "
               f"({run.recipe.name} will be rewritten)")
    if notes is None:
        note(message)
    else:
        notes.append(message)
    return recipe


#: checkpoints written by vqkit up to this release do not record it
LAST_UNRECORDED = "0.2.0"


def stale_defaults(model: nn.Module, written_by: str | None) -> list[tuple[str, DefaultChange]]:
    """``(module name, change)`` (the name ``""`` for ``model`` itself) for every :class:`~vqkit.quantizers.VectorQuantizer` in ``model`` that takes
    from the library default an argument whose default changed after release ``written_by`` (None or
    unreadable: a checkpoint that does not record its release, so every change counts)."""
    release = release_tuple(written_by)
    out = []
    for name, module in model.named_modules():
        if not isinstance(module, VectorQuantizer):
            continue
        for change in DEFAULT_CHANGES:
            newer = release is None or release < release_tuple(change.since)
            if newer and change.argument in module.defaulted:
                out.append((name, change))
    return out


def _written_by(run: RunDir, ckpt: Checkpoint) -> str | None:
    """The release that wrote ``ckpt``: recorded in it, or else in the run's ``run.json`` when that summary
    belongs to the session that wrote the checkpoint (a finished run whose last step is the checkpoint's)."""
    if "vqkit" in ckpt.state:
        return ckpt.state["vqkit"]
    try:
        summary = json.loads(run.summary.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(summary, dict) and summary.get("steps") == ckpt.step:
        return summary.get("vqkit")
    return None


def _check_defaults(run: RunDir, ckpt: Checkpoint, model: nn.Module) -> None:
    written_by = _written_by(run, ckpt)
    stale = stale_defaults(model, written_by)
    if not stale:
        return
    known = release_tuple(written_by) is not None
    who = f"vqkit {written_by}" if known else \
        f"a vqkit release that did not record itself in checkpoints ({LAST_UNRECORDED} or older)"
    lines = []
    for change in dict.fromkeys(c for _, c in stale):
        names = [n for n, c in stale if c == change]
        if change.pin_buffer is None:
            pins = [change.pin]
        else:
            keys = [f"{n}.{change.pin_buffer}".lstrip(".") for n in names]
            pins = sorted({int(ckpt.model_tensors[k]) for k in keys if k in ckpt.model_tensors})
        pin = " or ".join(f"--set quantizer.{change.argument}={p!r}" for p in pins) or \
            f"--set quantizer.{change.argument}=VALUE"
        advice = f"pin it: {pin} continues as the run started before {change.since}"
        if change.pin_buffer is not None:
            advice += " (or give another value explicitly)"
        elif not known and release_tuple(change.since) <= release_tuple(LAST_UNRECORDED):
            advice += f", --set quantizer.{change.argument}={change.new} if it started with {change.since} or later"
        lines.append(f"{change.argument}: {change.old} before vqkit {change.since}, {change.new} since, and this "
                     f"run takes it from the library ({', '.join(n or 'model' for n in names)}); {advice}")
    raise RecipeError(f"--resume: checkpoint {ckpt.path.name} was written by {who}, this is vqkit {__version__}; "
                      + "; ".join(lines))


@dataclass
class ResumePlan:
    """What a checked resume does: the checkpoint to continue from (None: restart at step 0), the
    corrupt newer checkpoints to set aside, whether ``metrics.jsonl`` has a torn last line, and the notes
    to show once writing starts."""

    checkpoint: Checkpoint | None
    corrupt: list[tuple[Path, CheckpointError]] = field(default_factory=list)
    torn_metrics: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def step(self) -> int:
        return 0 if self.checkpoint is None else self.checkpoint.step


def _shown(value: Any) -> str:
    return "(unset)" if value is None else repr(value)


def plan_resume(run: RunDir, recipe: Recipe, model: nn.Module, optimizer: torch.optim.Optimizer) -> ResumePlan:
    """Check everything ``--resume`` will read (nothing is written).

    Raises:
        CheckpointError: checkpoints exist but none is intact.
        RecipeError: ``recipe.steps`` is below the step the run already reached, or the recipe leaves unset
            an argument whose library default changed since the checkpoint's release (see :func:`stale_defaults`).
        MetricsFileError: ``metrics.jsonl`` has a bad line before its last one.
    """
    ckpt, corrupt = find_checkpoint(run.root, model, optimizer)
    if ckpt is None and corrupt:
        reasons = "; ".join(str(e) for _, e in corrupt)
        raise CheckpointError(f"--resume: no intact checkpoint in {run.checkpoints}: {reasons}. Delete "
                              f"{run.checkpoints} to restart the run from step 0, or start over with another --out")
    plan = ResumePlan(ckpt, corrupt)
    for path, error in corrupt:
        plan.notes.append(f"warning: {error}; resuming from the older intact checkpoint "
                          f"{ckpt.path.name} instead ({path.name} is set aside as .corrupt-{path.name})")
    if ckpt is None:
        plan.notes.append(f"no checkpoint in {run.root} yet: restarting the run from step 0")
    else:
        _check_defaults(run, ckpt, model)
        if ckpt.step > recipe.steps:
            raise RecipeError(f"steps: {recipe.steps} is below the {ckpt.step} steps this run already trained "
                              f"({ckpt.path}); to continue it give --set steps=N with N >= {ckpt.step}, to train "
                              "a shorter run use another --out")
        saved = ckpt.state.get("recipe")
        if isinstance(saved, dict):
            try:
                saved = Recipe.from_dict(saved).to_dict()
            except (RecipeError, TypeError):
                pass
            changed = recipe_differences(saved, recipe.to_dict())
            if changed:
                shown = ", ".join(f"{k} {_shown(a)} -> {_shown(b)}" for k, a, b in changed)
                plan.notes.append(f"continuing with a recipe that differs from the one checkpoint {ckpt.path.name} "
                                  f"was trained with: {shown}")
                old_steps = saved.get("steps") if isinstance(saved, dict) else None
                if (recipe.optim.schedule == "cosine" and isinstance(old_steps, int) and old_steps != recipe.steps
                        and ckpt.step < recipe.steps):
                    plan.notes.append(f"warning: with the cosine schedule the learning rate from step {ckpt.step} "
                                      f"on follows the new length ({recipe.steps} steps), so the run is not the "
                                      f"same as one trained for {recipe.steps} steps from the start")
        threads = ckpt.state.get("threads")
        if isinstance(threads, int) and threads != torch.get_num_threads():
            plan.notes.append(f"warning: {ckpt.path.name} was trained with {threads} intra-op thread(s), this "
                              f"session uses {torch.get_num_threads()}: float sums may round differently, so the "
                              f"result can differ in the last bits from an uninterrupted run (pass --threads "
                              f"{threads} to match it)")
        converted = converted_affine_codebooks(model, ckpt.state.get("vqkit"))
        if converted:
            plan.notes.append(f"warning: {ckpt.path.name} was written by vqkit {ckpt.state.get('vqkit') or LAST_UNRECORDED + ' or older'} "
                              f"with the affine codebook's linear scale 1 + a s ({', '.join(converted)}); it loads "
                              f"as vqkit {__version__}'s positive scale with the same codes and trains on with it (the "
                              f"optimizer state of those codebooks' weights and scale starts over), so the result "
                              f"is not the run that release would have finished")
        plan.notes.append(f"resuming from {ckpt.path.name} (step {ckpt.step} of {recipe.steps})")
    try:
        records, plan.torn_metrics = scan_metrics(run.metrics)
    except MetricsFileError as e:
        raise MetricsFileError(f"--resume: {e}, or start over with another --out") from None
    if plan.torn_metrics:
        plan.notes.append(f"warning: {run.metrics}: dropped a torn last line (a write interrupted by a kill)")
    if ckpt is not None and not records:
        plan.notes.append(f"warning: {run.metrics} is missing or empty: the log of the first {ckpt.step} steps "
                          "is lost (training itself continues from the checkpoint)")
    return plan
