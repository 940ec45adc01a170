"""The paper's classification table in its own shape, vqkit and vqtorch side by side, from ``vqkit ablate`` outputs.

Usage::

    python scripts/paper_table.py --model "AlexNet-style" VQKIT_DIR VQTORCH_DIR [--model ...] --out FILE.md

``VQKIT_DIR`` holds an ablation of the ``paper`` rungs (``paper-base``, ``paper-affine``, ...), ``VQTORCH_DIR``
one of the ``vqtorch-*`` rungs (either may be ``-``). One row per technique alone and one with all four; the
rows with three of the four techniques follow where they were run. Cells: test accuracy (%) / test usage (%)
/ test perplexity, mean ± std over the seeds of each ablation (from its ``ablation.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROWS = (
    ("base", "plain STE (random init)"),
    ("affine", "+ affine alone"),
    ("sync", "+ sync commitment alone"),
    ("alternating", "+ alternating alone"),
    ("replacement", "+ dead-code replacement alone"),
    ("all", "+ all four"),
    ("no-alternating", "affine + sync + replacement (all but alternating)"),
    ("no-affine", "sync + alternating + replacement (all but affine)"),
)

NOT_RUN = {("vqtorch", "all"): "does not run: vqtorch's in-place alternating step cannot be combined with affine_lr "
                               "(backward through a freed graph)"}


def _cell(result: dict | None, why: str = "not run") -> str:
    if result is None:
        return why
    ms = result["mean_std"]

    def f(key: str, scale: float, digits: int) -> str:
        m, s = ms[key]
        return f"{m * scale:.{digits}f}" if s is None else f"{m * scale:.{digits}f} ± {s * scale:.{digits}f}"

    return f"{f('accuracy', 100, 1)} / {f('usage', 100, 1)} / {f('perplexity', 1, 1)}"


def _load(path: str) -> dict | None:
    if path == "-":
        return None
    return json.loads((Path(path) / "ablation.json").read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", nargs=3, action="append", metavar=("LABEL", "VQKIT_DIR", "VQTORCH_DIR"), required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    lines = ["# The paper's classification table in its own shape: vqkit and vqtorch", "", "```",
             "python scripts/paper_table.py " + " ".join(sys.argv[1:]), "```", "",
             "Cells: held-out test accuracy (%) / test codebook usage (%) / test perplexity, mean ± std over seeds "
             "(each ablation's `ablation.md` has the per-row arguments, wall times and curves).", ""]
    for label, vq_dir, vt_dir in args.model:
        data = {"vqkit": _load(vq_dir), "vqtorch": _load(vt_dir)}
        lines += [f"## {label}", ""]
        for lib, d in data.items():
            if d is not None:
                lines += [f"- {lib}: `{d['command']}` (seeds {', '.join(map(str, d['seeds']))}; training wall time "
                          f"of all runs {d['total_run_wall_time_s'] / 60:.0f} min, {d['threads']} thread(s), vqkit "
                          f"{d['vqkit']}, torch {d['torch']})"]
        lines += ["", "| configuration | vqkit | vqtorch |", "|---|---|---|"]
        for key, name in ROWS:
            cells = []
            for lib, prefix in (("vqkit", "paper"), ("vqtorch", "vqtorch")):
                d = data[lib]
                res = None if d is None else d["results"].get(f"{prefix}-{key}")
                cells.append(_cell(res, NOT_RUN.get((lib, key), "not run")))
            if all(c == "not run" for c in cells):
                continue
            lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
        lines.append("")
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
