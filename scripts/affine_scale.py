"""The learned affine scale of each run's codebook at its last checkpoint.

An affine codebook (``codebook="affine"``, the default) forms its codes as ``c = alpha * w + beta`` with the
per-channel scale ``alpha = 1 + lr * s``. Under Adam ``s`` moves by about the learning rate each step whatever
its gradient, so a scale that drifts toward zero rescales (or flips) every code of a channel between two steps,
and the evaluation, which sees the codebook one optimizer step after the last training call, suffers. Prints,
per run, the scale's min / median / max over channels, how many channels are negative, and the mean ``|w|``::

    python scripts/affine_scale.py RUN_DIR [RUN_DIR ...]      # e.g. OUT/defaults/seed2 of vqkit ablate
"""

from __future__ import annotations

import argparse
import sys

from vqkit.codebooks import AffineCodebook
from vqkit.training.build import load_trained_run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories (each with a checkpoint)")
    args = parser.parse_args(argv)
    print("| run | scale min | median | max | negative channels | mean abs(w) |")
    print("|---|---|---|---|---|---|")
    for run in args.runs:
        _, model, _, _ = load_trained_run(run)
        codes = getattr(model.quantizer, "codes", None)
        if not isinstance(codes, AffineCodebook):
            print(f"| {run} | not an affine codebook ({type(codes).__name__}) | | | | |")
            continue
        alpha, _ = codes.affine_map()
        alpha = alpha.flatten()
        print(f"| {run} | {alpha.min():.3f} | {alpha.median():.3f} | {alpha.max():.3f} | "
              f"{int((alpha < 0).sum())} of {alpha.numel()} | {codes.weight.detach().abs().mean():.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
