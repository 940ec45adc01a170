"""An autoregressive raster-order prior (the classic VQ-VAE / VQGAN second stage) as a baseline.

Multi-column tokens are flattened position-major into one sequence of ``S = L * C`` tokens
(``t[0, 0], t[0, 1], ..., t[0, C-1], t[1, 0], ...``), so the factorization
``p(t) = prod_s p(t_s | t_<s, class)`` is exact for every quantizer; sequence position ``s`` uses the
embedding table and output head of column ``s % C``. A causal transformer reads ``[class] + t_<S-1``
and predicts ``t_0 .. t_{S-1}``. Sampling runs ``S`` forward passes over the growing prefix (no key-value
cache: the token maps here are small).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .transformer import TokenPrior, gumbel_like

__all__ = ["AutoregressivePrior"]


class AutoregressivePrior(TokenPrior):
    """Causal transformer over ``[class] + L * C`` flattened tokens.

    Args: see :class:`~vqkit.generative.transformer.TokenPrior`.
    """

    kind = "autoregressive"

    def __init__(self, vocab_sizes: Sequence[int], length: int, *, num_classes: int = 0, dim: int = 128,
                 depth: int = 4, heads: int = 4, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__(vocab_sizes, length, num_classes=num_classes, dim=dim, depth=depth, heads=heads,
                         mlp_ratio=mlp_ratio, dropout=dropout)
        self.token_embed = nn.ModuleList(nn.Embedding(k, dim) for k in self.vocab_sizes)
        self.pos_embed = nn.Parameter(torch.zeros(1, length * self.columns, dim))
        self._init_weights()
        nn.init.normal_(self.pos_embed, std=0.02)

    def _hidden(self, prefix: Tensor, class_ids: Tensor) -> Tensor:
        """Flattened prefix ``(B, n)`` (n < S) -> hidden states ``(B, n + 1, D)``; output ``j`` predicts token ``j``."""
        b, n = prefix.shape
        c = self.columns
        x = [self.class_embed(class_ids)[:, None]]
        if n:
            emb = torch.zeros(b, n, self.pos_embed.shape[-1], device=self.device, dtype=self.pos_embed.dtype)
            for col, table in enumerate(self.token_embed):
                emb[:, col::c] = table(prefix[:, col::c])
            x.append(emb)
        return self.transformer(torch.cat(x, dim=1) + self.pos_embed[:, :n + 1], causal=True)

    def forward(self, tokens: Tensor, labels: Tensor | None = None) -> tuple[Tensor, ...]:
        """Next-token logits (teacher forcing).

        Args:
            tokens: int64 ``(B, L, C)`` with column ``c`` in ``[0, vocab_sizes[c])``.
            labels: int64 ``(B,)`` or None (null class).
        Returns:
            ``C`` tensors ``(B, L, vocab_sizes[c])``: logits of ``tokens[:, i, c]`` given everything before
            it in the flattened order.
        """
        self.check_tokens(tokens)
        tokens = tokens.to(self.device)
        b = tokens.shape[0]
        h = self._hidden(tokens.reshape(b, -1)[:, :-1], self.class_ids(labels, b))
        return tuple(head(h[:, col::self.columns]) for col, head in enumerate(self.heads))

    def training_loss(self, tokens: Tensor, labels: Tensor | None = None, *,
                      generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
        """Next-token cross-entropy averaged over all ``L * C`` tokens; stats ``loss``, ``accuracy``.
        (``generator`` is unused: teacher forcing has no random choices.)"""
        logits = self(tokens, labels)
        tokens = tokens.to(self.device)
        total = sum(F.cross_entropy(lg.float().flatten(0, 1), tokens[..., c].flatten(), reduction="sum")
                    for c, lg in enumerate(logits))
        loss = total / tokens.numel()
        correct = sum(int((lg.argmax(-1) == tokens[..., c]).sum()) for c, lg in enumerate(logits))
        return loss, {"loss": float(loss.detach()), "accuracy": correct / tokens.numel()}

    @torch.no_grad()
    def generate(
        self,
        labels: Tensor | None = None,
        *,
        num_samples: int | None = None,
        temperature: float = 1.0,
        top_k: int = 0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Sample token maps in raster order.

        Args:
            labels: int64 ``(B,)`` class labels, or None (null class; needs ``num_samples``).
            num_samples: B when ``labels`` is None.
            temperature: softmax temperature (0 = greedy argmax).
            top_k: sample only among the ``top_k`` most likely codes of each column (0 = all).
            generator: CPU generator for every random draw.
        Returns:
            int64 ``(B, L, C)``.
        """
        labels, b = self._batch_labels(labels, num_samples)
        if temperature < 0 or top_k < 0:
            raise ValueError(f"temperature, top_k: expected >= 0, got {temperature}, {top_k}")
        class_ids = self.class_ids(labels, b)
        total = self.length * self.columns
        seq = torch.zeros(b, 0, dtype=torch.int64, device=self.device)
        was_training = self.training
        self.eval()
        try:
            for s in range(total):
                col = s % self.columns
                lg = self.heads[col](self._hidden(seq, class_ids)[:, -1]).float()
                if temperature == 0:
                    nxt = lg.argmax(-1)
                else:
                    lg = lg / temperature
                    if 0 < top_k < lg.shape[-1]:
                        kth = lg.topk(top_k, dim=-1).values[:, -1:]
                        lg = lg.masked_fill(lg < kth, float("-inf"))
                    nxt = (lg + gumbel_like(lg.shape, generator, self.device)).argmax(-1)
                seq = torch.cat([seq, nxt[:, None]], dim=1)
        finally:
            self.train(was_training)
        return seq.view(b, self.length, self.columns)
