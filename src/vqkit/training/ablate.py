"""``vqkit ablate``: the ladder of Huh et al. 2023 and its comparisons, same data, model, seeds and budget.

Rungs (cumulative from ``plain`` to ``replacement``, the switches of
:data:`vqkit.quantizers.vector.TECHNIQUES`; the comparisons start from plain STE + k-means init):

- ``plain``: plain straight-through VQ (``PLAIN_STE``: every fix off, random init)
- ``kmeans``: + k-means++ init of the codebook
- ``sync``: + synchronized commitment update (``sync_nu=1``)
- ``affine``: + learned affine re-parameterization of the codebook
- ``alternating``: + one alternating codebook step per training step
- ``replacement``: + dead-code replacement (``dead_code_steps=20``): the paper's full method, ``PAPER``
- ``defaults``: ``VectorQuantizer`` with its default arguments, what users get (the library defaults
  may differ from the ladder's explicit settings, e.g. in the replacement period)
- ``ema``: comparison: k-means init + EMA codebook (decay 0.99) + dead-code replacement
- ``rotation``: comparison: k-means init + rotation-trick estimator
- ``fsq``: comparison: FSQ with the paper's levels for about K codes
- ``peer``: comparison: vector-quantize-pytorch ``VectorQuantize`` (EMA, ``kmeans_init=True``,
  ``threshold_ema_dead_code=2``); needs ``pip install vector-quantize-pytorch``

Settings a rung does not give (e.g. ``alternating_lr``, the loss weights, the codebook spec's fields) are the library
defaults of the moment; the table lists every argument as built, given and defaulted.

Each (rung, seed) trains into ``OUT/<rung>/seed<k>`` (finished runs are reused and unfinished ones
resume from their checkpoint, so an interrupted ablation continues where it stopped); the table
``OUT/ablation.md`` (+ ``ablation.json``) gives the held-out usage, perplexity and MSE (or accuracy) as
mean ± std over seeds (the plain value for one seed), says which test images they were measured on,
and lists a rung whose package is missing as not run; ``OUT/curves_*.png`` overlay the held-out curves. ``fixes`` passes explicit keyword arguments to the vqkit VQ rungs that use the fix
(e.g. ``{"alternating_lr": 0.5}`` reaches the rungs with alternating steps; never ``defaults``).
"""

from __future__ import annotations

import inspect
import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..quantizers.vector import VectorQuantizer
from .build import build_from_recipe, load_datasets
from .console import note, warn
from .logging import read_metrics
from .plots import line_plot
from .recipe import QuantizerConfig, Recipe, RecipeError, to_toml
from .rungs import LADDER, RUNG_NAMES, RUNGS, Rung
from .rundir import ABLATION_JSON_FILE, ABLATION_TABLE_FILE, RunDir, ablation_run_dir, curves_file
from .trainer import TrainingInterrupted, train

__all__ = ["Rung", "LADDER", "RUNG_NAMES", "run_ablation", "effective_arguments"]


PEER_PACKAGE = "vector-quantize-pytorch"
PEER_MISSING = f"not run: {PEER_PACKAGE} is not installed (pip install 'vqkit[bench]')"


def _peer_available() -> bool:
    try:
        import vector_quantize_pytorch  # noqa: F401  (optional dependency)
    except ImportError:
        return False
    return True


def _select(rungs: Sequence[str] | None) -> tuple[list[Rung], list[Rung]]:
    """``(rungs to run, rungs left out because their package is missing)``."""
    if rungs is None:
        peer_ok = _peer_available()
        return [r for r in LADDER if r.key != "peer" or peer_ok], [r for r in LADDER if r.key == "peer" and not peer_ok]
    by_key = RUNGS
    unknown = [k for k in rungs if k not in by_key]
    if unknown:
        raise RecipeError(f"--rungs: unknown rung(s) {', '.join(unknown)}; valid: {', '.join(RUNG_NAMES)}")
    if "peer" in rungs and not _peer_available():
        raise ImportError(f"--rungs peer: needs {PEER_PACKAGE} (pip install 'vqkit[bench]')")
    return [by_key[k] for k in rungs], []


_QUIET = ("channel_dim", "check_finite", "memory_budget", "kmeans_iters",
          "codebook_dim", "metric")


def effective_arguments(q: QuantizerConfig) -> dict[str, Any]:
    """The quantizer's arguments as it will be built: given ones plus the class defaults (for vqkit's
    VectorQuantizer; a few arguments that do not change results are left out unless given), so the
    table records what ran even while the library defaults change."""
    args: dict[str, Any] = {"kind": q.kind, "loss_weight": q.loss_weight}
    if q.kind == "vq":
        for name, p in inspect.signature(VectorQuantizer.__init__).parameters.items():
            if p.default is not p.empty and name not in _QUIET:
                args[name] = p.default
    args.update(q.args)
    return args


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample std over seeds; std None for one seed (there is no spread to report)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return mean, std


def _run_recipe(base: Recipe, rung: Rung, seed: int, fixes: dict[str, Any]) -> Recipe:
    recipe = Recipe.from_dict(base.to_dict())
    recipe.quantizer = rung.make(base.quantizer, fixes)
    recipe.seed = seed
    recipe.name = f"{base.name}/{rung.key}/seed{seed}"
    recipe.log.report = False
    recipe.log.keep_checkpoints = 1
    return recipe.validate()


def _finished(run: RunDir, recipe: Recipe) -> dict[str, Any] | None:
    """The summary of a finished run of exactly ``recipe`` in ``run``, else None."""
    try:
        if run.recipe.read_text() != to_toml(recipe):
            return None
        summary = json.loads(run.summary.read_text())
        return summary if summary.get("steps") == recipe.steps and isinstance(summary.get("final"), dict) else None
    except (OSError, ValueError, AttributeError):
        return None


def _shown_metrics(final: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in final.items() if k != "quantizer_loss")


def run_ablation(
    base: Recipe,
    out_dir: str | Path,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    rungs: Sequence[str] | None = None,
    fixes: dict[str, Any] | None = None,
    command: str = "",
    progress: bool = True,
) -> Path:
    """Train every rung for every seed on ``base``'s data / model / budget; write the table and plots.

    Args:
        base: the recipe all runs share (its quantizer section supplies ``codebook_size`` and
            ``loss_weight``; its seed is replaced by each of ``seeds``).
        out_dir: where runs, ``ablation.md``, ``ablation.json`` and ``curves_*.png`` go.
        seeds: seeds of every rung.
        rungs: subset of :data:`RUNG_NAMES` (default: all; ``peer`` is listed as not run when its
            package is missing).
        fixes: explicit VectorQuantizer keyword arguments for the vqkit VQ rungs that use that fix.
        command: the command line, recorded in the table's header.
        progress: a ``[k/N]`` line per run, a progress bar while it trains, and status lines.
    Returns:
        path of ``ablation.md``.
    """
    selected, missing = _select(rungs)
    seeds = list(seeds)
    if not seeds:
        raise RecipeError("--seeds: give at least one seed")
    fixes = dict(fixes or {})
    for rung in missing:
        warn(f"{rung.label}: {PEER_MISSING}; the table lists it as not run", enabled=progress)
    # every configuration must build before anything is trained or written
    plan = [(rung, seed, _run_recipe(base, rung, seed, fixes)) for rung in selected for seed in seeds]
    _, test_ds = load_datasets(base)
    for rung in selected:
        build_from_recipe(_run_recipe(base, rung, seeds[0], fixes), test_ds)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict[str, Any]]] = {r.key: [] for r in selected}
    total_runs = len(plan)
    for k, (rung, seed, recipe) in enumerate(plan, 1):
        tag = f"[{k}/{total_runs}] {rung.key} seed {seed}"
        run = RunDir(ablation_run_dir(out, rung.key, seed))
        recipe.log.progress = progress
        summary = _finished(run, recipe)
        if summary is not None:
            final, wall = summary["final"], summary["wall_time_s"]
            note(f"{tag}: reusing the finished run in {run.root}: {_shown_metrics(final)}", enabled=progress)
        else:
            resumable = run.recipe.is_file() and run.recipe.read_text() == to_toml(recipe) and run.step_dirs()
            if not resumable and run.root.exists():  # an outdated run, or one stopped before any checkpoint
                shutil.rmtree(run.root)
            note(f"{tag}: {'resuming' if resumable else 'training'} ({recipe.steps} steps) in {run.root}",
                 enabled=progress)
            try:
                res = train(recipe, run.root, resume=bool(resumable), label=tag)
            except TrainingInterrupted as e:
                raise TrainingInterrupted(e.signum, e.step, e.checkpoint, e.run_dir, e.rank,
                                          hint=f"run the same `vqkit ablate` command (--out {out}) again to "
                                               "continue the ablation") from None
            final = res.final
            wall = json.loads(run.summary.read_text())["wall_time_s"]  # all sessions of the run
            note(f"{tag}: {_shown_metrics(final)} ({wall:.1f} s)", enabled=progress)
        runs[rung.key].append({"seed": seed, "wall_time_s": wall, **final})
    results: dict[str, dict[str, Any]] = {}
    for rung in selected:
        per_seed = runs[rung.key]
        metrics = [m for m in per_seed[0] if m != "seed"]
        results[rung.key] = {
            "label": rung.label,
            "quantizer": effective_arguments(rung.make(base.quantizer, fixes)),
            "runs": per_seed,
            "mean_std": {m: _mean_std([r[m] for r in per_seed if m in r]) for m in metrics},
        }
    for rung in missing:
        results[rung.key] = {"label": rung.label, "not_run": PEER_MISSING}
    total = sum(r["wall_time_s"] for res in results.values() for r in res.get("runs", []))  # also right for reused runs
    task_metric = "mse" if base.model.kind == "vqvae" else "accuracy"
    eval_scope = _eval_scope(base, len(test_ds))
    note(f"writing {ABLATION_TABLE_FILE}, {ABLATION_JSON_FILE} and the curves to {out}", enabled=progress)
    payload = {"base_recipe": base.to_dict(), "seeds": seeds, "fixes": fixes, "command": command,
               "evaluated_on": eval_scope, "total_run_wall_time_s": round(total, 1),
               "threads": torch.get_num_threads(), "torch": torch.__version__, "vqkit": __version__,
               "results": results}
    (out / ABLATION_JSON_FILE).write_text(json.dumps(payload, indent=1) + "\n")
    _write_curves(out, selected, seeds, task_metric)
    return _write_table(out, base, selected, missing, seeds, results, task_metric, total, command, fixes, eval_scope)


def _eval_scope(base: Recipe, n_test: int) -> str:
    limit = base.data.eval_limit
    if 0 < limit < n_test:
        return f"the first {limit} of the {n_test} test images (data.eval_limit = {limit})"
    return f"the full test split ({n_test} images)"


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _seeds_text(seeds: Sequence[int]) -> str:
    return f"mean ± std over {len(seeds)} seeds" if len(seeds) > 1 else f"one seed ({seeds[0]}), no spread"


def _write_curves(out: Path, rungs: list[Rung], seeds: Sequence[int], task_metric: str) -> None:
    for key in ("usage", "perplexity", task_metric):
        series, bands = {}, {}
        for rung in rungs:
            runs = [read_metrics(ablation_run_dir(out, rung.key, s), "test") for s in seeds]
            steps = [r["step"] for r in runs[0] if key in r]
            if not steps:
                continue
            by_step = [[next(r[key] for r in run if r["step"] == st) for run in runs] for st in steps]
            stats = [_mean_std(v) for v in by_step]
            series[rung.label] = (steps, [m for m, _ in stats])
            if len(seeds) > 1:
                bands[rung.label] = ([m - s for m, s in stats], [m + s for m, s in stats])
        if series:
            what = _seeds_text(seeds).replace(", no spread", "")
            line_plot(curves_file(out, key), series, title=f"held-out {key} ({what})", ylabel=key,
                      logy=key == "mse", bands=bands or None)


def _write_table(out: Path, base: Recipe, rungs: list[Rung], missing: list[Rung], seeds: Sequence[int],
                 results: dict[str, Any], task_metric: str, total: float, command: str, fixes: dict[str, Any],
                 eval_scope: str) -> Path:
    def cell(key: str, metric: str, scale: float = 1.0, digits: int = 1) -> str:
        if metric not in results[key]["mean_std"]:
            return "n/a"
        m, s = results[key]["mean_std"][metric]
        return f"{m * scale:.{digits}f}" if s is None else f"{m * scale:.{digits}f} ± {s * scale:.{digits}f}"

    task_head, task_args = ("test MSE", ("mse", 1.0, 4)) if task_metric == "mse" else ("test accuracy (%)", ("accuracy", 100.0, 1))
    lines = [f"# Ablation: {base.name}", ""]
    if command:
        lines += ["```", command, "```", ""]
    lines += [f"Data {base.data.dataset}, model {base.model.kind} ({', '.join(f'{k}={v}' for k, v in base.model.args.items())}), "
              f"K = {base.quantizer.args.get('codebook_size', '?')}, quantizer loss weight {base.quantizer.loss_weight}, "
              f"{base.optim.name} lr {base.optim.lr}, batch {base.batch_size}, {base.steps} steps, seeds "
              f"{', '.join(map(str, seeds))}. Held-out metrics on {eval_scope} at the last step, "
              f"{_seeds_text(seeds)}. Training wall time of all runs {_duration(total)} ({torch.get_num_threads()} "
              f"intra-op thread(s); per run: data loading, training, evaluations)."]
    if fixes:
        lines += ["", f"Explicit fix settings for the vqkit VQ rungs: {', '.join(f'{k}={v!r}' for k, v in fixes.items())}."]
    lines += ["", f"| configuration | test usage (%) | test perplexity | {task_head} | wall time / run (s) |",
              "|---|---|---|---|---|"]
    for rung in rungs:
        r = results[rung.key]
        lines.append(f"| {r['label']} | {cell(rung.key, 'usage', 100.0)} | {cell(rung.key, 'perplexity')} | "
                     f"{cell(rung.key, *task_args)} | {cell(rung.key, 'wall_time_s')} |")
    for rung in missing:
        lines.append(f"| {rung.label} | {results[rung.key]['not_run']} | | | |")
    lines += ["", "Quantizer arguments of each row (given and defaulted, as built):", ""]
    for rung in rungs:
        q = results[rung.key]["quantizer"]
        lines.append(f"- {rung.label}: `{', '.join(f'{k}={v!r}' for k, v in q.items())}`")
    lines += ["", "Curves: " + ", ".join(f"[{k}]({curves_file(out, k).name})" for k in ("usage", "perplexity", task_metric))]
    path = out / ABLATION_TABLE_FILE
    path.write_text("\n".join(lines) + "\n")
    return path
