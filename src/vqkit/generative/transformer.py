"""Building blocks shared by the token priors: a pre-norm transformer and the common prior interface.

Tokens are ``(B, L, C)`` int64: ``L`` raster-order positions, ``C`` index columns (one per codebook of
a grouped / residual / multi-codebook quantizer; ``C = 1`` for a plain VQ), column ``c`` in
``[0, vocab_sizes[c])``. Every prior has one embedding table and one output head per column.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Block", "Transformer", "TokenPrior", "gumbel_like"]


class Block(nn.Module):
    """Pre-norm block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``; ``(B, S, D) -> (B, S, D)``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, causal: bool = False) -> Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=causal)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, s, d)))
        return x + self.drop(self.mlp(self.norm2(x)))


class Transformer(nn.Module):
    """``depth`` :class:`Block` s and a final LayerNorm; ``(B, S, D) -> (B, S, D)``."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, causal: bool = False) -> Tensor:
        for block in self.blocks:
            x = block(x, causal)
        return self.norm(x)


def gumbel_like(shape: Sequence[int], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Standard Gumbel noise of ``shape`` drawn on the CPU (with ``generator``), moved to ``device``."""
    u = torch.rand(*shape, generator=generator).clamp_(1e-20, 1.0 - 1e-7)
    return (-torch.log(-torch.log(u))).to(device)


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
    return value


class TokenPrior(nn.Module):
    """Base class of the priors: validation, class embedding, per-column heads, the rebuild config.

    Args:
        vocab_sizes: codes per index column (``C`` entries).
        length: positions per token map ``L`` (``h * w``).
        num_classes: classes for conditioning (0 = unconditional). The class embedding has one extra
            "null" entry (index ``num_classes``) used when no label is given.
        dim, depth, heads, mlp_ratio, dropout: transformer width, blocks, attention heads, MLP width
            ratio, dropout.

    Subclasses implement ``forward(tokens, labels) -> tuple of C logits (B, L, vocab_sizes[c])``,
    ``training_loss`` and ``generate``.
    """

    kind: str = ""

    def __init__(self, vocab_sizes: Sequence[int], length: int, *, num_classes: int = 0, dim: int = 128,
                 depth: int = 4, heads: int = 4, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        sizes = tuple(vocab_sizes)
        if not sizes:
            raise ValueError("vocab_sizes: expected at least one column")
        for k in sizes:
            _check_int("vocab_sizes", k, 1)
        _check_int("length", length, 1)
        _check_int("num_classes", num_classes, 0)
        _check_int("dim", dim, 1)
        _check_int("depth", depth, 0)
        _check_int("heads", heads, 1)
        if dim % heads:
            raise ValueError(f"heads: expected a divisor of dim={dim}, got {heads}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: expected a float in [0, 1), got {dropout!r}")
        self.vocab_sizes, self.length, self.num_classes = sizes, length, num_classes
        self._config: dict[str, Any] = dict(vocab_sizes=list(sizes), length=length, num_classes=num_classes, dim=dim,
                                            depth=depth, heads=heads, mlp_ratio=mlp_ratio, dropout=dropout)
        self.class_embed = nn.Embedding(num_classes + 1, dim)
        self.heads = nn.ModuleList(nn.Linear(dim, k) for k in sizes)
        self.transformer = Transformer(dim, depth, heads, mlp_ratio, dropout)

    @property
    def columns(self) -> int:
        return len(self.vocab_sizes)

    @property
    def config(self) -> dict[str, Any]:
        """Keyword arguments that rebuild this prior (JSON-able; see :func:`vqkit.generative.build_prior`)."""
        return dict(self._config)

    @property
    def device(self) -> torch.device:
        return self.class_embed.weight.device

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)

    def check_tokens(self, tokens: Tensor, *, allow_mask: bool = False) -> None:
        """Raise unless ``tokens`` is int64 ``(B, L, C)`` with column values in ``[0, vocab_sizes[c])``
        (``[0, vocab_sizes[c]]`` with ``allow_mask``: the last id is the mask token)."""
        if not isinstance(tokens, Tensor) or tokens.dtype != torch.int64:
            raise TypeError(f"tokens: expected an int64 tensor, got {getattr(tokens, 'dtype', type(tokens).__name__)}")
        if tokens.ndim != 3 or tokens.shape[1:] != (self.length, self.columns):
            raise ValueError(f"tokens: expected shape (B, {self.length}, {self.columns}) (batch, positions, columns), "
                             f"got {tuple(tokens.shape)}")
        if tokens.numel():
            lo, hi = tokens.amin((0, 1)).tolist(), tokens.amax((0, 1)).tolist()
            for c, (a, b, k) in enumerate(zip(lo, hi, self.vocab_sizes)):
                top = k + 1 if allow_mask else k
                if a < 0 or b >= top:
                    raise ValueError(f"tokens: column {c} expected values in [0, {top}), got range [{a}, {b}]")

    def class_ids(self, labels: Tensor | None, batch: int) -> Tensor:
        """Class-embedding ids ``(B,)``: the labels, or the null class ``num_classes`` when None."""
        if labels is None:
            return torch.full((batch,), self.num_classes, dtype=torch.int64, device=self.device)
        if self.num_classes == 0:
            raise ValueError("labels: this prior is unconditional (num_classes=0); pass labels=None")
        if not isinstance(labels, Tensor) or labels.dtype != torch.int64 or labels.shape != (batch,):
            raise ValueError(f"labels: expected an int64 tensor of shape ({batch},), got "
                             f"{getattr(labels, 'dtype', type(labels).__name__)} {tuple(getattr(labels, 'shape', ()))}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > self.num_classes):
            raise ValueError(f"labels: expected values in [0, {self.num_classes}] ({self.num_classes} = null class), "
                             f"got range [{int(labels.min())}, {int(labels.max())}]")
        return labels.to(self.device)

    def _batch_labels(self, labels: Tensor | None, num_samples: int | None) -> tuple[Tensor | None, int]:
        if labels is None:
            if num_samples is None or num_samples < 1:
                raise ValueError(f"num_samples: expected an int >= 1 when labels is None, got {num_samples!r}")
            return None, num_samples
        if num_samples is not None and num_samples != labels.shape[0]:
            raise ValueError(f"num_samples: {num_samples} disagrees with labels of shape {tuple(labels.shape)}")
        return labels, int(labels.shape[0])
