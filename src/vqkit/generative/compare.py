"""``vqkit genablate``: the generative comparison of tokenizers, one command.

For each tokenizer row and seed: train the tokenizer (a ``vqkit train`` run of the base recipe with the
row's quantizer), encode the train and test splits, train the prior (a ``vqkit prior`` run of the prior
recipe), sample and measure (:func:`~vqkit.generative.pipeline.run_prior`). One table,
``OUT/generative.md`` (+ ``generative.json``): the tokenizer's held-out usage, perplexity and MSE, the
reconstruction FD of its test tokens, the prior's generation FD, precision, recall and conditional
accuracy, as mean ± std over seeds. Every run uses the same feature network (``OUT/features``, trained
once, deterministically) and the same reference set, so the FD values of the table are comparable with
each other (and with nothing else: see :data:`~vqkit.generative.pipeline.FD_CAVEAT`).

Rows (:data:`GENERATIVE_ROWS`; the quantizer of each comes from :mod:`vqkit.training.rungs` where it is
defined there, so ``vqkit ablate`` and this table describe a configuration the same way):

- ``plain_replacement``: plain straight-through VQ + dead-code replacement (``PLAIN_STE`` +
  ``TECHNIQUES["replacement"]``)
- ``replacement``: the paper's full method (every technique of ``TECHNIQUES``; the last rung of the ladder)
- ``defaults``: ``VectorQuantizer`` with its default arguments
- ``peer``: vector-quantize-pytorch's best practical configuration (needs the package; listed as not run
  when it is missing and no rows are given)
- ``fsq``: FSQ with levels for about K codes
- ``lfq``: lookup-free quantization with K = 2^d codes (the ladder's ``lfq`` rung when it defines one)

Run directories: ``OUT/<row>/seed<k>/tokenizer`` and ``.../prior``. Finished runs are reused (same recipe,
and for a prior the same tokenizer fingerprint), interrupted ones resume from their checkpoints, outdated
ones are trained again, so an interrupted comparison continues where it stopped when the same command
runs again.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..quantizers.vector import PLAIN_STE, TECHNIQUES
from ..training import QuantizerConfig, Recipe, RecipeError, TrainingInterrupted, build_from_recipe, to_toml, train
from ..training.ablate import PEER_MISSING, effective_arguments
from ..training.console import note, warn
from ..training.rundir import GENERATIVE_JSON_FILE, GENERATIVE_TABLE_FILE, RunDir, generative_run_dirs
from ..training.rungs import RUNGS, Rung
from ..data import load_dataset
from .pipeline import FD_CAVEAT, load_tokenizer, run_prior
from .recipe import PriorRecipe, prior_recipe_to_toml
from .trainer import read_prior_run, read_summary

__all__ = ["GENERATIVE_ROWS", "generative_rows", "run_generative_comparison"]


def _peer_available() -> bool:
    try:
        import vector_quantize_pytorch  # noqa: F401  (optional dependency)
    except ImportError:
        return False
    return True


def _codebook_size(base: QuantizerConfig) -> int:
    k = base.args.get("codebook_size")
    if not isinstance(k, int):
        raise RecipeError("quantizer.codebook_size: the generative comparison needs the base recipe's VQ codebook size")
    return k


def _plain_replacement(base: QuantizerConfig, fixes: dict[str, Any]) -> QuantizerConfig:
    return QuantizerConfig("vq", base.loss_weight, {**base.args, **PLAIN_STE, **TECHNIQUES["replacement"]})


def _lfq(base: QuantizerConfig, fixes: dict[str, Any]) -> QuantizerConfig:
    k = _codebook_size(base)
    if k & (k - 1):
        raise RecipeError(f"quantizer.codebook_size: the lfq row needs a power of two (K = 2^d codes), got {k}")
    return QuantizerConfig("lfq", base.loss_weight, {"codebook_size": k})


#: the rows of the generative table, in order, with their labels
GENERATIVE_ROWS: dict[str, str] = {
    "plain_replacement": "plain STE + replacement",
    "replacement": "paper's full method (all fixes)",
    "defaults": "vqkit defaults",
    "peer": "vector-quantize-pytorch (best practice)",
    "fsq": "FSQ",
    "lfq": "LFQ",
}

# rows the ladder does not define (yet): defined here
_LOCAL: dict[str, Any] = {"plain_replacement": _plain_replacement, "lfq": _lfq}


def generative_rows(keys: Sequence[str] | None = None) -> tuple[list[Rung], list[Rung]]:
    """``(rows to run, rows left out because their package is missing)`` for ``keys`` (default: all)."""
    if keys is not None:
        unknown = [k for k in keys if k not in GENERATIVE_ROWS]
        if unknown:
            raise RecipeError(f"--rows: unknown row(s) {', '.join(unknown)}; valid: {', '.join(GENERATIVE_ROWS)}")
        if "peer" in keys and not _peer_available():
            raise ImportError("--rows peer: needs vector-quantize-pytorch (pip install 'vqkit[bench]')")
    chosen = list(GENERATIVE_ROWS) if keys is None else list(dict.fromkeys(keys))
    rows = [Rung(k, GENERATIVE_ROWS[k], RUNGS[k].make if k in RUNGS else _LOCAL[k]) for k in chosen]
    peer_ok = keys is not None or _peer_available()
    return [r for r in rows if r.key != "peer" or peer_ok], [r for r in rows if r.key == "peer" and not peer_ok]


def _tokenizer_recipe(base: Recipe, row: Rung, seed: int, progress: bool) -> Recipe:
    recipe = Recipe.from_dict(base.to_dict())
    recipe.quantizer = row.make(base.quantizer, {})
    recipe.seed = seed
    recipe.name = f"{base.name}/{row.key}/seed{seed}"
    recipe.log.report = False
    recipe.log.keep_checkpoints = 1
    recipe.log.progress = progress
    return recipe.validate()


def _prior_recipe(prior: PriorRecipe, row: Rung, seed: int, tokenizer_dir: Path, features: Path,
                  progress: bool) -> PriorRecipe:
    recipe = PriorRecipe.from_dict(prior.to_dict())
    recipe.name = f"{prior.name}/{row.key}/seed{seed}"
    recipe.tokenizer = str(tokenizer_dir)
    recipe.seed = seed
    recipe.metrics.enabled = True
    recipe.metrics.features_dir = str(features)
    recipe.log.keep_checkpoints = 1
    recipe.log.progress = progress
    return recipe.validate()


def _same_text(path: Path, text: str) -> bool:
    try:
        return path.read_text() == text
    except OSError:
        return False


def _train_tokenizer(recipe: Recipe, run: RunDir, tag: str, progress: bool) -> dict[str, Any]:
    """The tokenizer run's summary: reused when finished with exactly ``recipe``, resumed when it has a
    checkpoint of it, trained from scratch otherwise."""
    text = to_toml(recipe)
    summary = read_summary(run.root) if _same_text(run.recipe, text) else None
    if summary and summary.get("steps") == recipe.steps and isinstance(summary.get("final"), dict):
        note(f"{tag}: reusing the finished tokenizer in {run.root}", enabled=progress)
        return summary
    resumable = _same_text(run.recipe, text) and bool(run.step_dirs())
    if not resumable and run.root.exists():
        shutil.rmtree(run.root)
    note(f"{tag}: {'resuming' if resumable else 'training'} the tokenizer ({recipe.steps} steps) in {run.root}",
         enabled=progress)
    train(recipe, run.root, resume=resumable, label=f"{tag} tokenizer")
    return read_summary(run.root) or {}


def _run_prior(recipe: PriorRecipe, run: RunDir, tag: str, progress: bool) -> dict[str, Any]:
    """The prior run's summary (with ``quality``): reused when finished with exactly ``recipe`` on the
    current tokenizer, resumed when it has a checkpoint of that, trained from scratch otherwise."""
    fingerprint = load_tokenizer(recipe.tokenizer).fingerprint
    same = _same_text(run.recipe, prior_recipe_to_toml(recipe))
    try:
        same = same and read_prior_run(run.root).get("tokenizer", {}).get("fingerprint") == fingerprint
    except (FileNotFoundError, ValueError):
        same = False
    summary = read_summary(run.root) if same else None
    if summary and isinstance(summary.get("quality"), dict) and summary.get("steps") == recipe.steps:
        note(f"{tag}: reusing the finished prior in {run.root}", enabled=progress)
        return summary
    resumable = same and bool(run.step_dirs())
    if not resumable and run.root.exists():
        shutil.rmtree(run.root)
    note(f"{tag}: {'resuming' if resumable else 'training'} the prior ({recipe.steps} steps) in {run.root}",
         enabled=progress)
    run_prior(recipe, run.root, resume=resumable, label=f"{tag} prior")
    return read_summary(run.root) or {}


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample std over seeds; std None for one seed."""
    n = len(values)
    mean = sum(values) / n
    return mean, (math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None)


#: the table's metrics: (json key, column header, scale, digits)
_COLUMNS: tuple[tuple[str, str, float, int], ...] = (
    ("usage", "tokenizer usage (%)", 100.0, 1),
    ("perplexity", "perplexity", 1.0, 1),
    ("mse", "test MSE", 1.0, 4),
    ("recon_fd", "reconstruction FD", 1.0, 2),
    ("gen_fd", "generation FD", 1.0, 2),
    ("gen_precision", "precision", 1.0, 3),
    ("gen_recall", "recall", 1.0, 3),
    ("gen_accuracy", "conditional accuracy (%)", 100.0, 1),
    ("wall_time_s", "wall time / run (s)", 1.0, 0),
)


def _record(seed: int, tok: dict[str, Any], prior: dict[str, Any]) -> dict[str, Any]:
    q = prior["quality"]
    record: dict[str, Any] = {"seed": seed}
    record.update({k: tok["final"][k] for k in ("usage", "perplexity", "mse") if k in tok.get("final", {})})
    for prefix, key in (("recon", "reconstruction"), ("gen", "generation")):
        for m in ("fd", "precision", "recall", "accuracy"):
            if q[key].get(m) is not None:
                record[f"{prefix}_{m}"] = q[key][m]
    record["prior_loss"] = prior.get("final", {}).get("loss")
    record["prior_val_loss"] = prior.get("final", {}).get("val_loss")
    record["tokenizer_wall_time_s"] = tok.get("wall_time_s", 0.0)
    record["prior_wall_time_s"] = prior.get("wall_time_s", 0.0)
    record["metrics_wall_time_s"] = q.get("wall_time_s", 0.0)
    record["wall_time_s"] = record["tokenizer_wall_time_s"] + record["prior_wall_time_s"] + record["metrics_wall_time_s"]
    record["feature_net_sha256"] = q["feature_net"]["sha256"]
    return {k: v for k, v in record.items() if v is not None}


def run_generative_comparison(
    base: Recipe,
    prior: PriorRecipe,
    out_dir: str | Path,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    rows: Sequence[str] | None = None,
    command: str = "",
    progress: bool = True,
) -> Path:
    """Tokenizer rows x seeds -> tokens -> prior -> samples -> metrics; writes the table and its json.

    Args:
        base: the tokenizer recipe all rows share (a VQ-VAE; its quantizer section gives ``codebook_size``
            and ``loss_weight``; its seed is replaced by each of ``seeds``).
        prior: the prior recipe of every row (its ``tokenizer``, ``seed`` and ``metrics.features_dir`` are
            set per run; metrics are always on).
        out_dir: where runs, ``features/``, ``generative.md`` and ``generative.json`` go.
        seeds: seeds of every row (tokenizer and prior).
        rows: subset of :data:`GENERATIVE_ROWS` (default: all; ``peer`` listed as not run without its package).
        command: the command line, recorded in the table.
        progress: status lines and progress bars.
    Returns:
        path of ``generative.md``.
    Raises:
        TrainingInterrupted: a signal stopped a run (its checkpoint is saved; the same call continues).
    """
    if base.model.kind != "vqvae":
        raise RecipeError(f"--recipe: the generative comparison needs an autoencoder tokenizer (model.kind = "
                          f"\"vqvae\"), got {base.model.kind!r}")
    seeds = list(seeds)
    if not seeds:
        raise RecipeError("--seeds: give at least one seed")
    selected, missing = generative_rows(rows)
    for row in missing:
        warn(f"{row.label}: {PEER_MISSING}; the table lists it as not run", enabled=progress)
    out = Path(out_dir)
    features = RunDir(out).features
    plan = []
    for row in selected:
        for seed in seeds:
            tok_dir, prior_dir = generative_run_dirs(out, row.key, seed)
            plan.append((row, seed, _tokenizer_recipe(base, row, seed, progress), tok_dir,
                         _prior_recipe(prior, row, seed, tok_dir, features, progress), prior_dir))
    test_ds = load_dataset(base.data.dataset, "test", base.data.root or None)
    for row in selected:  # every configuration builds before anything is trained
        build_from_recipe(_tokenizer_recipe(base, row, seeds[0], False), test_ds)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    for k, (row, seed, tok_recipe, tok_dir, prior_recipe, prior_dir) in enumerate(plan, 1):
        tag = f"[{k}/{len(plan)}] {row.key} seed {seed}"
        try:
            tok = _train_tokenizer(tok_recipe, RunDir(tok_dir), tag, progress)
            pri = _run_prior(prior_recipe, RunDir(prior_dir), tag, progress)
        except TrainingInterrupted as e:
            raise TrainingInterrupted(e.signum, e.step, e.checkpoint, e.run_dir, e.rank,
                                      hint=f"run the same `vqkit genablate` command (--out {out}) again to continue "
                                           "the comparison") from None
        record = _record(seed, tok, pri)
        note(f"{tag}: recon FD {record.get('recon_fd', float('nan')):.3f}, gen FD "
             f"{record.get('gen_fd', float('nan')):.3f}, accuracy {record.get('gen_accuracy', float('nan')):.3f} "
             f"({record['wall_time_s']:.0f} s)", enabled=progress)
        entry = results.setdefault(row.key, {"label": row.label, "quantizer": effective_arguments(tok_recipe.quantizer),
                                             "runs": []})
        entry["runs"].append(record)
    for entry in results.values():
        numeric = [m for m, v in entry["runs"][0].items() if m != "seed" and isinstance(v, (int, float))]
        entry["mean_std"] = {m: _mean_std([r[m] for r in entry["runs"] if m in r]) for m in numeric}
    for row in missing:
        results[row.key] = {"label": row.label, "not_run": PEER_MISSING}
    feature_hashes = sorted({r["feature_net_sha256"] for e in results.values() for r in e.get("runs", [])})
    total = sum(r["wall_time_s"] for e in results.values() for r in e.get("runs", []))
    first_quality = read_summary(plan[0][5])["quality"] if plan else {}
    payload = {"base_recipe": base.to_dict(), "prior_recipe": prior.to_dict(), "seeds": seeds, "command": command,
               "rows": [r.key for r in selected], "reference": first_quality.get("reference"),
               "sampling": first_quality.get("sampling"), "feature_net": first_quality.get("feature_net"),
               "feature_net_sha256": feature_hashes, "total_wall_time_s": round(total, 1),
               "threads": torch.get_num_threads(), "torch": torch.__version__, "vqkit": __version__,
               "results": results}
    (out / GENERATIVE_JSON_FILE).write_text(json.dumps(payload, indent=1) + "\n")
    return _write_table(out, base, prior, selected, missing, seeds, results, payload)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _write_table(out: Path, base: Recipe, prior: PriorRecipe, rows: list[Rung], missing: list[Rung],
                 seeds: list[int], results: dict[str, Any], payload: dict[str, Any]) -> Path:
    def cell(key: str, metric: str, scale: float, digits: int) -> str:
        ms = results[key]["mean_std"].get(metric)
        if ms is None:
            return "n/a"
        m, s = ms
        return f"{m * scale:.{digits}f}" if s is None else f"{m * scale:.{digits}f} ± {s * scale:.{digits}f}"

    spread = f"mean ± std over {len(seeds)} seeds" if len(seeds) > 1 else f"one seed ({seeds[0]}), no spread"
    ref, sampling, fn = payload["reference"] or {}, payload["sampling"] or {}, payload["feature_net"] or {}
    lines = [f"# Generative comparison: {base.name} tokenizers, {prior.name} prior", ""]
    if payload["command"]:
        lines += ["```", payload["command"], "```", ""]
    args = ", ".join(f"{k}={v}" for k, v in base.model.args.items())
    prior_args = ", ".join(f"{k}={v}" for k, v in prior.prior.args.items())
    lines += [
        f"Tokenizers: data {base.data.dataset}, model {base.model.kind} ({args}), K = "
        f"{base.quantizer.args.get('codebook_size', '?')}, quantizer loss weight {base.quantizer.loss_weight}, "
        f"{base.optim.name} lr {base.optim.lr}, batch {base.batch_size}, {base.steps} steps. Prior: {prior.prior.kind} "
        f"({prior_args}), {'class-conditional' if prior.conditional else 'unconditional'}, {prior.steps} steps of "
        f"batch {prior.batch_size}, AdamW lr {prior.optim.lr} ({prior.optim.schedule}). Seeds {', '.join(map(str, seeds))} "
        f"(tokenizer and prior); {spread}. Wall time of all runs {_duration(payload['total_wall_time_s'])} "
        f"({payload['threads']} intra-op thread(s); per run: tokenizer training, prior training, sampling and metrics).",
        "",
        f"Tokenizer usage / perplexity / MSE: held-out, from the tokenizer run. Reconstruction FD: the tokenizer's "
        f"decoded test tokens; generation FD, precision, recall: {sampling.get('num_samples', '?')} prior samples "
        f"({', '.join(f'{k} {v}' for k, v in sampling.items() if k != 'num_samples')}), "
        f"{'conditioned on the labels of the reference images' if prior.conditional else 'unconditional'}; "
        f"conditional accuracy: the feature network's classifier on those samples against their labels. Reference: "
        f"{ref.get('images', '?')} images of {ref.get('split', '?')}. Feature network: sha256 "
        f"{', '.join(h[:12] for h in payload['feature_net_sha256'])} ({fn.get('steps', '?')} steps, test accuracy "
        f"{fn.get('test_accuracy', float('nan')):.3f}), shared by every run.",
        "", FD_CAVEAT, "",
        "| tokenizer | " + " | ".join(c[1] for c in _COLUMNS) + " |",
        "|---|" + "---|" * len(_COLUMNS),
    ]
    for row in rows:
        lines.append(f"| {results[row.key]['label']} | " + " | ".join(cell(row.key, c[0], c[2], c[3]) for c in _COLUMNS) + " |")
    for row in missing:
        lines.append(f"| {row.label} | {results[row.key]['not_run']} |" + " |" * (len(_COLUMNS) - 1))
    lines += ["", "Quantizer arguments of each row (given and defaulted, as built):", ""]
    for row in rows:
        q = results[row.key]["quantizer"]
        lines.append(f"- {row.label} (`{row.key}`): `{', '.join(f'{k}={v!r}' for k, v in q.items())}`")
    lines += ["", f"Runs: `{out}/<row>/seed<k>/tokenizer` and `.../prior` (each prior run has report.md and "
              "samples.png)."]
    path = out / GENERATIVE_TABLE_FILE
    path.write_text("\n".join(lines) + "\n")
    return path
