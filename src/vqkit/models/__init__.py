"""Models with a quantized bottleneck: a convolutional VQ-VAE and AlexNet-, ResNet-18- and ViT-style
classifiers, built from config by :func:`build_model` / :func:`build_quantizer`."""

from .base import ModelOutput, QuantizedModel, QuantizerFactory
from .classifiers import AlexNetVQ, ResNet18VQ, ViTVQ
from .factory import (
    MODEL_KINDS,
    QUANTIZER_KINDS,
    build_model,
    build_quantizer,
    model_arguments,
    quantizer_arguments,
    quantizer_factory,
)
from .peer import PeerVectorQuantizer
from .vqvae import VQVAE

__all__ = [
    "ModelOutput",
    "QuantizedModel",
    "QuantizerFactory",
    "VQVAE",
    "AlexNetVQ",
    "ResNet18VQ",
    "ViTVQ",
    "PeerVectorQuantizer",
    "MODEL_KINDS",
    "QUANTIZER_KINDS",
    "build_model",
    "build_quantizer",
    "model_arguments",
    "quantizer_arguments",
    "quantizer_factory",
]
