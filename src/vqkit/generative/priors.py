"""The prior registry: build a token prior by kind from plain (JSON-able) arguments."""

from __future__ import annotations

from typing import Any

from .autoregressive import AutoregressivePrior
from .maskgit import MaskedTokenPrior
from .transformer import TokenPrior

__all__ = ["PRIOR_KINDS", "build_prior"]

PRIOR_KINDS: dict[str, type[TokenPrior]] = {"maskgit": MaskedTokenPrior, "autoregressive": AutoregressivePrior}


def build_prior(kind: str, **kwargs: Any) -> TokenPrior:
    """A prior of ``kind`` (``"maskgit"`` or ``"autoregressive"``) built with ``kwargs``
    (``vocab_sizes``, ``length``, ``num_classes``, ``dim``, ``depth``, ...; ``prior.config`` round-trips)."""
    if kind not in PRIOR_KINDS:
        raise ValueError(f"kind: expected one of {tuple(PRIOR_KINDS)}, got {kind!r}")
    return PRIOR_KINDS[kind](**kwargs)
