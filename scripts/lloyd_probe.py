"""Is a trained model's held-out perplexity set by its encoder or by its codebook?

For each run directory, load the final checkpoint and collect the quantizer's input vectors (the encoder's
latents) on the training and the test split. Then quantize the test latents with three codebooks of the
same size K and report perplexity and mean squared quantization error ``||z - c||^2`` of each:

* ``model``: the trained codebook, as the model quantizes (its own output);
* ``lloyd``: the trained codebook refined by Lloyd (k-means) iterations on the training latents;
* ``fresh``: k-means++ seeded k-means on the training latents, from scratch.

If two models differ in perplexity under ``model`` but not under ``fresh``, the difference is in where their
codes sit, not in the latents their encoders produce (and the other way round). Runs on CPU in a few
minutes per run::

    python scripts/lloyd_probe.py RUN_DIR [RUN_DIR ...] [--iters 20] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

from vqkit.maintenance import kmeans
from vqkit.search import nearest_code
from vqkit.training import build_from_recipe, latest_checkpoint, load_datasets, load_model_weights
from vqkit.training.recipe import load_recipe
from vqkit.training.rundir import RunDir


def channel_last_rows(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``(B, dim, ...)`` or ``(..., dim)`` -> ``(N, dim)`` rows (the model's latent layout)."""
    if t.shape[-1] != dim:
        t = t.movedim(1, -1)
    return t.reshape(-1, dim)


def latents(run: Path, batch: int = 1000) -> tuple[int, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """K and, per split, ``(z, quantized)``: the quantizer's inputs and the model's quantized outputs ``(N, D)``."""
    recipe = load_recipe(str(RunDir(run).recipe))
    train, test = load_datasets(recipe)
    model = build_from_recipe(recipe, test)
    load_model_weights(latest_checkpoint(run), model)
    model.eval()
    q = model.quantizer
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for split, data in (("train", train), ("test", test)):
        zs, qs = [], []

        def grab(module, args, result) -> None:
            zs.append(channel_last_rows(args[0].detach().float(), q.dim))
            qs.append(channel_last_rows(result.quantized.detach().float(), q.dim))

        hook = q.register_forward_hook(grab)
        with torch.no_grad():
            for start in range(0, len(data), batch):
                x, _ = data.get_batch(torch.arange(start, min(start + batch, len(data))), "cpu")
                model(x)
        hook.remove()
        out[split] = (torch.cat(zs), torch.cat(qs))
    return q.codebook_size, out


def perplexity(indices: torch.Tensor, k: int) -> float:
    p = torch.bincount(indices, minlength=k).double()
    p = p[p > 0] / p.sum()
    return math.exp(float(-(p * p.log()).sum()))


def lloyd(x: torch.Tensor, centers: torch.Tensor, iters: int) -> torch.Tensor:
    """``iters`` Lloyd steps from ``centers``; an empty cell keeps its center."""
    for _ in range(iters):
        idx = nearest_code(x, centers).indices
        counts = torch.bincount(idx, minlength=centers.shape[0]).to(x.dtype)
        sums = torch.zeros_like(centers).index_add_(0, idx, x)
        centers = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centers)
    return centers


def evaluate(z: torch.Tensor, codes: torch.Tensor) -> tuple[float, float]:
    found = nearest_code(z, codes)
    return perplexity(found.indices, codes.shape[0]), float(found.distances.mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run directories (e.g. an ablation's ROW/seed0)")
    p.add_argument("--iters", type=int, default=20, help="Lloyd iterations")
    p.add_argument("--seed", type=int, default=0, help="seed of the fresh k-means++ init and the subsample")
    p.add_argument("--rows", type=int, default=500_000, help="training latents the k-means fits use")
    p.add_argument("--out", help="markdown file (default: print the table)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    lines = ["```", "python scripts/lloyd_probe.py " + " ".join(sys.argv[1:] if argv is None else argv), "```", "",
             "Test split, perplexity / mean squared quantization error (sum over the latent dimensions):", "",
             "| run | K | latent variance | model's codebook | + Lloyd on train latents | fresh k-means on train latents |",
             "|---|---|---|---|---|---|"]
    for run in args.runs:
        k, lat = latents(Path(run))
        (z_tr, q_tr), (z_te, q_te) = lat["train"], lat["test"]
        codes = torch.unique(q_tr, dim=0)  # the codes the model emits on the training split
        if len(codes) > k:
            raise SystemExit(f"{run}: the model emits {len(codes)} distinct outputs for {k} codes (not a plain lookup)")
        gen = torch.Generator().manual_seed(args.seed)
        z_fit = z_tr[torch.randperm(len(z_tr), generator=gen)[: args.rows]]
        model_idx = nearest_code(q_te, codes).indices  # each test output is one of the emitted codes
        model_ppl = perplexity(model_idx, codes.shape[0])
        model_err = float((z_te - q_te).square().sum(1).mean())
        refined = lloyd(z_fit, torch.cat([codes, z_fit[: k - len(codes)]]), args.iters)  # unused codes: data rows
        fresh = kmeans(z_fit, k, gen, args.iters)
        var = float(z_te.var(0).sum())
        row = [f"{model_ppl:.1f} / {model_err:.4f}"]
        for c in (refined, fresh):
            ppl, err = evaluate(z_te, c)
            row.append(f"{ppl:.1f} / {err:.4f}")
        print(run, row, file=sys.stderr)
        lines.append(f"| {run} | {k} | {var:.4f} | " + " | ".join(row) + " |")
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
