"""Built-in recipes (plain data), by name ``<dataset>-<model>`` (``vqkit recipes`` lists them, ``vqkit recipes NAME``
prints one as TOML to start a file from).

Datasets: ``digits`` (bundled, 8x8), ``fashion-mnist`` / ``mnist`` (28x28), ``cifar10`` (32x32); models:
``vqvae``, ``alexnet``, ``resnet18``, ``vit``. They are sized for a few CPU minutes; scale ``steps`` and the
model widths up with ``--set`` for real runs. ``digits-vqvae`` is the default recipe of ``vqkit train``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["preset_names", "preset_data", "DATASET_IMAGE_SIZE"]

DATASET_IMAGE_SIZE = {"digits": 8, "fashion-mnist": 28, "mnist": 28, "cifar10": 32}
_MODELS = ("vqvae", "alexnet", "resnet18", "vit")


def _vqvae(dataset: str) -> dict[str, Any]:
    if dataset == "digits":
        return dict(
            steps=600, batch_size=128,
            model=dict(kind="vqvae", hidden=64, latent_dim=16, downsample=1),
            quantizer=dict(kind="vq", loss_weight=10.0, codebook_size=256),
            optim=dict(name="adamw", lr=1e-3), log=dict(eval_every=100),
        )
    # the reference setup of the reproduction (docs/results): conv 28 -> 7x7 (32 -> 8x8), K=512, D=32,
    # AdamW 3e-4, batch 128, 600 steps, loss = MSE + 5 x quantizer loss; 32 hidden channels keep a run
    # near one CPU minute
    return dict(
        steps=600, batch_size=128,
        model=dict(kind="vqvae", hidden=32, latent_dim=32, downsample=2),
        quantizer=dict(kind="vq", loss_weight=5.0, codebook_size=512),
        optim=dict(name="adamw", lr=3e-4), log=dict(eval_every=150),
    )


def _classifier(dataset: str, model: str) -> dict[str, Any]:
    size = DATASET_IMAGE_SIZE[dataset]
    args: dict[str, Any] = {
        "alexnet": dict(kind="alexnet", width=16, hidden=256, quantize_at=4),
        "resnet18": dict(kind="resnet18", width=8, quantize_at=3),
        "vit": dict(kind="vit", patch_size=2 if size <= 8 else 4, dim=64, depth=4, heads=4, quantize_at=2),
    }[model]
    return dict(
        steps=600, batch_size=128,
        model=args,
        quantizer=dict(kind="vq", loss_weight=1.0, codebook_size=256 if size <= 8 else 512),
        optim=dict(name="adamw", lr=1e-3, weight_decay=1e-4), log=dict(eval_every=150),
    )


def _preset(dataset: str, model: str) -> dict[str, Any]:
    body = _vqvae(dataset) if model == "vqvae" else _classifier(dataset, model)
    return dict(name=f"{dataset}-{model}", data=dict(dataset=dataset), **body)


def preset_names() -> list[str]:
    """Names of the built-in recipes."""
    return [f"{d}-{m}" for d in DATASET_IMAGE_SIZE for m in _MODELS]


def preset_data(name: str) -> dict[str, Any] | None:
    """The built-in recipe ``name`` as nested dicts (for :meth:`Recipe.from_dict
    <vqkit.training.recipe.Recipe.from_dict>`), None for an unknown name."""
    for dataset in DATASET_IMAGE_SIZE:
        for model in _MODELS:
            if name == f"{dataset}-{model}":
                return _preset(dataset, model)
    return None
