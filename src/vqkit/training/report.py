"""``vqkit report RUN_DIR``: ``report.md`` with PNG plots, from a run directory alone.

Plots (in ``RUN_DIR/plots``): loss and its terms, code usage and perplexity over steps (train batches and
held-out evaluations), a grid of held-out reconstructions for autoencoders, and the held-out code-usage
histogram of the final checkpoint (recomputed from the checkpoint and the test split). The text says
what the loss is made of (task loss, the weighted quantizer loss and, for VQ quantizers that report
them, the commitment and codebook terms of one ``vq_mse``) and explains the shape of the training
usage curve.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..quantizers.vector import DEAD_CODE_RAMP, RAMP_DONE
from .build import build_from_recipe, load_datasets
from .checkpoint import checkpoint_step, latest_checkpoint, load_model_weights
from .console import note
from .evaluate import evaluate
from .logging import read_metrics
from .plots import image_grid, line_plot, usage_histogram
from .recipe import read_recipe_file
from .rundir import RunDir

__all__ = ["write_report", "usage_curve_notes", "loss_terms"]


def _series(records: list[dict[str, Any]], key: str, scale: float = 1.0) -> tuple[list[int], list[float]]:
    pts = [(r["step"], scale * r[key]) for r in records if key in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _pct(value: float) -> str:
    return f"{100 * value:.0f}%"


def _kwargs_text(args: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args.items()) or "defaults"


def loss_terms(record: dict[str, Any], loss_weight: float, weights: tuple[float, float] | None = None) -> list[str]:
    """Markdown lines that decompose a training record's total loss.

    ``loss = task loss + loss_weight x quantizer_loss``; for VQ quantizers that report ``vq_mse`` (the
    unweighted mean squared distance between inputs and their codes), ``quantizer_loss =
    commitment_loss + codebook_loss`` with ``commitment_loss = commitment_weight x vq_mse`` and
    ``codebook_loss = codebook_weight x vq_mse``. Keys a quantizer does not report are left out.
    """
    task = "mse" if "mse" in record else "ce"
    lines = ["| term | value |", "|---|---|", f"| total loss | {_fmt(record['loss'])} |"]
    if task in record:
        lines.append(f"| task loss ({task}) | {_fmt(record[task])} |")
    if "quantizer_loss" in record:
        lines.append(f"| {loss_weight:g} x quantizer_loss | {_fmt(loss_weight * record['quantizer_loss'])} "
                     f"(quantizer_loss {_fmt(record['quantizer_loss'])}) |")
    if "vq_mse" in record:
        lines.append(f"| vq_mse (mean squared distance input - code, unweighted) | {_fmt(record['vq_mse'])} |")
        for key, i, what in (("commitment_loss", 0, "commitment"), ("codebook_loss", 1, "codebook")):
            if key in record:
                w = f"{weights[i]:g} x vq_mse" if weights is not None else f"{what} weight x vq_mse"
                lines.append(f"| {key} (= {w}) | {_fmt(record[key])} |")
    return lines


def usage_curve_notes(records: list[dict[str, Any]], dead_code_steps: int | None, auto: bool = False,
                      calls_per_step: int | None = None) -> list[str]:
    """A paragraph explaining the training usage curve of ``records`` (train records), with its numbers;
    ``auto``: ``dead_code_steps`` is the window ``dead_code_steps="auto"`` ended with; ``calls_per_step``: the
    quantizer's training calls per step when its window ramped in (None: no ramp, e.g. a run from before it)."""
    steps, usage = _series(records, "usage")
    if len(usage) < 3:
        return []
    text = ("Training usage is the fraction of codes chosen by at least one vector of a training batch; the "
            "held-out usage counts over the whole evaluated test set (usually more vectors than a batch), so it "
            "is usually higher for the same codebook.")
    horizon = dead_code_steps if dead_code_steps else max(steps[-1] // 4, 3)
    early = [(u, s) for s, u in zip(steps, usage) if s <= horizon]
    low, low_step = min(early)
    if usage[0] >= 0.8 and low < 0.6 * usage[0]:
        text += (f" Here it starts at {_pct(usage[0])} (step {steps[0]}): a k-means initialization places every "
                 f"code on the first batch's embeddings. It then drops to {_pct(low)} by step {low_step}: in the "
                 "first steps the encoder's outputs move fast (the task loss is still large), while a code is "
                 "pulled along only while it is chosen, so the codes the embeddings move away from stop being "
                 "chosen and stay behind. This is not a collapse of training: ")
        if dead_code_steps:
            # "auto" ramps its window in: at step s it was at most 1 + (calls before s) // DEAD_CODE_RAMP
            ramp = auto and calls_per_step is not None
            window = min(dead_code_steps, 1 + (low_step - 1) * calls_per_step // DEAD_CODE_RAMP) if ramp \
                else dead_code_steps
            ramped = ramp and window < dead_code_steps
            after = [(s, u) for s, u in zip(steps, usage) if s > (low_step if ramped else window)]
            if after:
                s5, u5 = after[min(4, len(after) - 1)]
                when = f" (here {_pct(u5)} at step {s5})"
            else:
                when = f" (after step {window}, later than this run's last step {steps[-1]})"
            if ramped:
                text += (f'dead-code replacement re-seeds on current embeddings every code that was not chosen for '
                         f'the `dead_code_steps="auto"` window, which ramps in (at most 1 + t // {DEAD_CODE_RAMP} after '
                         f"t calls: {window} at step {low_step}, {dead_code_steps} at the end), so usage comes back "
                         f"within a few steps{when}.")
            else:
                setting = (f'`dead_code_steps="auto"` (here {window})' if auto
                           else f"`dead_code_steps` = {window}")
                text += (f"dead-code replacement re-seeds every code that was not chosen for {setting} "
                         f"steps on current embeddings, so usage jumps back once that many steps "
                         f"have passed{when}; a smaller `dead_code_steps` (or a `dead_code_threshold`) shortens "
                         "the dip.")
        else:
            text += ("this quantizer does not replace dead codes (`dead_code_steps` = 0), so only the codes "
                     "the embeddings come back to are used again; set `dead_code_steps` to re-seed unused codes.")
    return [text]


def write_report(run_dir: str | Path, *, num_images: int = 16, verbose: bool = False) -> Path:
    """Write ``run_dir/report.md`` and ``run_dir/plots/*.png``; returns the report path.

    Args:
        verbose: print a status line for each slow part (evaluating the checkpoint, plots).
    Raises:
        FileNotFoundError: ``run_dir`` has no ``recipe.toml`` / training records (not a run directory).
    """
    run = RunDir(run_dir)
    if not run.recipe.is_file():
        raise FileNotFoundError(f"RUN_DIR: {run.root} is not a vqkit run directory (no {run.recipe.name})")
    recipe = read_recipe_file(run.recipe)
    train_records, test_records = read_metrics(run.root, "train"), read_metrics(run.root, "test")
    if not train_records:
        raise FileNotFoundError(f"RUN_DIR: {run.root} has no training records in {run.metrics.name}")
    try:
        summary = json.loads(run.summary.read_text()) if run.summary.is_file() else {}
    except ValueError:
        summary = {}
    run.plots.mkdir(exist_ok=True)
    smooth = max(1, len(train_records) // 50)
    images: list[tuple[str, str]] = []
    rel = lambda name: f"{run.plots.name}/{name}.png"  # noqa: E731

    ckpt = latest_checkpoint(run.root)
    final_eval: dict[str, float] = {}
    model = None
    counts = None
    test_ds = None
    if ckpt is not None:
        _, test_ds = load_datasets(recipe)
        model = build_from_recipe(recipe, test_ds)
        load_model_weights(ckpt, model)
        model.eval()
        limit = recipe.data.eval_limit
        shown = f"the first {limit}" if 0 < limit < len(test_ds) else f"all {len(test_ds)}"
        note(f"report: evaluating {ckpt.name} on {shown} test images", enabled=verbose)
        result = evaluate(model, test_ds, batch_size=recipe.data.eval_batch_size, limit=limit, distributed=False)
        final_eval, counts = result.metrics, result.counts
    note("report: drawing plots", enabled=verbose)

    task_key = "mse" if "mse" in train_records[0] else "ce"
    loss_series = {"train loss (total)": _series(train_records, "loss"),
                   f"train {task_key}": _series(train_records, task_key)}
    if test_records and "mse" in test_records[0]:
        loss_series["test mse"] = _series(test_records, "mse")
    line_plot(run.plot("loss"), loss_series, title="loss", logy=True, smooth=smooth)
    images.append(("Loss", rel("loss")))

    weight = recipe.quantizer.loss_weight
    terms = {f"train {task_key} (task)": _series(train_records, task_key)}
    if "quantizer_loss" in train_records[0]:
        terms[f"{weight:g} x quantizer_loss"] = _series(train_records, "quantizer_loss", weight)
    for key in ("commitment_loss", "codebook_loss"):
        if "vq_mse" in train_records[0] and key in train_records[0]:
            terms[f"{weight:g} x {key}"] = _series(train_records, key, weight)
    if "vq_mse" in train_records[0]:
        terms["vq_mse (unweighted)"] = _series(train_records, "vq_mse")
    if len(terms) > 1:
        line_plot(run.plot("loss_terms"), terms, title="what the training loss is made of", logy=True, smooth=smooth)
        images.append(("Loss terms", rel("loss_terms")))

    for key, label in (("usage", "Code usage"), ("perplexity", "Perplexity")):
        series = {}
        if key in train_records[0]:
            series[f"train batch {key}"] = _series(train_records, key)
        if test_records and key in test_records[0]:
            series[f"test set {key}"] = _series(test_records, key)
        if series:
            line_plot(run.plot(key), series, title=label.lower(), ylabel=key, smooth=smooth)
            images.append((label, rel(key)))
    if test_records and "accuracy" in test_records[0]:
        line_plot(run.plot("accuracy"), {"train batch accuracy": _series(train_records, "accuracy"),
                                         "test accuracy": _series(test_records, "accuracy")},
                  title="accuracy", smooth=smooth)
        images.append(("Accuracy", rel("accuracy")))
    if model is not None and test_ds is not None:
        if model.task == "reconstruction":
            x, _ = test_ds.get_batch(torch.arange(min(num_images, len(test_ds))))
            with torch.no_grad():
                recon = model(x).output
            image_grid(run.plot("reconstructions"), {"input": x, "reconstruction": recon},
                       title=f"held-out reconstructions ({ckpt.name})")
            images.append(("Reconstructions", rel("reconstructions")))
        if counts is not None:
            usage_histogram(run.plot("codebook_usage"), counts, title=f"held-out code usage, {ckpt.name}")
            scope = "test split" if not 0 < recipe.data.eval_limit < len(test_ds) else \
                f"first {recipe.data.eval_limit} test images"
            images.append((f"Codebook usage (final, {scope})", rel("codebook_usage")))

    quantizer = getattr(model, "quantizer", None)
    dead_code_steps = getattr(quantizer, "dead_code_steps", None)
    if dead_code_steps is None:
        dead_code_steps = recipe.quantizer.args.get("dead_code_steps")
    auto = dead_code_steps == "auto"
    if auto:  # the window the run ended with (grows with K / vectors per call)
        window = getattr(quantizer, "dead_code_window", None)
        dead_code_steps = int(window) if window is not None else 1
    cw, bw = getattr(quantizer, "commitment_weight", None), getattr(quantizer, "codebook_weight", None)
    weights = (float(cw), float(bw)) if isinstance(cw, (int, float)) and isinstance(bw, (int, float)) else None

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
                     f"process(es) on {summary.get('device', '?')}, {summary.get('threads', '?')} intra-op "
                     f"thread(s), torch {summary.get('torch', '?')} |")
    final = final_eval or (test_records[-1] if test_records else {})
    if final:
        step = ckpt.name if ckpt is not None else f"step {test_records[-1]['step']}"
        n_test = len(test_ds) if test_ds is not None else None
        split = ("test split" if not (recipe.data.eval_limit and n_test and recipe.data.eval_limit < n_test)
                 else f"first {recipe.data.eval_limit} of {n_test} test images")
        lines += ["", f"## Held-out results ({split}, {step})", "", "| metric | value |", "|---|---|"]
        for k, v in final.items():
            if k in ("step", "split"):
                continue
            lines.append(f"| {k} | {f'{100 * v:.1f}%' if k in ('usage', 'accuracy') else _fmt(v)} |")
    last = train_records[-1]
    lines += ["", f"## What the loss is made of (last training record, step {last['step']})", "",
              f"Training minimizes `loss = {task_key} + {weight:g} x quantizer_loss`"
              + (" where `quantizer_loss = commitment_loss + codebook_loss`, both multiples of one `vq_mse`: the "
                 "commitment term pulls the encoder's outputs to their codes, the codebook term the codes to the "
                 "outputs." if "vq_mse" in last else "."), ""]
    lines += loss_terms(last, weight, weights)
    calls_per_step = None  # the pace of the "auto" window's ramp (checkpoints from before it: none)
    calls = getattr(quantizer, "training_calls", None)
    ckpt_step = checkpoint_step(ckpt.name) if ckpt is not None else None
    if auto and calls is not None and ckpt_step and int(calls) < RAMP_DONE:
        calls_per_step = max(1, round(int(calls) / ckpt_step))
    usage_text = usage_curve_notes(train_records, dead_code_steps if isinstance(dead_code_steps, int) else None,
                                   auto, calls_per_step)
    lines += ["", f"## Last training record (step {last['step']})", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in last.items() if k not in ("step", "split")]
    for title, path in images:
        lines += ["", f"## {title}", "", f"![{title}]({path})"]
        if title == "Code usage" and usage_text:
            lines += [""] + usage_text
    note(f"report: writing {run.report}", enabled=verbose)
    run.report.write_text("\n".join(lines) + "\n")
    return run.report
