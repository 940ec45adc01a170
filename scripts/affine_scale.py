"""The learned affine scale of each run's codebook at its last checkpoint.

An affine codebook (``codebook="affine"``, the default) forms its codes as ``c = alpha * w + beta`` with the
per-channel scale ``alpha = f + (1 - f) * (1 + lr * s)`` above 1 and ``f + (1 - f) * exp(lr * s)`` below,
``f = 1e-3`` (vqkit >= 0.6.0; before, ``1 + lr * s`` everywhere). Under Adam ``s`` moves by about the learning
rate each step whatever its gradient, so the linear scale of vqkit < 0.6.0 could drift through zero, which
rescales (or flips) every code of a channel between two steps. Prints, per run and affine codebook, the
scale's min / median / max over channels, how many channels are negative, and the mean ``|w|``, all as the
checkpoint stores them: for vqkit < 0.6.0 the linear scale with its sign (loading such a checkpoint into a
model converts it to the current form with the same codes, the sign moving into the weights)::

    python scripts/affine_scale.py RUN_DIR [RUN_DIR ...]      # e.g. OUT/defaults/seed2 of vqkit ablate
"""

from __future__ import annotations

import argparse
import sys

import torch
from safetensors.torch import load_file

from vqkit.codebooks import AffineCodebook, positive_scale
from vqkit.training.build import load_trained_run
from vqkit.training.checkpoint import MODEL_FILE, latest_checkpoint, peek_state, stores_linear_scale


def stored_scale(run: str, name: str, codes: AffineCodebook) -> tuple[torch.Tensor, torch.Tensor]:
    """``(alpha, w)`` as the run's newest checkpoint stores them (linear scale before 0.6.0, positive after)."""
    checkpoint = latest_checkpoint(run)
    tensors = load_file(str(checkpoint / MODEL_FILE))
    prefix = f"{name}." if name else ""
    s, w = tensors[prefix + "scale"].double(), tensors[prefix + "weight"].double()
    if stores_linear_scale((peek_state(checkpoint) or {}).get("vqkit")):
        return 1.0 + codes.affine_lr * s, w
    return positive_scale(codes.affine_lr * s, codes.scale_floor), w


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories (each with a checkpoint)")
    args = parser.parse_args(argv)
    print("| run | codebook | scale min | median | max | negative channels | mean abs(w) |")
    print("|---|---|---|---|---|---|---|")
    for run in args.runs:
        _, model, _, _ = load_trained_run(run)
        found = [(n, m) for n, m in model.named_modules() if isinstance(m, AffineCodebook)]
        if not found:
            codes = getattr(model.quantizer, "codes", None)
            print(f"| {run} | not an affine codebook ({type(codes).__name__}) | | | | | |")
        for name, codes in found:
            alpha, w = stored_scale(run, name, codes)
            alpha = alpha.flatten()
            print(f"| {run} | {name or '(model)'} | {alpha.min():.3f} | {alpha.median():.3f} | {alpha.max():.3f} | "
                  f"{int((alpha < 0).sum())} of {alpha.numel()} | {w.abs().mean():.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
