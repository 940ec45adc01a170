"""vqkit: vector quantization and its scalar / ternary relatives for PyTorch.

The public API is re-exported here; see README.md for the quick start.
"""

from . import distributed, metrics
from .estimators import rotation_trick, straight_through
from .losses import vq_loss
from .maintenance import kmeans
from .quantizers import (
    FSQ,
    PLAIN_STE,
    GroupedVectorQuantizer,
    LatentQuantizer,
    Quantizer,
    QuantizerOutput,
    ResidualVectorQuantizer,
    VectorQuantizer,
    fsq_levels,
    latent_quantization_param_groups,
    list_quantizers,
    make_quantizer,
    register_quantizer,
)
from .ternary import BitLinear, freeze_model, packed_size_report, quantize_model
from .search import SearchResult, nearest_code

__version__ = "0.1.0"

__all__ = [
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
    "Quantizer",
    "QuantizerOutput",
    "list_quantizers",
    "make_quantizer",
    "register_quantizer",
    "nearest_code",
    "SearchResult",
    "straight_through",
    "rotation_trick",
    "vq_loss",
    "kmeans",
    "metrics",
    "distributed",
]
