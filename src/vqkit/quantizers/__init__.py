"""All vqkit quantizers share the contract of :mod:`vqkit.quantizers.base`."""

from .base import Quantizer, QuantizerOutput
from .vector import PLAIN_STE, GroupedVectorQuantizer, ResidualVectorQuantizer, VectorQuantizer

__all__ = [
    "Quantizer",
    "QuantizerOutput",
    "VectorQuantizer",
    "GroupedVectorQuantizer",
    "ResidualVectorQuantizer",
    "PLAIN_STE",
]
