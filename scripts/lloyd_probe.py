"""Is a trained model's held-out perplexity set by its encoder or by its codebook?

For each run directory, load the final checkpoint and collect the quantizer's input vectors (the encoder's
latents) on the training and the test split. Then quantize the test latents with three codebooks of the
same size K and report perplexity and mean squared quantization error ``||z - c||^2`` of each:

* ``model``: the trained codebook, as the model quantizes (its own indices and outputs);
* ``lloyd``: the trained codebook (``quantizer.codebook``) refined by Lloyd (k-means) iterations on the
  training latents;
* ``fresh``: k-means++ seeded k-means on the training latents, from scratch.

If two models differ in perplexity under ``model`` but not under ``fresh``, the difference is in where their
codes sit, not in the latents their encoders produce (and the other way round). Runs on CPU in a few
minutes per run. Needs a single-codebook quantizer with the euclidean metric whose codes live in its input space
(``VectorQuantizer`` without ``codebook_dim`` / cosine, or the vector-quantize-pytorch adapter)::

    python scripts/lloyd_probe.py RUN_DIR [RUN_DIR ...] [--iters 20] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from vqkit.maintenance import kmeans, lloyd_steps
from vqkit.metrics import perplexity
from vqkit.quantizers.base import move_channel_last
from vqkit.search import nearest_code
from vqkit.training import load_trained_run


def channel_last_rows(t: torch.Tensor, dim: int, channel_dim: int) -> torch.Tensor:
    """A tensor with ``dim`` channels on axis ``channel_dim`` -> ``(N, dim)`` rows."""
    return move_channel_last(t, channel_dim).reshape(-1, dim)


def check_probe_quantizer(q: torch.nn.Module) -> None:
    """The probe compares codebooks in the quantizer's input space with the euclidean metric."""
    codebook = getattr(q, "codebook", None)
    if codebook is None or codebook.dim() != 2 or codebook.shape[-1] != q.dim:
        raise SystemExit(f"lloyd_probe: needs a single (K, dim) codebook in the input space, got {type(q).__name__}")
    if not isinstance(getattr(q, "project_in", torch.nn.Identity()), torch.nn.Identity):
        raise SystemExit("lloyd_probe: the codes live in a projected space (codebook_dim != dim); not supported")
    if getattr(q, "metric", "euclidean") != "euclidean":
        raise SystemExit(f"lloyd_probe: needs the euclidean metric, got metric={q.metric!r}")


def latents(run: Path, batch: int = 1000) -> tuple[torch.Tensor, dict[str, tuple[torch.Tensor, ...]]]:
    """The codebook ``(K, D)`` and, per split, ``(z, quantized, indices)``: the quantizer's inputs, the model's
    quantized outputs ``(N, D)`` and its indices ``(N,)``."""
    _, model, train, test = load_trained_run(run)
    q = model.quantizer
    check_probe_quantizer(q)
    out: dict[str, tuple[torch.Tensor, ...]] = {}
    for split, data in (("train", train), ("test", test)):
        zs, qs, idx = [], [], []

        def grab(module, args, result) -> None:
            zs.append(channel_last_rows(args[0].detach().float(), q.dim, q.channel_dim))
            qs.append(channel_last_rows(result.quantized.detach().float(), q.dim, q.channel_dim))
            idx.append(result.indices.detach().reshape(-1))

        hook = q.register_forward_hook(grab)
        with torch.no_grad():
            for start in range(0, len(data), batch):
                x, _ = data.get_batch(torch.arange(start, min(start + batch, len(data))), "cpu")
                model(x)
        hook.remove()
        out[split] = (torch.cat(zs), torch.cat(qs), torch.cat(idx))
    return q.codebook.float(), out


def index_perplexity(indices: torch.Tensor, k: int) -> float:
    return float(perplexity(torch.bincount(indices, minlength=k).double()))


def evaluate(z: torch.Tensor, codes: torch.Tensor) -> tuple[float, float]:
    found = nearest_code(z, codes)
    return index_perplexity(found.indices, codes.shape[0]), float(found.distances.mean())


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
        codes, lat = latents(Path(run))
        k = codes.shape[0]
        (z_tr, _, _), (z_te, q_te, i_te) = lat["train"], lat["test"]
        gen = torch.Generator().manual_seed(args.seed)
        z_fit = z_tr[torch.randperm(len(z_tr), generator=gen)[: args.rows]]
        model_ppl = index_perplexity(i_te, k)
        model_err = float((z_te - q_te).square().sum(1).mean())
        refined = lloyd_steps(z_fit, codes, args.iters)
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
