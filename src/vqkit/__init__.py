"""vqkit: vector quantization and its scalar / ternary relatives for PyTorch.

The public API is re-exported here; see README.md for the quick start.
"""

from . import distributed, metrics
from .estimators import rotation_trick, straight_through
from .losses import vq_loss
from .maintenance import kmeans
from .quantizers import (
    PLAIN_STE,
    GroupedVectorQuantizer,
    Quantizer,
    QuantizerOutput,
    ResidualVectorQuantizer,
    VectorQuantizer,
)
from .search import SearchResult, nearest_code

__version__ = "0.1.0"

__all__ = [
    "VectorQuantizer",
    "GroupedVectorQuantizer",
    "ResidualVectorQuantizer",
    "PLAIN_STE",
    "Quantizer",
    "QuantizerOutput",
    "nearest_code",
    "SearchResult",
    "straight_through",
    "rotation_trick",
    "vq_loss",
    "kmeans",
    "metrics",
    "distributed",
]
