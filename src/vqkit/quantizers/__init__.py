"""Every vqkit quantizer follows the contract of :mod:`vqkit.quantizers.base` and is registered by name in
:mod:`vqkit.quantizers.registry` (``list_quantizers()``, ``make_quantizer(name, dim, **kwargs)``)."""

from .base import REQUIRED_STATS, IndexLayout, Quantizer, QuantizerOutput
from .registry import get_quantizer, list_quantizers, make_quantizer, quantizer_arguments, register_quantizer
from .lookup_free import BSQ, LFQ
from .residual import GroupedResidualVectorQuantizer, ResidualFSQ, ResidualVectorQuantizer
from .scalar import FSQ, LatentQuantizer, fsq_levels, latent_quantization_param_groups
from .vector import PAPER, PLAIN_STE, TECHNIQUES, GroupedVectorQuantizer, VectorQuantizer

__all__ = [
    "Quantizer",
    "QuantizerOutput",
    "IndexLayout",
    "REQUIRED_STATS",
    "register_quantizer",
    "list_quantizers",
    "get_quantizer",
    "make_quantizer",
    "quantizer_arguments",
    "VectorQuantizer",
    "GroupedVectorQuantizer",
    "ResidualVectorQuantizer",
    "GroupedResidualVectorQuantizer",
    "ResidualFSQ",
    "PLAIN_STE",
    "PAPER",
    "TECHNIQUES",
    "FSQ",
    "fsq_levels",
    "LatentQuantizer",
    "latent_quantization_param_groups",
    "LFQ",
    "BSQ",
]
