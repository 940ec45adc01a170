"""Held-out metrics of trained residual quantizers at 1..L levels, from ONE model per seed.

Usage::

    python scripts/residual_levels.py ABLATION_DIR RUNG [RUNG ...] [--out FILE.md]

For each rung and each ``seedN`` run under ``ABLATION_DIR/RUNG`` (as ``vqkit ablate`` writes them), load the
final checkpoint and evaluate it on the whole test split with the quantizer's first ``n = 1 .. L`` levels
(:func:`vqkit.training.evaluate_levels`, i.e. ``forward(..., num_levels=n)``). Writes a markdown table (mean ±
std over seeds of the task metric; usage and perplexity of the *joint* code, the tuple of the first n
levels' indices, over the prod(sizes[:n]) possible tuples, comparable with a single codebook of that size;
and the per-level usage averaged over the levels, as the training logs report it) and the per-seed numbers
as JSON next to it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from vqkit.metrics import perplexity
from vqkit.training import build_from_recipe, evaluate_levels, latest_checkpoint, load_datasets, load_model_weights
from vqkit.training.recipe import load_recipe
from vqkit.training.rundir import RunDir, ablation_run_dirs


def _mean_std(values: list[float]) -> str:
    m = sum(values) / len(values)
    if len(values) == 1:
        return f"{m:.4g}"
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))
    return f"{m:.4g} ± {s:.2g}"


@torch.no_grad()
def joint_usage(model: torch.nn.Module, test, n: int, batch_size: int) -> tuple[float, float]:
    """Usage and perplexity over the test split of the joint code of the first ``n`` levels."""
    sizes = model.quantizer.index_layout.sizes[:n]
    total = math.prod(sizes)
    radix = torch.tensor([math.prod(sizes[:l]) for l in range(n)])
    counts = torch.zeros(total, dtype=torch.float64)
    model.eval()
    for start in range(0, len(test), batch_size):
        x, _ = test.get_batch(torch.arange(start, min(start + batch_size, len(test))), "cpu")
        idx = model.quantizer(model.encode(x), num_levels=n).indices.reshape(-1, n)
        counts += torch.bincount((idx * radix).sum(-1), minlength=total).double()
    return float((counts > 0).sum()) / total, float(perplexity(counts))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("ablation_dir")
    p.add_argument("rungs", nargs="+")
    p.add_argument("--out", help="markdown file (default: ABLATION_DIR/levels.md)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    root = Path(args.ablation_dir)
    out = Path(args.out) if args.out else root / "levels.md"
    results: dict[str, list[dict]] = {}
    test = None
    for rung in args.rungs:
        runs = ablation_run_dirs(root, rung)
        if not runs:
            raise SystemExit(f"no runs under {root / rung}")
        for run in runs:
            recipe = load_recipe(str(RunDir(run).recipe))
            if test is None:
                _, test = load_datasets(recipe)
            model = build_from_recipe(recipe, test)
            ckpt = latest_checkpoint(run)
            load_model_weights(ckpt, model)
            levels = evaluate_levels(model, test, batch_size=recipe.data.eval_batch_size, distributed=False)
            for n, r in enumerate(levels, 1):
                r.metrics["joint_usage"], r.metrics["joint_perplexity"] = joint_usage(
                    model, test, n, recipe.data.eval_batch_size)
                r.metrics["joint_codes"] = math.prod(model.quantizer.index_layout.sizes[:n])
            results.setdefault(rung, []).append(
                {"seed": recipe.seed, "checkpoint": str(ckpt), "levels": [r.metrics for r in levels]})
            shown = ", ".join(f"{n}: {r.metrics.get('mse', r.metrics.get('accuracy')):.4g}"
                              for n, r in enumerate(levels, 1))
            print(f"{rung} seed {recipe.seed}: {shown}", file=sys.stderr)
    lines = [f"# Held-out metrics at 1..L levels: {root.name}", "", "```",
             "python scripts/residual_levels.py " + " ".join(sys.argv[1:]), "```", "",
             "One model per seed (the final checkpoint of each run), evaluated on the whole test split with its "
             "first n levels; mean ± std over seeds.", "",
             "| configuration | levels n | joint codes | test MSE | joint usage (%) | joint perplexity | "
             "per-level usage (%) | per-level perplexity |", "|---|---|---|---|---|---|---|---|"]
    for rung, runs in results.items():
        for n in range(len(runs[0]["levels"])):
            task = "mse" if "mse" in runs[0]["levels"][n] else "accuracy"
            keys = (task, "usage", "perplexity", "joint_usage", "joint_perplexity")
            vals = {k: [r["levels"][n][k] for r in runs] for k in keys}
            pct = {k: _mean_std([100 * v for v in vals[k]]) for k in ("usage", "joint_usage")}
            lines.append(f"| {rung} | {n + 1} | {runs[0]['levels'][n]['joint_codes']} | {_mean_std(vals[task])} | "
                         f"{pct['joint_usage']} | {_mean_std(vals['joint_perplexity'])} | {pct['usage']} | "
                         f"{_mean_std(vals['perplexity'])} |")
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
