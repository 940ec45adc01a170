"""``vqkit ablate``: the ladder of Huh et al. 2023 and its comparisons, same data, model, seeds and budget.

Rungs (cumulative from ``plain`` to ``replace``; the comparisons start from plain STE + k-means init):

- ``plain``: plain straight-through VQ (``PLAIN_STE``: every fix off, random init)
- ``kmeans``: + k-means++ init of the codebook
- ``sync``: + synchronized commitment update (``sync_nu=1``)
- ``affine``: + learned affine re-parameterization of the codebook
- ``alternating``: + one alternating codebook step per training step
- ``replace``: + dead-code replacement (``dead_code_steps=20``)
- ``defaults``: ``VectorQuantizer`` with its default arguments, what users get (the library defaults
  may differ from the ladder's explicit settings, e.g. in the replacement period)
- ``ema``: comparison: k-means init + EMA codebook (decay 0.99) + dead-code replacement
- ``rotation``: comparison: k-means init + rotation-trick estimator
- ``fsq``: comparison: FSQ with the paper's levels for about K codes
- ``peer``: comparison: vector-quantize-pytorch ``VectorQuantize`` (EMA, ``kmeans_init=True``,
  ``threshold_ema_dead_code=2``); needs ``pip install vector-quantize-pytorch``

Settings a rung does not give (e.g. ``alternating_lr``, the loss weights, the codebook spec's fields) are the library
defaults of the moment; the table lists every argument as built, given and defaulted.

Each (rung, seed) trains into ``OUT/<rung>/seed<k>`` (finished runs are reused, so an interrupted
ablation continues where it stopped); the table ``OUT/ablation.md`` (+ ``ablation.json``) gives mean +-
std over seeds of the held-out usage, perplexity and MSE (or accuracy), and ``OUT/curves_*.png`` overlay
the held-out curves. ``fixes`` passes explicit keyword arguments to the vqkit VQ rungs that use the fix
(e.g. ``{"alternating_lr": 0.5}`` reaches the rungs with alternating steps; never ``defaults``).
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..quantizers.vector import PLAIN_STE
from .logging import read_metrics
from .plots import line_plot
from .recipe import QuantizerConfig, Recipe, RecipeError, to_toml

__all__ = ["Rung", "LADDER", "RUNG_NAMES", "run_ablation", "fsq_levels_near", "effective_arguments"]


def fsq_levels_near(codebook_size: int) -> list[int]:
    """FSQ levels (each >= 5 where possible, Mentzer et al. 2023) whose product is close to K."""
    table = {256: [8, 6, 5], 512: [8, 8, 8], 1024: [8, 5, 5, 5], 2048: [8, 8, 6, 5], 4096: [7, 5, 5, 5, 5],
             16384: [8, 8, 8, 6, 5], 65536: [8, 8, 8, 5, 5, 5]}
    best = min(table, key=lambda k: abs(math.log(k / codebook_size)))
    return table[best]


@dataclass(frozen=True)
class Rung:
    """One configuration: ``key`` (for ``--rungs``), table ``label``, and how it turns the base
    recipe's quantizer section into its own (``make(base, fixes) -> QuantizerConfig``)."""

    key: str
    label: str
    make: Callable[[QuantizerConfig, dict[str, Any]], QuantizerConfig] = field(repr=False)


def _codebook_size(base: QuantizerConfig) -> int:
    k = base.args.get("codebook_size")
    if not isinstance(k, int):
        raise RecipeError("quantizer.codebook_size: the ablation needs the base recipe's VQ codebook size")
    return k


def _vq(**flags: Any) -> Callable[[QuantizerConfig, dict[str, Any]], QuantizerConfig]:
    def make(base: QuantizerConfig, fixes: dict[str, Any]) -> QuantizerConfig:
        args = {**base.args, **PLAIN_STE, **flags}
        # explicit fix settings apply where the rung uses that fix (e.g. alternating_lr only with alternating steps)
        for k, v in fixes.items():
            uses = {
                    "sync_nu": args.get("sync_nu", 0) > 0, "dead_code_steps": args.get("dead_code_steps", 0) > 0,
                    "dead_code_threshold": args.get("dead_code_steps", 0) > 0,
                    "alternating_lr": args.get("alternating_steps", 0) > 0,
                    "alternating_reassign": args.get("alternating_steps", 0) > 0,
                    "alternating_steps": args.get("alternating_steps", 0) > 0}.get(k, True)
            if uses:
                args[k] = v
        return QuantizerConfig("vq", base.loss_weight, args)

    return make


def _defaults(base: QuantizerConfig, fixes: dict[str, Any]) -> QuantizerConfig:
    """VectorQuantizer as a user gets it: only the codebook size given (``fixes`` do not apply)."""
    return QuantizerConfig("vq", base.loss_weight, {"codebook_size": _codebook_size(base)})


def _fsq(base: QuantizerConfig, fixes: dict[str, Any]) -> QuantizerConfig:
    return QuantizerConfig("fsq", base.loss_weight, {"levels": fsq_levels_near(_codebook_size(base))})


def _peer(base: QuantizerConfig, fixes: dict[str, Any]) -> QuantizerConfig:
    from ..models.peer import PEER_BEST_PRACTICE

    return QuantizerConfig("vqpytorch", base.loss_weight, {"codebook_size": _codebook_size(base), **PEER_BEST_PRACTICE})


_KM = dict(kmeans_init=True)
_SYNC = dict(_KM, sync_nu=1.0)
_AFF = dict(_SYNC, codebook="affine")
_ALT = dict(_AFF, alternating_steps=1)
_REPLACE = dict(_ALT, dead_code_steps=20)

LADDER: tuple[Rung, ...] = (
    Rung("plain", "plain STE", _vq()),
    Rung("kmeans", "+ k-means init", _vq(**_KM)),
    Rung("sync", "+ sync commitment", _vq(**_SYNC)),
    Rung("affine", "+ affine", _vq(**_AFF)),
    Rung("alternating", "+ alternating", _vq(**_ALT)),
    Rung("replace", "+ dead-code replacement", _vq(**_REPLACE)),
    Rung("defaults", "vqkit defaults", _defaults),
    Rung("ema", "EMA codebook + replacement (k-means init)", _vq(**_KM, codebook={"kind": "ema", "decay": 0.99}, dead_code_steps=20)),
    Rung("rotation", "rotation trick (k-means init)", _vq(**_KM, estimator="rotation")),
    Rung("fsq", "FSQ", _fsq),
    Rung("peer", "vector-quantize-pytorch (EMA, k-means, dead code 2; its default rotation trick)", _peer),
)
RUNG_NAMES = tuple(r.key for r in LADDER)


def _peer_available() -> bool:
    try:
        import vector_quantize_pytorch  # noqa: F401
    except ImportError:
        return False
    return True


def _select(rungs: Sequence[str] | None) -> list[Rung]:
    if rungs is None:
        return [r for r in LADDER if r.key != "peer" or _peer_available()]
    by_key = {r.key: r for r in LADDER}
    unknown = [k for k in rungs if k not in by_key]
    if unknown:
        raise RecipeError(f"--rungs: unknown rung(s) {', '.join(unknown)}; valid: {', '.join(RUNG_NAMES)}")
    return [by_key[k] for k in rungs]


_QUIET = ("channel_dim", "check_finite", "memory_budget", "kmeans_iters",
          "codebook_dim", "metric")


def effective_arguments(q: QuantizerConfig) -> dict[str, Any]:
    """The quantizer's arguments as it will be built: given ones plus the class defaults (for vqkit's
    VectorQuantizer; a few arguments that do not change results are left out unless given), so the
    table records what ran even while the library defaults change."""
    args: dict[str, Any] = {"kind": q.kind, "loss_weight": q.loss_weight}
    if q.kind == "vq":
        import inspect

        from ..quantizers.vector import VectorQuantizer

        for name, p in inspect.signature(VectorQuantizer.__init__).parameters.items():
            if p.default is not p.empty and name not in _QUIET:
                args[name] = p.default
    args.update(q.args)
    return args


def _mean_std(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def _run_recipe(base: Recipe, rung: Rung, seed: int, fixes: dict[str, Any]) -> Recipe:
    recipe = Recipe.from_dict(base.to_dict())
    recipe.quantizer = rung.make(base.quantizer, fixes)
    recipe.seed = seed
    recipe.name = f"{base.name}/{rung.key}/seed{seed}"
    recipe.log.report = False
    recipe.log.progress = False
    recipe.log.checkpoint_every = 0
    return recipe.validate()


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
        rungs: subset of :data:`RUNG_NAMES` (default: all; ``peer`` only if installed).
        fixes: explicit VectorQuantizer keyword arguments for the vqkit VQ rungs that use that fix.
        command: the command line, recorded in the table's header.
        progress: print one line per finished run.
    Returns:
        path of ``ablation.md``.
    """
    from .trainer import train

    selected = _select(rungs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fixes = dict(fixes or {})
    results: dict[str, dict[str, Any]] = {}
    for rung in selected:
        per_seed = []
        for seed in seeds:
            recipe = _run_recipe(base, rung, seed, fixes)
            run_dir = out / rung.key / f"seed{seed}"
            summary_path = run_dir / "run.json"
            if summary_path.is_file() and (run_dir / "recipe.toml").read_text() == to_toml(recipe):
                summary = json.loads(summary_path.read_text())
                final, wall = summary["final"], summary["wall_time_s"]
            else:
                if run_dir.exists():  # an unfinished or outdated run: redo it
                    shutil.rmtree(run_dir)
                res = train(recipe, run_dir)
                final, wall = res.final, res.wall_time_s
            per_seed.append({"seed": seed, "wall_time_s": wall, **final})
            if progress:
                shown = ", ".join(f"{k} {v:.4g}" for k, v in final.items() if k != "quantizer_loss")
                print(f"[ablate] {rung.key:<12} seed {seed}: {shown} ({wall:.1f} s)", flush=True)
        metrics = [k for k in per_seed[0] if k != "seed"]
        results[rung.key] = {
            "label": rung.label,
            "quantizer": effective_arguments(rung.make(base.quantizer, fixes)),
            "runs": per_seed,
            "mean_std": {k: _mean_std([r[k] for r in per_seed if k in r]) for k in metrics},
        }
    total = sum(r["wall_time_s"] for res in results.values() for r in res["runs"])  # also right for reused runs
    task_metric = "mse" if base.model.kind == "vqvae" else "accuracy"
    import torch

    from .. import __version__

    payload = {"base_recipe": base.to_dict(), "seeds": list(seeds), "fixes": fixes, "command": command,
               "total_run_wall_time_s": round(total, 1), "threads": torch.get_num_threads(), "torch": torch.__version__,
               "vqkit": __version__, "results": results}
    (out / "ablation.json").write_text(json.dumps(payload, indent=1) + "\n")
    _write_curves(out, selected, seeds, task_metric)
    return _write_table(out, base, selected, seeds, results, task_metric, total, command, fixes)


def _write_curves(out: Path, rungs: list[Rung], seeds: Sequence[int], task_metric: str) -> None:
    for key in ("usage", "perplexity", task_metric):
        series, bands = {}, {}
        for rung in rungs:
            runs = [read_metrics(out / rung.key / f"seed{s}", "test") for s in seeds]
            steps = [r["step"] for r in runs[0] if key in r]
            if not steps:
                continue
            by_step = [[next(r[key] for r in run if r["step"] == st) for run in runs] for st in steps]
            stats = [_mean_std(v) for v in by_step]
            series[rung.label] = (steps, [m for m, _ in stats])
            bands[rung.label] = ([m - s for m, s in stats], [m + s for m, s in stats])
        if series:
            line_plot(out / f"curves_{key}.png", series, title=f"held-out {key} (mean +- std over seeds)",
                      ylabel=key, logy=key == "mse", bands=bands)


def _write_table(out: Path, base: Recipe, rungs: list[Rung], seeds: Sequence[int], results: dict[str, Any],
                 task_metric: str, total: float, command: str, fixes: dict[str, Any]) -> Path:
    import torch

    def cell(key: str, metric: str, scale: float = 1.0, digits: int = 1) -> str:
        if metric not in results[key]["mean_std"]:
            return "n/a"
        m, s = results[key]["mean_std"][metric]
        return f"{m * scale:.{digits}f} ± {s * scale:.{digits}f}"

    task_head, task_args = ("test MSE", ("mse", 1.0, 4)) if task_metric == "mse" else ("test accuracy (%)", ("accuracy", 100.0, 1))
    lines = [f"# Ablation: {base.name}", ""]
    if command:
        lines += ["```", command, "```", ""]
    lines += [f"Data {base.data.dataset}, model {base.model.kind} ({', '.join(f'{k}={v}' for k, v in base.model.args.items())}), "
              f"K = {base.quantizer.args.get('codebook_size', '?')}, quantizer loss weight {base.quantizer.loss_weight}, "
              f"{base.optim.name} lr {base.optim.lr}, batch {base.batch_size}, {base.steps} steps, seeds "
              f"{', '.join(map(str, seeds))}. Held-out metrics on the full test split at the last step, mean ± std "
              f"over seeds. Training wall time of all runs {total / 60:.1f} min ({torch.get_num_threads()} intra-op "
              f"thread(s); per run: data loading, training, evaluations)."]
    if fixes:
        lines += ["", f"Explicit fix settings for the vqkit VQ rungs: {', '.join(f'{k}={v!r}' for k, v in fixes.items())}."]
    lines += ["", f"| configuration | test usage (%) | test perplexity | {task_head} | wall time / run (s) |",
              "|---|---|---|---|---|"]
    for rung in rungs:
        r = results[rung.key]
        lines.append(f"| {r['label']} | {cell(rung.key, 'usage', 100.0)} | {cell(rung.key, 'perplexity')} | "
                     f"{cell(rung.key, *task_args)} | {cell(rung.key, 'wall_time_s')} |")
    lines += ["", "Quantizer arguments of each row (given and defaulted, as built):", ""]
    for rung in rungs:
        q = results[rung.key]["quantizer"]
        lines.append(f"- {rung.label}: `{', '.join(f'{k}={v!r}' for k, v in q.items())}`")
    lines += ["", "Curves: " + ", ".join(f"[{k}](curves_{k}.png)" for k in ("usage", "perplexity", task_metric))]
    path = out / "ablation.md"
    path.write_text("\n".join(lines) + "\n")
    return path
