"""vqkit: vector quantization and its scalar / ternary relatives for PyTorch.

The public API is re-exported here (see README.md for the quick start). The exports load on first use
(PEP 562), so ``import vqkit`` and the ``vqkit`` command's ``--help`` / ``--version`` do not import
torch; ``from vqkit import VectorQuantizer`` imports what that name needs.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.7.0"

# public name -> the submodule that defines it (a submodule itself when the name is the module's)
_EXPORTS = {
    "VectorQuantizer": ".quantizers",
    "GroupedVectorQuantizer": ".quantizers",
    "ResidualVectorQuantizer": ".quantizers",
    "GroupedResidualVectorQuantizer": ".quantizers",
    "ResidualFSQ": ".quantizers",
    "PLAIN_STE": ".quantizers",
    "PAPER": ".quantizers",
    "TECHNIQUES": ".quantizers",
    "FSQ": ".quantizers",
    "fsq_levels": ".quantizers",
    "LatentQuantizer": ".quantizers",
    "latent_quantization_param_groups": ".quantizers",
    "LFQ": ".quantizers",
    "BSQ": ".quantizers",
    "Quantizer": ".quantizers",
    "QuantizerOutput": ".quantizers",
    "IndexLayout": ".quantizers",
    "list_quantizers": ".quantizers",
    "make_quantizer": ".quantizers",
    "register_quantizer": ".quantizers",
    "BitLinear": ".ternary",
    "quantize_model": ".ternary",
    "freeze_model": ".ternary",
    "packed_size_report": ".ternary",
    "codebooks": None,
    "nearest_code": ".search",
    "SearchResult": ".search",
    "straight_through": ".estimators",
    "rotation_trick": ".estimators",
    "vq_loss": ".losses",
    "kmeans": ".maintenance",
    "metrics": None,
    "distributed": None,
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vqkit' has no attribute {name!r}")
    module = _EXPORTS[name]
    if module is None:
        value: Any = importlib.import_module(f".{name}", __name__)
    else:
        value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
