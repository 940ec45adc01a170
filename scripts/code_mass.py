"""Where a trained quantizer's held-out usage goes: the mass of each code on the test split.

For each run directory, load the final checkpoint, assign every test image's latent vectors and report the
perplexity of the code histogram, the share of codes holding less than half (and a quarter) of the mean
mass 1 / K, the share of the test vectors held by the 10% most used codes, and the largest code masses in
units of 1 / K; with ``--split train`` the same on the training split (60,000 images for Fashion-MNIST: six
times the vectors per code, so a rare code is told apart from a dead one at large K). Also the usage an
ideal codebook would show on the split: every code with mass 1 / K, the expected share of codes hit at
least once by the split's n vectors, ``1 - (1 - 1/K)^n``. With ``--split train`` also the test split's usage
beside the usage the training masses ``p_k`` predict for its n vectors, ``mean_k 1 - (1 - p_k)^n``: when the two
agree, the codes the test split misses are rare codes it is too small to sample, not codes that went dead.
With ``--constant-patches`` (image models) also what the largest codes encode: the share of their test
vectors whose input patch (the pixels a latent position covers, ``H / h`` by ``W / w``) is constant, e.g.
blank background, which no codebook can split. Runs on CPU in a minute per run and 10,000 images::

    python scripts/code_mass.py RUN_DIR [RUN_DIR ...] [--split train] [--constant-patches] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

from vqkit.training import load_trained_run


def mass_stats(counts: torch.Tensor, top: int = 5) -> dict[str, float | list[float]]:
    """Statistics of a code histogram ``counts (K,)`` (non-negative, not all zero)."""
    k = counts.numel()
    p = counts.double() / counts.sum()
    nz = p[p > 0]
    ordered = p.sort(descending=True).values
    return {
        "perplexity": math.exp(float(-(nz * nz.log()).sum())),
        "usage": float((p > 0).double().mean()),
        "below_half_mean": float((p < 0.5 / k).double().mean()),
        "below_quarter_mean": float((p < 0.25 / k).double().mean()),
        "top10_share": float(ordered[: max(1, k // 10)].sum()),
        "largest_x_mean": [round(float(v) * k, 1) for v in ordered[:top]],
    }


def test_counts(run: Path, batch: int = 1000, split: str = "test") -> torch.Tensor:
    """Code histogram ``(K,)`` of the final model of ``run`` on its full test (or training) split."""
    _, model, train, test = load_trained_run(run)
    if split == "train":
        test = train
    q = model.quantizer
    counts = torch.zeros(q.codebook_size, dtype=torch.float64)

    def count(module, args, out) -> None:  # returns None: the output passes on unchanged
        counts.add_(torch.bincount(out.indices.reshape(-1), minlength=q.codebook_size))

    hook = q.register_forward_hook(count)
    with torch.no_grad():
        for start in range(0, len(test), batch):
            x, _ = test.get_batch(torch.arange(start, min(start + batch, len(test))), "cpu")
            model(x)
    hook.remove()
    return counts


def constant_patch_mask(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``x (B, C, H, W)`` images, ``grid = (h, w)`` latent positions -> ``(B, h, w)`` bool: whether the
    ``H / h`` by ``W / w`` patch a position covers is constant over its pixels and channels."""
    b, _, height, width = x.shape
    h, w = grid
    if height % h or width % w:
        raise SystemExit(f"code_mass: the latent grid {grid} does not tile the {height} x {width} image")
    patches = x.reshape(b, -1, h, height // h, w, width // w)
    spread = patches.amax(dim=(1, 3, 5)) - patches.amin(dim=(1, 3, 5))
    return spread <= 1e-6


def constant_patch_shares(run: Path, counts: torch.Tensor, top: int = 3, batch: int = 1000) -> list[float]:
    """For the ``top`` codes with the largest ``counts (K,)``: the share of their test vectors whose input patch
    is constant (:func:`constant_patch_mask`)."""
    _, model, _, test = load_trained_run(run)
    largest = counts.argsort(descending=True)[:top]
    on_constant, total = torch.zeros(top, dtype=torch.float64), torch.zeros(top, dtype=torch.float64)
    found: list[torch.Tensor] = []
    hook = model.quantizer.register_forward_hook(lambda module, args, out: found.append(out.indices))
    with torch.no_grad():
        for start in range(0, len(test), batch):
            x, _ = test.get_batch(torch.arange(start, min(start + batch, len(test))), "cpu")
            found.clear()
            model(x)
            idx = found[0]
            if x.dim() != 4 or idx.dim() != 3:
                raise SystemExit("code_mass: --constant-patches needs images (B, C, H, W) and indices (B, h, w)")
            constant = constant_patch_mask(x, (idx.shape[1], idx.shape[2]))
            hit = idx.unsqueeze(-1) == largest  # (B, h, w, top)
            total += hit.sum(dim=(0, 1, 2)).double()
            on_constant += (hit & constant.unsqueeze(-1)).sum(dim=(0, 1, 2)).double()
    hook.remove()
    return (on_constant / total.clamp_min(1)).tolist()


def expected_usage(counts: torch.Tensor, n: float) -> float:
    """Expected share of the codes that ``n`` vectors drawn from the masses ``counts (K,) / counts.sum()`` hit at
    least once: ``mean_k 1 - (1 - p_k)^n``."""
    p = counts.double() / counts.sum()
    return float((1 - torch.exp(n * torch.log1p(-p.clamp_max(1 - 1e-12)))).mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run directories (e.g. an ablation's ROW/seed0)")
    p.add_argument("--split", choices=("test", "train"), default="test", help="the split to count on")
    p.add_argument("--constant-patches", action="store_true",
                   help="also report the share of the 3 largest codes' test vectors on a constant input patch")
    p.add_argument("--out", help="markdown file (default: print the table)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    on_train = args.split == "train"
    lines = ["```", "python scripts/code_mass.py " + " ".join(sys.argv[1:] if argv is None else argv), "```", "",
             f"| run | {args.split} perplexity | usage (%) | uniform-mass usage (%) | codes < 1/(2K) mass (%) | "
             "codes < 1/(4K) (%) | top 10% of codes hold (%) | largest masses (x 1/K) |"
             + (" test usage: measured / predicted by these masses (%) |" if on_train else "")
             + (" 3 largest codes: test vectors on a constant patch (%) |" if args.constant_patches else ""),
             "|---|---|---|---|---|---|---|---|" + ("---|" if on_train else "") + ("---|" if args.constant_patches else "")]
    for run in args.runs:
        counts = test_counts(Path(run), split=args.split)
        s = mass_stats(counts)
        ideal = 1 - (1 - 1 / counts.numel()) ** float(counts.sum())
        print(f"{run}: {s}", file=sys.stderr)
        lines.append(f"| {run} | {s['perplexity']:.1f} | {100 * s['usage']:.1f} | {100 * ideal:.2f} | "
                     f"{100 * s['below_half_mean']:.1f} | "
                     f"{100 * s['below_quarter_mean']:.1f} | {100 * s['top10_share']:.1f} | "
                     f"{', '.join(f'{v:g}' for v in s['largest_x_mean'])} |")
        if on_train:
            test = test_counts(Path(run))
            lines[-1] += (f" {100 * float((test > 0).double().mean()):.1f} / "
                          f"{100 * expected_usage(counts, float(test.sum())):.1f} |")
        if args.constant_patches:
            shares = constant_patch_shares(Path(run), counts)
            lines[-1] += " " + ", ".join(f"{100 * v:.1f}" for v in shares) + " |"
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
