"""BitLinear (BitNet b1.58, absmean and "Reloaded" median) vs fp32 on scikit-learn digits.

An MLP 64-H-H-10 (H = 256) is trained from the same init with the same seed, optimizer and budget four
times: fp32; fp32 with BitLinear's affine-free LayerNorm before each Linear (control for the norm);
every Linear as BitLinear(scale="absmean"); every Linear as BitLinear(scale="median"). Prints test accuracies (mean
over seeds), checks that the packed inference path (2-bit weights, int8 activations) reproduces the
fake-quant predictions, and reports the packed size.

    PYTHONPATH=src python examples/bitlinear_digits.py            # ~20 s on 1 CPU thread
    PYTHONPATH=src python examples/bitlinear_digits.py --seeds 1 --epochs 20
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from vqkit.ternary import freeze_model, packed_size_report, quantize_model


def digits_split(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fixed stratified 75/25 split of the 1797 digits, pixels scaled to [0, 1]."""
    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x / 16.0, y, test_size=0.25, random_state=seed, stratify=y)
    as_x = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    as_y = lambda a: torch.tensor(a, dtype=torch.long)  # noqa: E731
    return as_x(x_tr), as_y(y_tr), as_x(x_te), as_y(y_te)


def mlp(hidden: int = 256) -> nn.Sequential:
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def with_input_norm(model: nn.Module) -> nn.Module:
    """Control: the fp32 model with BitLinear's affine-free LayerNorm before every Linear."""
    for i, m in enumerate(model):
        if isinstance(m, nn.Linear):
            model[i] = nn.Sequential(nn.LayerNorm(m.in_features, elementwise_affine=False), m)
    return model


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float, seed: int,
          batch_size: int = 64) -> nn.Module:
    """AdamW (wd 0.01) with cosine decay; the data order depends only on ``seed``."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(batch_size):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            sched.step()
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.eval()(x).argmax(-1)


def run(seed: int, epochs: int, lr: float, hidden: int = 256) -> dict[str, float]:
    x_tr, y_tr, x_te, y_te = digits_split()
    torch.manual_seed(seed)
    init = mlp(hidden)  # the three models start from the same weights
    results: dict[str, float] = {}
    for name in ("fp32", "fp32+norm", "absmean", "median"):
        model = copy.deepcopy(init)
        if name == "fp32+norm":
            with_input_norm(model)
        elif name != "fp32":
            quantize_model(model, scale=name)
        train(model, x_tr, y_tr, epochs=epochs, lr=lr, seed=seed)
        pred = predict(model, x_te)
        results[name] = (pred == y_te).float().mean().item()
        if name in ("absmean", "median"):
            frozen = freeze_model(copy.deepcopy(model))
            agree = (predict(frozen, x_te) == pred).float().mean().item()
            results[f"{name}_frozen_agreement"] = agree
            results[f"{name}_frozen"] = (predict(frozen, x_te) == y_te).float().mean().item()
            results["size"] = packed_size_report(frozen)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--margin", type=float, default=0.03, help="allowed gap BitLinear vs the better fp32 model")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (tiny matmuls: 1 is fastest)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    runs = [run(seed, args.epochs, args.lr, args.hidden) for seed in range(args.seeds)]
    mean = {k: sum(r[k] for r in runs) / len(runs) for k in runs[0] if k != "size"}
    print(f"digits MLP 64-{args.hidden}-{args.hidden}-10, {args.epochs} epochs, AdamW lr {args.lr}, "
          f"{args.seeds} seed(s)")
    for name in ("fp32", "fp32+norm", "absmean", "median"):
        per_seed = " ".join(f"{r[name]:.4f}" for r in runs)
        line = f"  {name:9s} test accuracy {mean[name]:.4f}  (per seed: {per_seed})"
        if name in ("absmean", "median"):
            line += f"  frozen {mean[name + '_frozen']:.4f}, agreement {mean[name + '_frozen_agreement']:.4f}"
        print(line)
    size = runs[0]["size"]
    print(f"  packed BitLinear weights: {size['packed_bytes']} bytes vs fp32 {size['fp32_bytes']} bytes "
          f"({size['compression']:.1f}x; {size['ternary_weights']} weights; other params {size['other_bytes']} bytes)")
    print(f"  elapsed {time.perf_counter() - start:.1f} s")

    assert mean["fp32"] >= 0.95, mean
    best_fp32 = max(mean["fp32"], mean["fp32+norm"])
    for name in ("absmean", "median"):
        assert mean[name] >= best_fp32 - args.margin, (name, mean)
        assert mean[name + "_frozen_agreement"] >= 0.995, (name, mean)
    print("OK")


if __name__ == "__main__":
    main()
