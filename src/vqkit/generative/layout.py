"""How a tokenizer's code indices are laid out, and the token space a prior models.

A quantizer's indices are ``(...)`` (one codebook) or ``(..., *trailing)`` with trailing index axes:
``(G,)`` for groups / residual levels / multi-codebook FSQ / per-dimension latent indices, ``(G, L)`` for
grouped residual VQ. The priors always work on flat columns ``(..., C)`` with ``C = prod(trailing) >= 1``
(row-major over the trailing axes, so a grouped residual map ``(..., G, L)`` becomes ``G * L`` columns,
group-major), column ``c`` holding values in ``[0, vocab_sizes[c])``; :class:`TokenLayout` converts
between the two. :func:`index_layout` is the one place that asks a quantizer for its layout.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["TokenLayout", "TokenSpec", "index_layout"]


def _as_trailing(trailing: bool | Sequence[int], columns: int) -> tuple[int, ...]:
    """The trailing index axes from a tuple of sizes, or from the older bool form (True = one axis of
    ``columns``, False = none)."""
    if isinstance(trailing, bool):
        return (columns,) if trailing else ()
    if isinstance(trailing, (str, bytes)) or not isinstance(trailing, Sequence):
        raise ValueError(f"trailing: expected a tuple of axis sizes (or a bool), got {trailing!r}")
    axes = tuple(trailing)
    if not all(isinstance(a, int) and not isinstance(a, bool) and a >= 1 for a in axes):
        raise ValueError(f"trailing: expected axis sizes >= 1, got {trailing!r}")
    return axes


@dataclass(frozen=True)
class TokenLayout:
    """Per-column vocabulary sizes of a quantizer's indices and the shape of their trailing axes.

    Attributes:
        vocab_sizes: number of codes of each index column (``C`` entries, each >= 1), row-major over
            the trailing axes.
        trailing: the trailing index axes of the quantizer's indices: ``()`` for plain ``(...)`` indices
            (``C == 1``), ``(C,)`` for one column axis, ``(G, L)`` for grouped residual VQ
            (``C == G * L``). A bool is accepted for the single-axis case (True = ``(C,)``, False = ``()``).
    """

    vocab_sizes: tuple[int, ...]
    trailing: tuple[int, ...]

    def __post_init__(self) -> None:
        sizes = tuple(self.vocab_sizes)
        if not sizes or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in sizes):
            raise ValueError(f"vocab_sizes: expected a non-empty sequence of ints >= 1, got {self.vocab_sizes!r}")
        axes = _as_trailing(self.trailing, len(sizes))
        if math.prod(axes) != len(sizes):
            raise ValueError(f"vocab_sizes: {len(sizes)} columns do not fill the trailing index axes {axes} "
                             f"(expected {math.prod(axes)})")
        object.__setattr__(self, "vocab_sizes", sizes)
        object.__setattr__(self, "trailing", axes)

    @property
    def columns(self) -> int:
        """Number of index columns ``C`` (the product of the trailing axes)."""
        return len(self.vocab_sizes)

    def to_columns(self, indices: Tensor) -> Tensor:
        """Quantizer indices ``(..., *trailing)`` -> ``(..., C)`` (row-major over the trailing axes)."""
        k = len(self.trailing)
        if k == 0:
            return indices.unsqueeze(-1)
        if indices.ndim < k or tuple(indices.shape[indices.ndim - k:]) != self.trailing:
            raise ValueError(f"indices: expected trailing axes {self.trailing}, got shape {tuple(indices.shape)}")
        return indices if k == 1 else indices.reshape(*indices.shape[:indices.ndim - k], self.columns)

    def from_columns(self, tokens: Tensor) -> Tensor:
        """``(..., C)`` -> the quantizer's index layout ``(..., *trailing)``."""
        if tokens.shape[-1:] != (self.columns,):
            raise ValueError(f"tokens: expected a last axis of size {self.columns} (columns), "
                             f"got {tuple(tokens.shape)}")
        return tokens.reshape(*tokens.shape[:-1], *self.trailing)

    def check(self, name: str, tokens: Tensor) -> None:
        """Raise unless ``tokens`` is an int64 ``(..., C)`` tensor with column ``c`` in ``[0, vocab_sizes[c])``."""
        if not isinstance(tokens, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(tokens).__name__}")
        if tokens.dtype != torch.int64:
            raise TypeError(f"{name}: expected dtype torch.int64, got {tokens.dtype}")
        if tokens.ndim < 1 or tokens.shape[-1] != self.columns:
            raise ValueError(f"{name}: expected a last axis of size {self.columns} (index columns), "
                             f"got shape {tuple(tokens.shape)}")
        if tokens.numel() == 0:
            return
        flat = tokens.reshape(-1, self.columns)
        lo, hi = flat.amin(0).tolist(), flat.amax(0).tolist()
        for c, (a, b, k) in enumerate(zip(lo, hi, self.vocab_sizes)):
            if a < 0 or b >= k:
                raise ValueError(f"{name}: column {c} expected values in [0, {k}), got range [{a}, {b}]")

    def to_dict(self) -> dict[str, Any]:
        return {"vocab_sizes": list(self.vocab_sizes), "trailing": list(self.trailing)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TokenLayout:
        """Inverse of :meth:`to_dict`; also reads the bool ``trailing`` of version-1 token files."""
        trailing = d["trailing"]
        return cls(tuple(int(k) for k in d["vocab_sizes"]),
                   trailing if isinstance(trailing, bool) else tuple(int(a) for a in trailing))


def index_layout(quantizer: nn.Module) -> TokenLayout:
    """The token layout of ``quantizer``'s indices, from its :attr:`~vqkit.quantizers.base.Quantizer.index_layout`
    (the single adapter between quantizers and token files).

    Raises:
        ValueError: a column has more than 2^20 codes (a prior's embedding table and output head would be
            that large).
    """
    from ..metrics import MAX_HISTOGRAM_CODES

    layout = quantizer.index_layout
    if max(layout.sizes) > MAX_HISTOGRAM_CODES:
        raise ValueError(
            f"quantizer: {type(quantizer).__name__} ({max(layout.sizes)} codes per index column) is too large to "
            f"model as tokens; use a quantizer with at most 2^20 codes per index column (e.g. FSQ with "
            f"num_codebooks > 1, or LatentQuantizer with index_mode='per_dim')")
    return TokenLayout(tuple(int(k) for k in layout.sizes), tuple(int(a) for a in layout.trailing))


@dataclass(frozen=True)
class TokenSpec:
    """Everything a prior needs to know about a token map besides the data.

    Attributes:
        grid: token grid ``(h, w)``; a prior models ``L = h * w`` positions in raster order.
        layout: the index layout (columns and their vocabulary sizes).
        num_classes: number of image classes of the labels (>= 1).
        tokenizer_hash: identifies the tokenizer whose codes these are (see
            :func:`vqkit.generative.tokens.tokenizer_fingerprint`).
        source: where the tokens came from, e.g. ``"digits/train"``.
    """

    grid: tuple[int, int]
    layout: TokenLayout
    num_classes: int
    tokenizer_hash: str
    source: str = ""

    def __post_init__(self) -> None:
        grid = tuple(self.grid)
        if len(grid) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in grid):
            raise ValueError(f"grid: expected (h, w) with ints >= 1, got {self.grid!r}")
        object.__setattr__(self, "grid", grid)
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ValueError(f"num_classes: expected an int >= 1, got {self.num_classes!r}")
        if not isinstance(self.tokenizer_hash, str):
            raise TypeError(f"tokenizer_hash: expected a str, got {type(self.tokenizer_hash).__name__}")

    @property
    def length(self) -> int:
        """Positions per token map, ``h * w``."""
        return self.grid[0] * self.grid[1]

    def index_shape(self) -> tuple[int, ...]:
        """Shape of one token map in the quantizer's layout: ``(h, w, *trailing)``, e.g. ``(h, w)``,
        ``(h, w, C)`` or ``(h, w, G, L)``."""
        return (*self.grid, *self.layout.trailing)

    def to_sequences(self, indices: Tensor) -> Tensor:
        """Token maps ``(N, h, w, *trailing)`` -> raster-order sequences ``(N, L, C)``."""
        expected = self.index_shape()
        if tuple(indices.shape[1:]) != expected:
            raise ValueError(f"indices: expected shape (N, {', '.join(map(str, expected))}), "
                             f"got {tuple(indices.shape)}")
        return self.layout.to_columns(indices).reshape(indices.shape[0], self.length, self.layout.columns)

    def to_maps(self, sequences: Tensor) -> Tensor:
        """Sequences ``(N, L, C)`` -> token maps ``(N, h, w, *trailing)`` (the quantizer's layout)."""
        if sequences.ndim != 3 or tuple(sequences.shape[1:]) != (self.length, self.layout.columns):
            raise ValueError(f"sequences: expected shape (N, {self.length}, {self.layout.columns}), "
                             f"got {tuple(sequences.shape)}")
        return self.layout.from_columns(sequences.reshape(sequences.shape[0], *self.grid, self.layout.columns))

    def to_dict(self) -> dict[str, Any]:
        return {"grid": list(self.grid), **self.layout.to_dict(), "num_classes": self.num_classes,
                "tokenizer_hash": self.tokenizer_hash, "source": self.source}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TokenSpec:
        return cls(tuple(int(s) for s in d["grid"]), TokenLayout.from_dict(d), int(d["num_classes"]),
                   str(d["tokenizer_hash"]), str(d.get("source", "")))
