"""All vqkit quantizers share the contract of :mod:`vqkit.quantizers.base`."""

from .base import Quantizer, QuantizerOutput
from .scalar import FSQ, LatentQuantizer, fsq_levels, latent_quantization_param_groups
from .ternary import BitLinear, freeze_model, packed_size_report, quantize_model
from .vector import PLAIN_STE, GroupedVectorQuantizer, ResidualVectorQuantizer, VectorQuantizer

__all__ = [
    "Quantizer",
    "QuantizerOutput",
    "VectorQuantizer",
    "GroupedVectorQuantizer",
    "ResidualVectorQuantizer",
    "PLAIN_STE",
    "FSQ",
    "fsq_levels",
    "LatentQuantizer",
    "latent_quantization_param_groups",
    "BitLinear",
    "quantize_model",
    "freeze_model",
    "packed_size_report",
]
