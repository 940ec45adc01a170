"""Adapter giving vector-quantize-pytorch's ``VectorQuantize`` the vqkit quantizer contract.

Registered as the optional quantizer ``"vqpytorch"`` (the peer row of ablations); needs
``pip install vector-quantize-pytorch==1.32.0`` (the ``[bench]`` extra). The wrapped layer is used as
is: only the layout (``channel_dim``) and the output type are adapted, and usage / perplexity stats are
added with :mod:`vqkit.metrics` so its logs read like vqkit's.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor

from ..metrics import index_stats
from ..quantizers.base import IndexLayout, Quantizer, QuantizerOutput, flatten_input, restore_channel_dim
from ..quantizers.registry import register_quantizer

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


@register_quantizer("vqpytorch", example=dict(codebook_size=16))
class PeerVectorQuantizer(Quantizer):
    """vector-quantize-pytorch's ``VectorQuantize`` behind the vqkit quantizer contract (optional peer).

    Args:
        dim: input channels.
        codebook_size: K.
        channel_dim: channel axis (``1`` for ``B x C x H x W``).
        **kwargs: passed to ``VectorQuantize`` unchanged (e.g. ``decay``, ``kmeans_init``,
            ``threshold_ema_dead_code``, ``commitment_weight``).

    Shapes: as every vqkit quantizer: ``x (..., dim)`` -> same shape; ``indices`` int64 without the
    channel axis; ``loss`` scalar (the peer's commitment loss). Padded positions (``mask`` / ``lens``) are
    zeroed before they reach the peer, which also gets the mask.
    """

    def __init__(self, dim: int, codebook_size: int, *, channel_dim: int = -1, **kwargs: Any) -> None:
        super().__init__(dim, channel_dim)
        self.codebook_size = int(codebook_size)
        self.vq = _import_peer()(dim=dim, codebook_size=codebook_size, **kwargs)

    @classmethod
    def accepted_arguments(cls) -> list[str]:
        """``codebook_size`` and the installed ``VectorQuantize``'s keyword arguments."""
        return ["codebook_size", *peer_arguments()]

    @property
    def index_layout(self) -> IndexLayout:
        return IndexLayout((), (self.codebook_size,))

    @property
    def codebook(self) -> Tensor:
        """``(K, dim)`` code vectors, detached."""
        return self.vq.codebook.detach()

    def forward(self, x: Tensor, mask: Tensor | None = None, *, lens: Tensor | None = None) -> QuantizerOutput:
        flat, valid, lead = flatten_input(self, x, mask, lens)
        tokens = flat.reshape(1, -1, self.dim)
        quantized, indices, loss = self.vq(tokens, mask=None if valid is None else valid.reshape(1, -1))
        indices = indices.reshape(lead).long()
        stats = index_stats(indices.detach(), (self.codebook_size,), mask=None if valid is None else valid.reshape(lead))
        out = restore_channel_dim(quantized.reshape(*lead, self.dim).to(x.dtype), self.channel_dim)
        return QuantizerOutput(out, indices, loss.reshape(()).float(), stats)

    def decode_codes(self, indices: Tensor) -> Tensor:
        """``(...)`` indices -> ``(..., dim)`` codes, channel-last."""
        return torch.nn.functional.embedding(indices, self.codebook)
