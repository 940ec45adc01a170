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


def assignments(run: Path, split: str = "test", constant_patches: bool = False,
                batch: int = 1000) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """One pass of the final model of ``run`` over its full test (or training) split: the code index of every
    latent vector ``(N,)``, with ``constant_patches`` whether each one's input patch is constant ``(N,)`` bool
    (:func:`constant_patch_mask`; image models only), and the codebook size K."""
    _, model, train, test = load_trained_run(run)
    data = train if split == "train" else test
    found: list[torch.Tensor] = []
    hook = model.quantizer.register_forward_hook(lambda module, args, out: found.append(out.indices))
    indices, constant = [], []
    with torch.no_grad():
        for start in range(0, len(data), batch):
            x, _ = data.get_batch(torch.arange(start, min(start + batch, len(data))), "cpu")
            found.clear()
            model(x)
            idx = found[0]
            indices.append(idx.reshape(-1))
            if constant_patches:
                if x.dim() != 4 or idx.dim() != 3:
                    raise SystemExit("code_mass: --constant-patches needs images (B, C, H, W) and indices (B, h, w)")
                constant.append(constant_patch_mask(x, (idx.shape[1], idx.shape[2])).reshape(-1))
    hook.remove()
    return torch.cat(indices), torch.cat(constant) if constant_patches else None, model.quantizer.codebook_size


def test_counts(run: Path, batch: int = 1000, split: str = "test") -> torch.Tensor:
    """Code histogram ``(K,)`` of the final model of ``run`` on its full test (or training) split."""
    indices, _, k = assignments(run, split, batch=batch)
    return torch.bincount(indices, minlength=k).double()


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


def constant_patch_shares(indices: torch.Tensor, constant: torch.Tensor, counts: torch.Tensor,
                          top: int = 3) -> list[float]:
    """For the ``top`` codes with the largest ``counts (K,)``: the share of their vectors among ``indices (N,)``
    whose input patch is constant (``constant (N,)`` bool)."""
    shares = []
    for code in counts.argsort(descending=True)[:top].tolist():
        mine = indices == code
        shares.append(float(constant[mine].double().mean()) if bool(mine.any()) else 0.0)
    return shares


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
        # the test split's pass serves the test counts, the measured test usage and the constant patches alike
        test_idx, constant, k = assignments(Path(run), "test", args.constant_patches)
        test = torch.bincount(test_idx, minlength=k).double()
        counts = test_counts(Path(run), split="train") if on_train else test
        s = mass_stats(counts)
        ideal = 1 - (1 - 1 / counts.numel()) ** float(counts.sum())
        print(f"{run}: {s}", file=sys.stderr)
        lines.append(f"| {run} | {s['perplexity']:.1f} | {100 * s['usage']:.1f} | {100 * ideal:.2f} | "
                     f"{100 * s['below_half_mean']:.1f} | "
                     f"{100 * s['below_quarter_mean']:.1f} | {100 * s['top10_share']:.1f} | "
                     f"{', '.join(f'{v:g}' for v in s['largest_x_mean'])} |")
        if on_train:
            lines[-1] += (f" {100 * float((test > 0).double().mean()):.1f} / "
                          f"{100 * expected_usage(counts, float(test.sum())):.1f} |")
        if constant is not None:
            shares = constant_patch_shares(test_idx, constant, counts)
            lines[-1] += " " + ", ".join(f"{100 * v:.1f}" for v in shares) + " |"
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
