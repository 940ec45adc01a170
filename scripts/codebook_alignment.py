"""How well the trained codebook matches the embeddings it quantizes (the paper's "misalignment").

Usage::

    python scripts/codebook_alignment.py ABLATION_DIR RUNG [RUNG ...] [--images 2000] [--out FILE.md]

For each ``seedN`` run of each rung, load the final checkpoint, collect the embeddings ``z`` that reach the
quantizer on the first ``--images`` test images, and compare them with the effective codebook ``c``
(``quantizer.codebook``, after any affine transform):

* ``mean gap``: ``||mean(c) - mean(z)|| / sqrt(mean_d Var(z_d))``, the codebook's offset in units of the
  embeddings' spread (0 = centered on the data);
* ``spread ratio``: ``sqrt(mean_d Var(c_d) / mean_d Var(z_d))`` (1 = as spread as the data);
* ``codes near data``: the fraction of codes whose nearest embedding is closer than the median distance
  of an embedding to its own nearest code (codes that could win an assignment);
* ``affine alpha``: mean and range of the learned scale (vqkit's affine codebook, positive since 0.6.0; vqtorch's
  ``1 + a s`` with its ``affine_lr``), when there is one.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from vqkit.training import load_trained_run
from vqkit.training.rundir import ablation_run_dirs


def _alpha(quantizer: torch.nn.Module) -> torch.Tensor | None:
    codes = getattr(quantizer, "codes", None)
    if codes is not None and hasattr(codes, "affine_map"):
        m = codes.affine_map()
        return None if m is None else m[0]
    vq = getattr(quantizer, "vq", None)  # vqtorch adapter
    if vq is not None and hasattr(vq, "affine_transform"):
        return vq.affine_transform.get_affine_params()[0].detach().squeeze(1)
    return None


@torch.no_grad()
def measure(run: Path, images: int) -> dict[str, float]:
    _, model, _, test = load_trained_run(run)
    seen: list[torch.Tensor] = []
    q = model.quantizer
    hook = q.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    x, _ = test.get_batch(torch.arange(min(images, len(test))), "cpu")
    model(x)
    hook.remove()
    z = seen[0].movedim(q.channel_dim, -1).reshape(-1, q.dim).double()
    c = q.codebook.double().reshape(-1, q.dim)
    z_var = z.var(0).mean()
    out = {
        "mean_gap": float((c.mean(0) - z.mean(0)).norm() / z_var.sqrt()),
        "spread_ratio": float((c.var(0).mean() / z_var).sqrt()),
    }
    sub = z[torch.randperm(z.shape[0], generator=torch.Generator().manual_seed(0))[:20000]]
    d = torch.cdist(sub, c)  # (N, K)
    typical = d.min(1).values.median()
    out["codes_near_data"] = float((d.min(0).values < typical).double().mean())
    alpha = _alpha(q)
    if alpha is not None:
        out["alpha_mean"], out["alpha_min"], out["alpha_max"] = (float(alpha.mean()), float(alpha.min()),
                                                               float(alpha.max()))
    return out


def _fmt(values: list[float]) -> str:
    m = sum(values) / len(values)
    if len(values) == 1:
        return f"{m:.3g}"
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))
    return f"{m:.3g} ± {s:.2g}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("ablation_dir")
    p.add_argument("rungs", nargs="+")
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--out", help="markdown file (default: ABLATION_DIR/alignment.md)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    root = Path(args.ablation_dir)
    out = Path(args.out) if args.out else root / "alignment.md"
    results: dict[str, list[dict[str, float]]] = {}
    for rung in args.rungs:
        runs = ablation_run_dirs(root, rung)
        if not runs:
            raise SystemExit(f"codebook_alignment: no run directories seedN under {root / rung}")
        for run in runs:
            results.setdefault(rung, []).append(measure(run, args.images))
            print(f"{rung} {run.name}: {results[rung][-1]}", file=sys.stderr)
    lines = [f"# Codebook vs embeddings at the end of training: {root.name}", "", "```",
             "python scripts/codebook_alignment.py " + " ".join(sys.argv[1:]), "```", "",
             f"Embeddings of the first {args.images} test images at the quantizer; mean ± std over seeds.", "",
             "| configuration | mean gap (data std) | spread ratio | codes near data (%) | affine alpha mean [min, max] |",
             "|---|---|---|---|---|"]
    for rung, runs in results.items():
        near = _fmt([100 * r["codes_near_data"] for r in runs])
        alpha = "-"
        if "alpha_mean" in runs[0]:
            alpha = (f"{_fmt([r['alpha_mean'] for r in runs])} [{min(r['alpha_min'] for r in runs):.3g}, "
                     f"{max(r['alpha_max'] for r in runs):.3g}]")
        lines.append(f"| {rung} | {_fmt([r['mean_gap'] for r in runs])} | {_fmt([r['spread_ratio'] for r in runs])} | "
                     f"{near} | {alpha} |")
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
