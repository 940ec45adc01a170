"""The generative second stage end to end: tokenizer -> token files -> priors -> samples -> metrics.

Trains (or reuses) a VQ-VAE tokenizer with the built-in recipe ``<dataset>-vqvae``, encodes the train and
test splits, trains a MaskGIT prior and an autoregressive baseline on the train tokens, samples as many
class-conditional images as the test split has (with its labels), and measures them in the feature
space of a classifier trained here (:mod:`vqkit.generative.quality`): Fréchet distance (FD),
precision / recall and the classifier's accuracy on the samples. Reference row: the tokenizer's
reconstructions of the test split (what a perfect prior over its tokens would reach).

    PYTHONPATH=src OMP_NUM_THREADS=1 python examples/generative_digits.py --out runs/gen-digits
    PYTHONPATH=src OMP_NUM_THREADS=1 python examples/generative_digits.py --dataset fashion-mnist \\
        --out runs/gen-fm --tokenizer-steps 600 --prior-steps 3000 --feature-steps 2000
    PYTHONPATH=src OMP_NUM_THREADS=1 python examples/generative_digits.py --out runs/gen-digits-rvq \
        --kinds maskgit --set 'quantizer={kind="residual_vq", codebook_size=64, num_levels=2}'
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from vqkit.data import load_dataset
from vqkit.generative import (
    PriorConfig,
    decode_tokens,
    encode_dataset,
    load_or_train_feature_net,
    load_tokens,
    sample_grid,
    sample_images,
    sample_quality,
    save_tokens,
    tokenizer_fingerprint,
    train_prior,
)
from vqkit.training import apply_overrides, build_from_recipe, latest_checkpoint, load_checkpoint, load_recipe, train


def tokenizer(out: Path, dataset: str, steps: int, seed: int, overrides: list[str]):
    """Train the recipe's VQ-VAE into ``out`` (or reuse a finished run there); the model in eval mode."""
    if not (out / "run.json").is_file():
        recipe = apply_overrides(load_recipe(f"{dataset}-vqvae"), [f"steps={steps}", f"seed={seed}",
                                                                   "log.progress=false", "log.report=false", *overrides])
        train(recipe, out)
    recipe = load_recipe(out / "recipe.toml")
    model = build_from_recipe(recipe, load_dataset(dataset, "test"))
    load_checkpoint(latest_checkpoint(out), model, None, restore_rng=False)
    return model.eval(), recipe


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/gen-digits"))
    p.add_argument("--dataset", default="digits")
    p.add_argument("--tokenizer-steps", type=int, default=600)
    p.add_argument("--prior-steps", type=int, default=2000)
    p.add_argument("--feature-steps", type=int, default=1000)
    p.add_argument("--kinds", nargs="+", default=["maskgit", "autoregressive"])
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--decode-steps", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="tokenizer recipe override, e.g. 'quantizer={kind=\"residual\", codebook_size=64, num_levels=2}'")
    args = p.parse_args()
    torch.set_num_threads(1)
    out, rows, times = args.out, {}, {}
    train_set, test_set = load_dataset(args.dataset, "train"), load_dataset(args.dataset, "test")

    t = time.perf_counter()
    model, recipe = tokenizer(out / "tokenizer", args.dataset, args.tokenizer_steps, args.seed,
                               args.overrides)
    times["tokenizer"] = time.perf_counter() - t
    t = time.perf_counter()
    fingerprint = tokenizer_fingerprint(model, recipe.to_dict())
    paths = {}
    for split, data in (("train", train_set), ("test", test_set)):
        paths[split] = out / "tokens" / f"{split}.safetensors"
        if not paths[split].is_file() or load_tokens(paths[split]).spec.tokenizer_hash != fingerprint:
            save_tokens(encode_dataset(model, data, tokenizer_hash=fingerprint), paths[split])
    train_tokens = load_tokens(paths["train"], tokenizer_hash=fingerprint)
    test_tokens = load_tokens(paths["test"], tokenizer_hash=fingerprint)
    times["encode"] = time.perf_counter() - t

    t = time.perf_counter()
    net, info = load_or_train_feature_net(out / "features", train_set, test_set, steps=args.feature_steps,
                                          seed=args.seed)
    times["feature net"] = time.perf_counter() - t
    real, labels = test_set.get_batch(torch.arange(len(test_set)))
    rows["tokenizer reconstructions"] = sample_quality(net, real, decode_tokens(model, test_tokens.indices), labels)

    for kind in args.kinds:
        t = time.perf_counter()
        run = out / f"prior-{kind}"
        config = PriorConfig(kind=kind, model=dict(dim=args.dim, depth=args.depth, heads=4), steps=args.prior_steps,
                             batch_size=64, lr=3e-4, warmup_steps=100, seed=args.seed, log_every=50, eval_every=500)
        result = train_prior(train_tokens, run, config, val_tokens=test_tokens, resume=(run / "checkpoints").exists())
        times[f"prior {kind}"] = time.perf_counter() - t
        t = time.perf_counter()
        options = dict(steps=args.decode_steps) if kind == "maskgit" else {}
        gen = torch.Generator().manual_seed(args.seed)
        images = sample_images(result.prior, model, train_tokens.spec, labels=labels, generator=gen, **options)
        sample_grid(result.prior, model, train_tokens.spec, out / f"samples-{kind}.png", per_class=10, scale=4,
                    generator=torch.Generator().manual_seed(args.seed), **options)
        rows[f"{kind} prior samples"] = sample_quality(net, real, images, labels)
        times[f"sample {kind}"] = time.perf_counter() - t
        rows[f"{kind} prior samples"].val_loss = result.final.get("val_loss")

    print(f"feature net: {args.feature_steps} steps, test accuracy {info.get('test_accuracy', float('nan')):.4f}")
    print("| images | FD | precision | recall | class accuracy |\n|---|---|---|---|---|")
    for name, q in rows.items():
        print(f"| {name} | {q.fd:.3f} | {q.precision:.3f} | {q.recall:.3f} | {q.accuracy:.3f} |")
    print("wall times (s): " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()))
    (out / "results.json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "feature_net": info,
         "rows": {k: {**q.to_dict(), **({"val_loss": q.val_loss} if hasattr(q, "val_loss") else {})}
                  for k, q in rows.items()},
         "wall_time_s": {k: round(v, 1) for k, v in times.items()}}, indent=1) + "\n")


if __name__ == "__main__":
    main()
