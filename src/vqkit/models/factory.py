"""Build quantizers and models from plain config values (``kind`` + keyword arguments).

Quantizer kinds (``build_quantizer(kind, dim, channel_dim=..., **kwargs)``):

=============  =====================================================================================
``vq``         :class:`~vqkit.VectorQuantizer` (needs ``codebook_size``)
``grouped``    :class:`~vqkit.GroupedVectorQuantizer` (``codebook_size``, ``groups``)
``residual``   :class:`~vqkit.ResidualVectorQuantizer` (``codebook_size``, ``num_levels``)
``fsq``        :class:`~vqkit.quantizers.scalar.FSQ` (``levels``, or ``codebook_size`` in 2^8..2^16 for the
               paper's recommended levels); the model's feature width is projected to ``len(levels)``
``latent``     :class:`~vqkit.quantizers.scalar.LatentQuantizer` (``values_per_dim``)
``vqpytorch``  the peer, vector-quantize-pytorch's ``VectorQuantize`` (:mod:`vqkit.models.peer`)
=============  =====================================================================================

Model kinds (``build_model(kind, image_shape, num_classes, quantizer, **kwargs)``): ``vqvae``,
``alexnet``, ``resnet18``, ``vit``. Unknown kinds or keyword arguments raise a ValueError naming them and
listing the valid ones.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from .base import QuantizedModel, QuantizerFactory

__all__ = [
    "QUANTIZER_KINDS",
    "MODEL_KINDS",
    "build_quantizer",
    "quantizer_factory",
    "quantizer_arguments",
    "build_model",
    "model_arguments",
    "check_kwargs",
]

QUANTIZER_KINDS = ("vq", "grouped", "residual", "fsq", "latent", "vqpytorch")
MODEL_KINDS = ("vqvae", "alexnet", "resnet18", "vit")

# arguments the factory fills in itself (never taken from config)
_FILLED = ("self", "dim", "channel_dim")


def _quantizer_class(kind: str) -> type:
    """The class behind ``kind`` (imported lazily: optional modules load only when used)."""
    if kind in ("vq", "grouped", "residual"):
        from ..quantizers import vector

        return {"vq": vector.VectorQuantizer, "grouped": vector.GroupedVectorQuantizer,
                "residual": vector.ResidualVectorQuantizer}[kind]
    if kind in ("fsq", "latent"):
        from ..quantizers import scalar

        return scalar.FSQ if kind == "fsq" else scalar.LatentQuantizer
    if kind == "vqpytorch":
        from .peer import PeerVectorQuantizer

        return PeerVectorQuantizer
    raise ValueError(f"quantizer.kind: expected one of {QUANTIZER_KINDS}, got {kind!r}")


def _signature_names(fn: Callable, skip: tuple[str, ...] = _FILLED) -> tuple[list[str], list[str], bool]:
    """(all named parameters, required ones, accepts **kwargs) of ``fn``, minus those in ``skip``."""
    names, required, var_kw = [], [], False
    for p in inspect.signature(fn).parameters.values():
        if p.kind is p.VAR_KEYWORD:
            var_kw = True
        elif p.kind is not p.VAR_POSITIONAL and p.name not in skip:
            names.append(p.name)
            if p.default is p.empty:
                required.append(p.name)
    return names, required, var_kw


def quantizer_arguments(kind: str) -> list[str]:
    """Keyword arguments accepted for a quantizer ``kind`` (for grouped / residual: theirs plus the
    :class:`~vqkit.VectorQuantizer` ones they forward)."""
    cls = _quantizer_class(kind)
    names, _, var_kw = _signature_names(cls.__init__)
    if kind == "fsq":
        names = [*names, "codebook_size"]
    if var_kw and kind in ("grouped", "residual"):
        inner, _, _ = _signature_names(_quantizer_class("vq").__init__)
        names += [n for n in inner if n not in names]
    if kind == "vqpytorch":
        from .peer import peer_arguments

        names += [n for n in peer_arguments() if n not in names]
    return sorted(names)


def check_kwargs(section: str, given: Mapping[str, Any], valid: list[str]) -> None:
    """Raise a ValueError naming every unknown key of ``given`` and listing ``valid``."""
    unknown = [k for k in given if k not in valid]
    if unknown:
        names = ", ".join(f"{section}.{k}" for k in unknown)
        raise ValueError(f"{names}: unknown key{'s' if len(unknown) > 1 else ''}; valid keys: {', '.join(valid)}")


def build_quantizer(kind: str, dim: int, *, channel_dim: int = -1, **kwargs: Any) -> nn.Module:
    """A quantizer of ``kind`` for ``dim``-channel inputs with channels on ``channel_dim``.

    Args:
        kind: one of :data:`QUANTIZER_KINDS`.
        dim: input channels (the model's feature width at the quantizer).
        channel_dim: channel axis of the input (``1`` for ``B x C x H x W``, ``-1`` for tokens).
        **kwargs: the quantizer's own arguments (e.g. ``codebook_size=512, codebook={"kind": "affine", "lr": 2.0}``).
    """
    cls = _quantizer_class(kind)
    check_kwargs("quantizer", kwargs, quantizer_arguments(kind))
    kwargs = dict(kwargs)
    if kind == "fsq":
        if "levels" not in kwargs:
            if "codebook_size" not in kwargs:
                raise ValueError("quantizer.levels: kind 'fsq' needs levels (e.g. [8, 5, 5, 5]) or codebook_size")
            from ..quantizers.scalar import fsq_levels

            kwargs["levels"] = fsq_levels(kwargs.pop("codebook_size"))
        elif "codebook_size" in kwargs:
            raise ValueError("quantizer.codebook_size: give either levels or codebook_size for kind 'fsq', not both")
        levels = kwargs.pop("levels")
        return cls(list(levels), dim=dim, channel_dim=channel_dim, **kwargs)
    _, required, _ = _signature_names(cls.__init__)
    missing = [r for r in required if r not in kwargs]
    if missing:
        raise ValueError(f"{', '.join('quantizer.' + m for m in missing)}: required for kind {kind!r}")
    return cls(dim, channel_dim=channel_dim, **kwargs)


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
    names, _, _ = _signature_names(_model_class(kind).__init__, ("self", "image_shape", "num_classes", "make_quantizer"))
    return sorted(names)


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
            raise ValueError(f"quantizer.kind: required, one of {QUANTIZER_KINDS}")
        quantizer = quantizer_factory(spec.pop("kind"), **spec)
    if cls.task == "reconstruction":
        return cls(image_shape, make_quantizer=quantizer, **kwargs)
    return cls(image_shape, num_classes, make_quantizer=quantizer, **kwargs)
