"""``vqkit bench`` / ``python -m vqkit.bench``: the side-by-side speed and memory benchmark."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from .cases import CASE_KINDS

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vqkit bench",
        description="Time forward + backward and measure peak memory of vqkit's VectorQuantizer against the "
        "bare matmul + argmin floors and vector-quantize-pytorch, one fresh process per case, plus a VQ-VAE "
        "training step. Writes <out>/<tag>.json and <out>/<tag>.md.",
    )
    p.add_argument("--quick", action="store_true", help="a tiny grid (about a minute) instead of the full one")
    p.add_argument("--out", default="benchmarks/results", help="output directory (default: benchmarks/results)")
    p.add_argument("--tag", help="file name stem (default: cpu-full or cpu-quick)")
    p.add_argument("--cells", nargs="+", metavar="NxKxD",
                   help="run only these cells, e.g. --cells 4096x512x64 32768x65536x64 (default: the grid's)")
    p.add_argument("--kinds", nargs="+", default=list(CASE_KINDS), choices=list(CASE_KINDS),
                   help="cases to run (default: all)")
    p.add_argument("--no-model", action="store_true", help="skip the VQ-VAE model-level rows")
    p.add_argument("--threads", type=int, default=None, help="torch threads per case (default: torch's default)")
    p.add_argument("--device", default="cpu", help="device of the grid (default: cpu)")
    p.add_argument("--budget", type=float, default=6.0, help="seconds of timed steps per case (default: 6)")
    p.add_argument("--min-reps", type=int, default=3, help="fewest timed steps per case, huge cells aside")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds before a case is abandoned")
    p.add_argument("--max-memory-gb", type=float, default=20.0,
                   help="skip cases predicted to need more (also capped at 85%% of MemAvailable)")
    p.add_argument("--max-others-cpu", type=float, default=0.15,
                   help="re-measure a case when other processes used more than this share of the CPUs")
    p.add_argument("--retries", type=int, default=2, help="re-measurements of a noisy case (default: 2)")
    p.add_argument("--wait-quiet", type=float, default=None, metavar="LOAD",
                   help="before starting, wait until the 1-minute load average is below LOAD")
    p.add_argument("--wait-timeout", type=float, default=3600.0, help="give up waiting after this many seconds")
    p.add_argument("--resume", action="store_true", help="keep finished cases of an earlier run with the same tag")
    p.add_argument("--gpu-kernel", action="store_true",
                   help="also time the fused Triton search against cuBLAS and cdist (needs CUDA and triton)")
    p.add_argument("--note", help="a sentence printed at the top of the report (e.g. what was patched)")
    p.add_argument("--report-only", action="store_true", help="rewrite the markdown from an existing JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``vqkit bench``; returns the exit status."""
    import json

    args = build_parser().parse_args(argv)
    args.grid = "quick" if args.quick else "full"
    args.tag = args.tag or f"cpu-{args.grid}"
    shown = sys.argv[1:] if argv is None else argv
    args.command_line = "vqkit bench" + ("" if not shown else " " + shlex.join(shown))
    from .report import to_markdown

    out = Path(args.out)
    if args.report_only:
        data = json.loads((out / f"{args.tag}.json").read_text())
    else:
        from .runner import run_benchmark

        data = run_benchmark(args)
    md = to_markdown(data)
    (out / f"{args.tag}.md").write_text(md)
    print(f"wrote {out / (args.tag + '.json')} and {out / (args.tag + '.md')}")
    return 0
