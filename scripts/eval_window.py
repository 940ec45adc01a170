"""Held-out metrics averaged over a window of evaluations, per row of an ``vqkit ablate --out`` directory.

The last evaluation of a run can flatter one side of a comparison (a curve that dips at the final step);
the mean over the evaluations from ``--from-step`` on (to ``--to-step``, default the last) is steadier.
Reads each run's ``metrics.jsonl`` (``OUT/<row>/seed<N>/metrics.jsonl``, its ``"split": "test"`` records)
and prints, per row, the per-seed window means and their mean ± std over seeds::

    python scripts/eval_window.py OUT_DIR [--from-step 1500] [--to-step 3000] [--metrics accuracy perplexity]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from vqkit.training import read_metrics
from vqkit.training.rundir import RunDir, ablation_run_dirs


def window_means(run_dir: Path, metrics: list[str], from_step: int, to_step: int | None) -> tuple[dict[str, float], int] | None:
    """Mean of each metric over the run's test evaluations with ``from_step <= step <= to_step``, and their
    count; None when the run has no evaluation in the window (not trained that far yet)."""
    if not RunDir(run_dir).metrics.exists():
        return None
    records = [r for r in read_metrics(run_dir, "test")
               if r["step"] >= from_step and (to_step is None or r["step"] <= to_step)]
    if not records:
        return None
    missing = [m for m in metrics if m not in records[0]]
    if missing:
        raise ValueError(f"{run_dir}: metrics {missing} not logged (have {sorted(records[0])})")
    return {m: statistics.fmean(r[m] for r in records) for m in metrics}, len(records)


def summarize(out_dir: Path, metrics: list[str], from_step: int, to_step: int | None) -> list[str]:
    """Markdown table lines: one row per ablation row with runs, per-seed values and mean ± std over seeds."""
    lines = [f"| row | evaluations per run | {' | '.join(metrics)} | runs left out (no evaluation in the window) |",
             "|---|---|" + "---|" * (len(metrics) + 1)]
    rows = {p.name: ablation_run_dirs(out_dir, p.name) for p in sorted(out_dir.iterdir()) if p.is_dir()}
    rows = {name: runs for name, runs in rows.items() if runs}
    if not rows:
        raise ValueError(f"{out_dir}: no <row>/seed<N>/metrics.jsonl below it (expected an `vqkit ablate --out` directory)")
    for name, runs in rows.items():
        found = [(run.name, window_means(run, metrics, from_step, to_step)) for run in runs]
        per_seed = [w for _, w in found if w is not None]
        left_out = ", ".join(name for name, w in found if w is None) or "-"
        if not per_seed:
            lines.append(f"| {name} | 0 |" + " - |" * len(metrics) + f" {left_out} |")
            continue
        cells = []
        for m in metrics:
            vals = [v[m] for v, _ in per_seed]
            std = statistics.stdev(vals) if len(vals) > 1 else 0.0
            seeds = ", ".join(f"{v:.4g}" for v in vals)
            cells.append(f"{statistics.fmean(vals):.4g} ± {std:.2g} ({seeds})")
        counts = sorted({n for _, n in per_seed})
        lines.append(f"| {name} | {'/'.join(map(str, counts))} | {' | '.join(cells)} | {left_out} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--from-step", type=int, default=0)
    ap.add_argument("--to-step", type=int, default=None)
    ap.add_argument("--metrics", nargs="+", default=["accuracy", "perplexity"])
    args = ap.parse_args(argv)
    try:
        lines = summarize(args.out_dir, args.metrics, args.from_step, args.to_step)
    except (OSError, ValueError) as e:
        print(f"eval_window: {e}", file=sys.stderr)
        return 2
    print(f"Test metrics averaged over evaluations at steps {args.from_step}..{args.to_step or 'last'}; "
          "mean ± std over seeds (per-seed values):\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
