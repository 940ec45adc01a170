"""Models with a quantized bottleneck: a convolutional VQ-VAE and AlexNet-, ResNet-18- and ViT-style
classifiers, built from config by :func:`build_model` / :func:`build_quantizer`. The peer library's adapter
(:mod:`vqkit.models.peer`, optional dependency) loads only when the ``vqpytorch`` quantizer is used."""

from .base import ModelOutput, QuantizedModel, QuantizerFactory
from .classifiers import AlexNetVQ, ResNet18VQ, ViTVQ
from .factory import (
    MODEL_KINDS,
    build_model,
    build_quantizer,
    model_arguments,
    quantizer_arguments,
    quantizer_factory,
    quantizer_kinds,
)
from .vqvae import VQVAE

__all__ = [
    "ModelOutput",
    "QuantizedModel",
    "QuantizerFactory",
    "VQVAE",
    "AlexNetVQ",
    "ResNet18VQ",
    "ViTVQ",
    "MODEL_KINDS",
    "quantizer_kinds",
    "build_model",
    "build_quantizer",
    "model_arguments",
    "quantizer_arguments",
    "quantizer_factory",
]
