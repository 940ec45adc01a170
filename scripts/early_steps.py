"""The first training steps of a recipe, one row per step: why training usage dips right after the k-means init.

Replays the trainer's steps exactly (same batches, optimizer, learning-rate schedule and loss; the training-batch
usage equals the run's ``metrics.jsonl`` of a one-process CPU run) and reports after each step, for the recipe's
vector quantizer: the training-batch usage and dead codes, the window the next call uses, the mean per-channel spread (std) of the
batch's latent vectors and of the codes, and the distance between their means (how far the encoder's output
has moved away from the codebook it was fit to). CPU, a few seconds per step at K <= 8192::

    python scripts/early_steps.py [--recipe fashion-mnist-vqvae] [--steps 40] [--set KEY=VALUE ...] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from vqkit import VectorQuantizer
from vqkit.quantizers.base import flatten_input
from vqkit.training import apply_overrides, build_from_recipe, load_datasets, load_recipe
from vqkit.training.optim import build_optimizer, lr_at
from vqkit.training.sampling import BatchStream
from vqkit.training.trainer import _train_step  # the trainer's own step: the replay is exact

COLUMNS = ["step", "train usage (%)", "dead codes", "window", "latent std", "code std", "|mean(z) - mean(c)|"]


def early_steps(recipe_name: str, steps: int, overrides: list[str]) -> list[dict[str, float]]:
    """Train the first ``steps`` steps of the recipe from scratch; one row of :data:`COLUMNS` per step."""
    recipe = apply_overrides(load_recipe(recipe_name), overrides)  # its schedule is the full run's
    torch.manual_seed(recipe.seed)
    train_ds, _ = load_datasets(recipe)
    model = build_from_recipe(recipe, train_ds)
    optimizer = build_optimizer(model, recipe.optim)
    quantizers = [m for m in model.modules() if isinstance(m, VectorQuantizer)]
    if len(quantizers) != 1:
        raise SystemExit(f"--recipe: expected a model with one VectorQuantizer, found {len(quantizers)}")
    vq = quantizers[0]
    latents: list[torch.Tensor] = []

    def keep_input(module, args, output) -> None:
        latents.append(flatten_input(vq, args[0].detach(), None)[0])  # (N, dim) rows, as the quantizer sees them

    hook = vq.register_forward_hook(keep_input)
    stream = BatchStream(len(train_ds), recipe.batch_size, recipe.seed, 0, 1)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if recipe.bf16 else contextlib.nullcontext
    rows = []
    model.train()
    for step in range(steps):
        latents.clear()
        x, y = train_ds.get_batch(stream.local_batch(step), torch.device("cpu"))
        metrics = _train_step(model, model.task, optimizer, x, y, lr=lr_at(recipe.optim, step, recipe.steps),
                              quantizer_weight=recipe.quantizer.loss_weight, grad_clip=recipe.optim.grad_clip,
                              autocast=autocast)
        with torch.no_grad():
            z = vq._project_in(latents[0].float())
            if vq.metric == "cosine":
                z = F.normalize(z, dim=-1)
            c = vq.latent_codebook
            rows.append({"step": step + 1, "train usage (%)": 100 * float(metrics["usage"]),
                         "dead codes": float(metrics["dead_codes"]), "window": float(vq.dead_code_window),
                         "latent std": float(z.std(0).mean()), "code std": float(c.std(0).mean()),
                         "|mean(z) - mean(c)|": float((z.mean(0) - c.mean(0)).norm())})
    hook.remove()
    return rows


def to_markdown(rows: list[dict[str, float]], command: str) -> str:
    lines = ["```", command, "```", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append(f"| {r['step']} | {r['train usage (%)']:.1f} | {r['dead codes']:.0f} | {r['window']:.0f} | "
                     f"{r['latent std']:.4f} | {r['code std']:.4f} | {r['|mean(z) - mean(c)|']:.4f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="fashion-mnist-vqvae")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps: expected an int >= 1, got {args.steps}")
    torch.set_num_threads(1)
    rows = early_steps(args.recipe, args.steps, args.overrides)
    text = to_markdown(rows, "python scripts/early_steps.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    if args.out:
        args.out.write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
