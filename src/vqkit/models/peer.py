"""Adapter giving vector-quantize-pytorch's ``VectorQuantize`` the vqkit quantizer contract.

Used as the peer row of ablations (``kind = "vqpytorch"`` in the quantizer factory); needs
``pip install vector-quantize-pytorch==1.32.0`` (the ``[bench]`` extra). The wrapped layer is used as
is: only the layout (``channel_dim``) and the output type are adapted, and usage / perplexity stats are
added with :mod:`vqkit.metrics` so its logs read like vqkit's.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor

from ..metrics import code_counts, perplexity, usage
from ..quantizers.base import Quantizer, QuantizerOutput, check_input, check_mask, move_channel_last, restore_channel_dim

__all__ = ["PeerVectorQuantizer", "PEER_BEST_PRACTICE"]

#: the peer's best practical configuration against index collapse (its fixes are off by default).
PEER_BEST_PRACTICE: dict[str, Any] = dict(kmeans_init=True, threshold_ema_dead_code=2)


def _import_peer() -> type:
    try:
        from vector_quantize_pytorch import VectorQuantize
    except ImportError as e:
        raise ImportError(
            "quantizer.kind = 'vqpytorch' needs vector-quantize-pytorch: "
            "pip install vector-quantize-pytorch==1.32.0 (or pip install 'vqkit[bench]')"
        ) from e
    return VectorQuantize


def peer_arguments() -> list[str]:
    """Keyword arguments of the installed ``VectorQuantize`` (empty if it is not installed)."""
    try:
        cls = _import_peer()
    except ImportError:
        return []
    skip = ("self", "dim", "codebook_size", "channel_last", "accept_image_fmap", "accept_3d_fmap")
    return [n for n, p in inspect.signature(cls.__init__).parameters.items()
            if n not in skip and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]


class PeerVectorQuantizer(Quantizer):
    """``vector_quantize_pytorch.VectorQuantize`` behind :class:`QuantizerOutput`.

    Args:
        dim: input channels.
        codebook_size: K.
        channel_dim: channel axis (``1`` for ``B x C x H x W``).
        **kwargs: passed to ``VectorQuantize`` unchanged (e.g. ``decay``, ``kmeans_init``,
            ``threshold_ema_dead_code``, ``commitment_weight``).

    Shapes: as every vqkit quantizer: ``x (..., dim)`` -> same shape; ``indices`` int64 without the
    channel axis; ``loss`` scalar (the peer's commitment loss).
    """

    def __init__(self, dim: int, codebook_size: int, *, channel_dim: int = -1, **kwargs: Any) -> None:
        super().__init__(dim, channel_dim)
        self.codebook_size = int(codebook_size)
        self.vq = _import_peer()(dim=dim, codebook_size=codebook_size, **kwargs)

    @property
    def codebook(self) -> Tensor:
        """``(K, dim)`` code vectors, detached."""
        return self.vq.codebook.detach()

    def forward(self, x: Tensor, mask: Tensor | None = None) -> QuantizerOutput:
        check_input("x", x, self.dim, self.channel_dim)
        x_last = move_channel_last(x, self.channel_dim)
        lead = x_last.shape[:-1]
        check_mask(mask, lead)
        tokens = x_last.reshape(x_last.shape[0] if x_last.ndim > 2 else 1, -1, self.dim)
        token_mask = None if mask is None else mask.reshape(tokens.shape[:2])
        quantized, indices, loss = self.vq(tokens, mask=token_mask)
        indices = indices.reshape(lead).long()
        counts = code_counts(indices.detach(), self.codebook_size, mask)
        stats = {"usage": usage(counts), "perplexity": perplexity(counts)}
        out = restore_channel_dim(quantized.reshape(x_last.shape), self.channel_dim)
        return QuantizerOutput(out, indices, loss.reshape(()).float(), stats)

    def decode(self, indices: Tensor) -> Tensor:
        """``(...)`` indices -> ``(..., dim)`` codes (channel axis at ``channel_dim``)."""
        out = torch.nn.functional.embedding(indices.long(), self.codebook)
        return restore_channel_dim(out, self.channel_dim) if indices.ndim >= 1 else out
