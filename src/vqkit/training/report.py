"""``vqkit report RUN_DIR``: ``report.md`` with PNG plots, from a run directory alone.

Plots (in ``RUN_DIR/plots``): loss, code usage and perplexity over steps (train batches and held-out
evaluations), a grid of held-out reconstructions for autoencoders, and the held-out code-usage
histogram of the final checkpoint (recomputed from the checkpoint and the test split).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .checkpoint import latest_checkpoint, load_model_weights
from .evaluate import evaluate
from .logging import read_metrics
from .plots import image_grid, line_plot, usage_histogram
from .recipe import load_recipe

__all__ = ["write_report", "REPORT_FILE"]

REPORT_FILE = "report.md"


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in records if key in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _kwargs_text(args: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args.items()) or "defaults"


def write_report(run_dir: str | Path, *, num_images: int = 16) -> Path:
    """Write ``run_dir/report.md`` and ``run_dir/plots/*.png``; returns the report path.

    Raises:
        FileNotFoundError: ``run_dir`` has no ``recipe.toml`` / ``metrics.jsonl`` (not a run directory).
    """
    from .trainer import RECIPE_FILE, SUMMARY_FILE, build_from_recipe, load_datasets

    run = Path(run_dir)
    if not (run / RECIPE_FILE).is_file():
        raise FileNotFoundError(f"RUN_DIR: {run} is not a vqkit run directory (no {RECIPE_FILE})")
    recipe = load_recipe(run / RECIPE_FILE)
    train_records, test_records = read_metrics(run, "train"), read_metrics(run, "test")
    if not train_records:
        raise FileNotFoundError(f"RUN_DIR: {run} has no training records in metrics.jsonl")
    summary = json.loads((run / SUMMARY_FILE).read_text()) if (run / SUMMARY_FILE).is_file() else {}
    plots = run / "plots"
    plots.mkdir(exist_ok=True)
    smooth = max(1, len(train_records) // 50)
    images: list[tuple[str, str]] = []

    task_key = "mse" if "mse" in train_records[0] else "ce"
    loss_series = {"train loss (total)": _series(train_records, "loss"),
                   f"train {task_key}": _series(train_records, task_key)}
    if test_records and "mse" in test_records[0]:
        loss_series["test mse"] = _series(test_records, "mse")
    line_plot(plots / "loss.png", loss_series, title="loss", logy=True, smooth=smooth)
    images.append(("Loss", "plots/loss.png"))
    for key, label in (("usage", "Code usage"), ("perplexity", "Perplexity")):
        series = {}
        if key in train_records[0]:
            series[f"train batch {key}"] = _series(train_records, key)
        if test_records and key in test_records[0]:
            series[f"test set {key}"] = _series(test_records, key)
        if series:
            line_plot(plots / f"{key}.png", series, title=label.lower(), ylabel=key, smooth=smooth)
            images.append((label, f"plots/{key}.png"))
    if test_records and "accuracy" in test_records[0]:
        line_plot(plots / "accuracy.png", {"train batch accuracy": _series(train_records, "accuracy"),
                                           "test accuracy": _series(test_records, "accuracy")},
                  title="accuracy", smooth=smooth)
        images.append(("Accuracy", "plots/accuracy.png"))

    ckpt = latest_checkpoint(run)
    final_eval: dict[str, float] = {}
    if ckpt is not None:
        _, test_ds = load_datasets(recipe)
        model = build_from_recipe(recipe, test_ds)
        load_model_weights(ckpt, model)
        model.eval()
        result = evaluate(model, test_ds, batch_size=recipe.data.eval_batch_size, limit=recipe.data.eval_limit,
                          distributed=False)
        final_eval = result.metrics
        if model.task == "reconstruction":
            x, _ = test_ds.get_batch(torch.arange(min(num_images, len(test_ds))))
            with torch.no_grad():
                recon = model(x).output
            image_grid(plots / "reconstructions.png", {"input": x, "reconstruction": recon},
                       title=f"held-out reconstructions ({ckpt.name})")
            images.append(("Reconstructions", "plots/reconstructions.png"))
        if result.counts is not None:
            usage_histogram(plots / "codebook_usage.png", result.counts, title=f"held-out code usage, {ckpt.name}")
            images.append(("Codebook usage (final, test split)", "plots/codebook_usage.png"))

    lines = [f"# Run report: {recipe.name}", "", "| | |", "|---|---|",
             f"| dataset | {recipe.data.dataset} |",
             f"| model | {recipe.model.kind} ({_kwargs_text(recipe.model.args)}) |",
             f"| quantizer | {recipe.quantizer.kind} ({_kwargs_text(recipe.quantizer.args)}), "
             f"loss weight {recipe.quantizer.loss_weight} |",
             f"| optimizer | {recipe.optim.name}, lr {recipe.optim.lr}, weight decay {recipe.optim.weight_decay}, "
             f"{recipe.optim.schedule} schedule |",
             f"| training | {recipe.steps} steps, global batch {recipe.batch_size}, seed {recipe.seed}"
             f"{', bf16 autocast' if recipe.bf16 else ''} |"]
    if summary:
        lines.append(f"| run | {summary.get('wall_time_s', '?')} s wall time, {summary.get('world_size', 1)} "
                     f"process(es) on {summary.get('device', '?')}, torch {summary.get('torch', '?')} |")
    final = final_eval or (test_records[-1] if test_records else {})
    if final:
        step = ckpt.name if ckpt is not None else f"step {test_records[-1]['step']}"
        lines += ["", f"## Held-out results (test split, {step})", "", "| metric | value |", "|---|---|"]
        for k, v in final.items():
            if k in ("step", "split"):
                continue
            lines.append(f"| {k} | {f'{100 * v:.1f}%' if k in ('usage', 'accuracy') else _fmt(v)} |")
    last = train_records[-1]
    lines += ["", f"## Last training record (step {last['step']})", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in last.items() if k not in ("step", "split")]
    for title, rel in images:
        lines += ["", f"## {title}", "", f"![{title}]({rel})"]
    path = run / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
