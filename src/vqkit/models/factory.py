"""Build quantizers and models from plain config values (``kind`` + keyword arguments).

Quantizer kinds are the names of the quantizer registry (:func:`vqkit.list_quantizers`: ``vq``,
``grouped_vq``, ``residual_vq``, ``fsq``, ``latent``, ... and ``vqpytorch``, the peer library, when it is
installed); ``build_quantizer(kind, dim, channel_dim=..., **kwargs)`` is
:func:`vqkit.make_quantizer` with the argument check of recipes.

Model kinds (``build_model(kind, image_shape, num_classes, quantizer, **kwargs)``): ``vqvae``,
``alexnet``, ``resnet18``, ``vit``. Unknown kinds or keyword arguments raise a ValueError naming them and
listing the valid ones.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from torch import nn

from ..quantizers.registry import get_quantizer, list_quantizers
from .base import QuantizedModel, QuantizerFactory

__all__ = [
    "MODEL_KINDS",
    "quantizer_kinds",
    "build_quantizer",
    "quantizer_factory",
    "quantizer_arguments",
    "build_model",
    "model_arguments",
    "check_kwargs",
]

MODEL_KINDS = ("vqvae", "alexnet", "resnet18", "vit")


def quantizer_kinds() -> list[str]:
    """The quantizer kinds recipes accept: the registry's names."""
    return list_quantizers()


def _entry(kind: str):
    try:
        return get_quantizer(kind)
    except ValueError as err:
        raise ValueError(f"quantizer.kind: {err}") from None


def quantizer_arguments(kind: str) -> list[str]:
    """Keyword arguments accepted for a quantizer ``kind`` (for grouped / residual: theirs plus the
    :class:`~vqkit.VectorQuantizer` ones they forward)."""
    return _entry(kind).arguments()


def check_kwargs(section: str, given: Mapping[str, Any], valid: list[str]) -> None:
    """Raise a ValueError naming every unknown key of ``given`` and listing ``valid``."""
    unknown = [k for k in given if k not in valid]
    if unknown:
        names = ", ".join(f"{section}.{k}" for k in unknown)
        raise ValueError(f"{names}: unknown key{'s' if len(unknown) > 1 else ''}; valid keys: {', '.join(valid)}")


def build_quantizer(kind: str, dim: int, *, channel_dim: int = -1, **kwargs: Any) -> nn.Module:
    """A quantizer of ``kind`` for ``dim``-channel inputs with channels on ``channel_dim``.

    Args:
        kind: a registered quantizer name.
        dim: input channels (the model's feature width at the quantizer).
        channel_dim: channel axis of the input (``1`` for ``B x C x H x W``, ``-1`` for tokens).
        **kwargs: the quantizer's own arguments (e.g. ``codebook_size=512, codebook={"kind": "affine", "lr": 2.0}``).
    """
    entry = _entry(kind)
    check_kwargs("quantizer", kwargs, entry.arguments())
    missing = [r for r in entry.required() if r not in kwargs]
    if missing:  # named as recipe keys
        raise ValueError(f"{', '.join('quantizer.' + m for m in missing)}: required for kind {kind!r}")
    return entry.build(dim, channel_dim=channel_dim, **kwargs)


def quantizer_factory(kind: str, **kwargs: Any) -> QuantizerFactory:
    """A ``make_quantizer(dim, channel_dim)`` closure for the models; validates the keys right away."""
    check_kwargs("quantizer", kwargs, quantizer_arguments(kind))

    def make(dim: int, channel_dim: int) -> nn.Module:
        return build_quantizer(kind, dim, channel_dim=channel_dim, **kwargs)

    return make


def _model_class(kind: str) -> type[QuantizedModel]:
    if kind == "vqvae":
        from .vqvae import VQVAE

        return VQVAE
    if kind in ("alexnet", "resnet18", "vit"):
        from . import classifiers

        return {"alexnet": classifiers.AlexNetVQ, "resnet18": classifiers.ResNet18VQ,
                "vit": classifiers.ViTVQ}[kind]
    raise ValueError(f"model.kind: expected one of {MODEL_KINDS}, got {kind!r}")


def model_arguments(kind: str) -> list[str]:
    """Keyword arguments accepted by model ``kind`` (besides image shape, classes and quantizer)."""
    skip = ("self", "image_shape", "num_classes", "make_quantizer")
    params = inspect.signature(_model_class(kind).__init__).parameters.values()
    return sorted(p.name for p in params if p.name not in skip and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))


def build_model(
    kind: str,
    image_shape: tuple[int, int, int],
    num_classes: int,
    quantizer: QuantizerFactory | Mapping[str, Any],
    **kwargs: Any,
) -> QuantizedModel:
    """A model of ``kind`` for ``(C, H, W)`` images.

    Args:
        kind: one of :data:`MODEL_KINDS`.
        image_shape: ``(C, H, W)`` of the inputs.
        num_classes: classes (used by classifiers).
        quantizer: a ``make_quantizer(dim, channel_dim)`` callable, or a mapping ``{"kind": ..., **kwargs}``.
        **kwargs: the model's own arguments (see :func:`model_arguments`).
    """
    cls = _model_class(kind)
    check_kwargs("model", kwargs, model_arguments(kind))
    if isinstance(quantizer, Mapping):
        spec = dict(quantizer)
        if "kind" not in spec:
            raise ValueError(f"quantizer.kind: required, one of {', '.join(quantizer_kinds())}")
        quantizer = quantizer_factory(spec.pop("kind"), **spec)
    if cls.task == "reconstruction":
        return cls(image_shape, make_quantizer=quantizer, **kwargs)
    return cls(image_shape, num_classes, make_quantizer=quantizer, **kwargs)
