"""The learned affine scale of each run's codebook at its last checkpoint.

An affine codebook (``codebook="affine"``, the default) forms its codes as ``c = alpha * w + beta`` with the
per-channel scale ``alpha = f + (1 - f)(elu(lr * s) + 1)``, ``f = 1e-3`` (vqkit >= 0.6.0: about ``1 + lr * s``
above 1, ``exp(lr * s)`` below; before, ``1 + lr * s`` everywhere). Under Adam ``s`` moves by about the learning rate each step whatever its
gradient: the linear scale of vqkit < 0.6.0 could drift through zero, which rescales (or flips) every code of a channel between two steps. Prints, per run, the scale's
min / median / max over channels, how many channels are negative, and the mean ``|w|``. Checkpoints written by
vqkit < 0.6.0 are read as stored (their linear scale, with its sign); loading them into a model converts them
to the current form with the same codes (a negative scale's sign moves into the weights)::

    python scripts/affine_scale.py RUN_DIR [RUN_DIR ...]      # e.g. OUT/defaults/seed2 of vqkit ablate
"""

from __future__ import annotations

import argparse
import sys

import torch
from safetensors.torch import load_file

from vqkit.codebooks import POSITIVE_SCALE_RELEASE, AffineCodebook, release_tuple
from vqkit.training.build import load_trained_run
from vqkit.training.checkpoint import MODEL_FILE, latest_checkpoint, peek_state


def stored_scale(run: str, name: str, codes: AffineCodebook) -> torch.Tensor:
    """The scale as the run's newest checkpoint stores it (linear before 0.6.0, floored elu + 1 after)."""
    checkpoint = latest_checkpoint(run)
    release = release_tuple((peek_state(checkpoint) or {}).get("vqkit"))
    s = load_file(str(checkpoint / MODEL_FILE))[f"{name}.scale"].double()
    if release is not None and release >= POSITIVE_SCALE_RELEASE:
        f = codes.scale_floor
        return f + (1.0 - f) * (torch.nn.functional.elu(codes.affine_lr * s) + 1.0)
    return 1.0 + codes.affine_lr * s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories (each with a checkpoint)")
    args = parser.parse_args(argv)
    print("| run | scale min | median | max | negative channels | mean abs(w) |")
    print("|---|---|---|---|---|---|")
    for run in args.runs:
        _, model, _, _ = load_trained_run(run)
        found = [(n, m) for n, m in model.named_modules() if isinstance(m, AffineCodebook)]
        if not found:
            codes = getattr(model.quantizer, "codes", None)
            print(f"| {run} | not an affine codebook ({type(codes).__name__}) | | | | |")
            continue
        name, codes = found[0]
        alpha = stored_scale(run, name, codes).flatten()
        print(f"| {run} | {alpha.min():.3f} | {alpha.median():.3f} | {alpha.max():.3f} | "
              f"{int((alpha < 0).sum())} of {alpha.numel()} | {codes.weight.detach().abs().mean():.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
