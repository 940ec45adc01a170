"""A bidirectional masked-token prior trained and sampled MaskGIT-style (Chang et al. 2022).

Training: mask a cosine-scheduled random subset of positions (:func:`~vqkit.generative.schedule.random_mask`;
a masked position masks all its columns) and predict them; the loss is the cross-entropy on masked
positions only, averaged over masked positions and columns.

Sampling (:meth:`MaskedTokenPrior.generate`): start fully masked; at each of ``steps`` iterations sample
every masked position (each column from its own softmax at ``temperature``), score each sampled position
by its log-probability (summed over columns) plus annealed Gumbel noise, and keep the most confident ones
so that the number still masked follows :func:`~vqkit.generative.schedule.decoding_schedule`; after the
last step every position is filled. Columns of one position are sampled independently given the
context (a factorized approximation for multi-column tokens).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .schedule import decoding_schedule, random_mask
from .transformer import TokenPrior, gumbel_like

__all__ = ["MaskedTokenPrior"]


class MaskedTokenPrior(TokenPrior):
    """Bidirectional transformer over ``[class] + L`` token positions.

    Args:
        vocab_sizes, length, num_classes, dim, depth, heads, mlp_ratio, dropout: see
            :class:`~vqkit.generative.transformer.TokenPrior`.
        class_dropout: training probability of replacing a label with the null class (enables
            classifier-free guidance at sampling; 0 = off).

    Input embedding of a position: the sum over columns of that column's embedding (table of
    ``vocab_sizes[c] + 1`` rows; the last row is the mask token) plus a learned position embedding.
    """

    kind = "maskgit"

    def __init__(self, vocab_sizes: Sequence[int], length: int, *, num_classes: int = 0, dim: int = 128,
                 depth: int = 4, heads: int = 4, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 class_dropout: float = 0.0) -> None:
        super().__init__(vocab_sizes, length, num_classes=num_classes, dim=dim, depth=depth, heads=heads,
                         mlp_ratio=mlp_ratio, dropout=dropout)
        if not 0.0 <= class_dropout <= 1.0:
            raise ValueError(f"class_dropout: expected a float in [0, 1], got {class_dropout!r}")
        self.class_dropout = float(class_dropout)
        self._config["class_dropout"] = self.class_dropout
        self.token_embed = nn.ModuleList(nn.Embedding(k + 1, dim) for k in self.vocab_sizes)
        self.pos_embed = nn.Parameter(torch.zeros(1, length + 1, dim))
        self._init_weights()
        nn.init.normal_(self.pos_embed, std=0.02)
        self.register_buffer("mask_ids", torch.tensor(self.vocab_sizes, dtype=torch.int64), persistent=False)

    def forward(self, tokens: Tensor, labels: Tensor | None = None) -> tuple[Tensor, ...]:
        """Logits for every position.

        Args:
            tokens: int64 ``(B, L, C)``; column ``c`` in ``[0, vocab_sizes[c]]`` (``vocab_sizes[c]`` = mask).
            labels: int64 ``(B,)`` in ``[0, num_classes]`` or None (null class).
        Returns:
            ``C`` tensors of logits ``(B, L, vocab_sizes[c])``.
        """
        self.check_tokens(tokens, allow_mask=True)
        tokens = tokens.to(self.device)
        x = sum(emb(tokens[..., c]) for c, emb in enumerate(self.token_embed))
        cls = self.class_embed(self.class_ids(labels, tokens.shape[0]))[:, None]
        h = self.transformer(torch.cat([cls, x], dim=1) + self.pos_embed)[:, 1:]
        return tuple(head(h) for head in self.heads)

    def training_loss(self, tokens: Tensor, labels: Tensor | None = None, *,
                      generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
        """Masked-token cross-entropy on a batch.

        Args:
            tokens: int64 ``(B, L, C)`` with column ``c`` in ``[0, vocab_sizes[c])``.
            labels: int64 ``(B,)`` (conditional priors) or None.
            generator: CPU generator for the mask (and the class dropout).
        Returns:
            scalar loss, and detached stats ``loss``, ``accuracy`` (argmax equals the target on masked
            positions, averaged over columns) and ``mask_ratio`` (mean fraction masked).
        """
        self.check_tokens(tokens)
        b = tokens.shape[0]
        mask, _ = random_mask(b, self.length, generator=generator)
        if labels is not None and self.class_dropout > 0:
            drop = torch.rand(b, generator=generator) < self.class_dropout
            labels = torch.where(drop.to(labels.device), torch.full_like(labels, self.num_classes), labels)
        tokens, mask = tokens.to(self.device), mask.to(self.device)
        inputs = torch.where(mask[..., None], self.mask_ids, tokens)
        logits = self(inputs, labels)
        losses, correct = [], []
        for c, lg in enumerate(logits):
            target = tokens[..., c][mask]
            picked = lg[mask]
            losses.append(F.cross_entropy(picked.float(), target))
            correct.append((picked.argmax(-1) == target).float().mean())
        loss = torch.stack(losses).mean()
        return loss, {"loss": float(loss.detach()), "accuracy": float(torch.stack(correct).mean()),
                      "mask_ratio": float(mask.float().mean())}

    def _logits(self, tokens: Tensor, labels: Tensor | None, guidance: float) -> tuple[Tensor, ...]:
        if guidance == 0 or labels is None:
            return self(tokens, labels)
        both = self(torch.cat([tokens, tokens]), torch.cat([labels.to(self.device),
                                                           torch.full_like(labels, self.num_classes).to(self.device)]))
        b = tokens.shape[0]
        return tuple(lg[:b] + guidance * (lg[:b] - lg[b:]) for lg in both)

    @torch.no_grad()
    def generate(
        self,
        labels: Tensor | None = None,
        *,
        num_samples: int | None = None,
        steps: int = 8,
        temperature: float = 1.0,
        confidence_noise: float = 4.5,
        anneal_noise: bool = True,
        guidance: float = 0.0,
        generator: torch.Generator | None = None,
        return_history: bool = False,
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Iterative parallel decoding.

        Args:
            labels: int64 ``(B,)`` class labels (conditional), or None (null class, needs ``num_samples``).
            num_samples: B when ``labels`` is None.
            steps: decoding iterations T >= 1.
            temperature: sampling temperature of the token softmax (0 = argmax).
            confidence_noise: scale of the Gumbel noise added to the confidences (MaskGIT's choice
                temperature; 0 = pure confidence).
            anneal_noise: scale the noise by ``1 - (t + 1) / T`` (to 0 at the last step).
            guidance: classifier-free guidance weight w: logits ``cond + w * (cond - uncond)`` (needs a
                prior trained with ``class_dropout > 0`` to be meaningful; 0 = off).
            generator: CPU generator for every random draw.
            return_history: also return the mask ``(B, L)`` bool after each step.
        Returns:
            tokens int64 ``(B, L, C)`` with every position filled (and the mask history).
        """
        labels, b = self._batch_labels(labels, num_samples)
        if temperature < 0 or confidence_noise < 0:
            raise ValueError(f"temperature, confidence_noise: expected >= 0, got {temperature}, {confidence_noise}")
        counts = decoding_schedule(self.length, steps)
        device = self.device
        seq = self.mask_ids.expand(b, self.length, self.columns).clone()
        masked = torch.ones(b, self.length, dtype=torch.bool, device=device)
        history: list[Tensor] = []
        was_training = self.training
        self.eval()
        try:
            for t, keep_masked in enumerate(counts):
                logits = self._logits(seq, labels, guidance)
                sampled, confidence = [], torch.zeros(b, self.length, device=device)
                for lg in logits:
                    lg = lg.float()
                    if temperature == 0:
                        s = lg.argmax(-1)
                    else:
                        s = (lg / temperature + gumbel_like(lg.shape, generator, device)).argmax(-1)
                    sampled.append(s)
                    confidence += lg.log_softmax(-1).gather(-1, s[..., None]).squeeze(-1)
                sampled_t = torch.where(masked[..., None], torch.stack(sampled, -1), seq)
                scale = confidence_noise * (1.0 - (t + 1) / steps) if anneal_noise else confidence_noise
                if scale > 0:
                    confidence = confidence + scale * gumbel_like((b, self.length), generator, device)
                confidence = confidence.masked_fill(~masked, float("inf"))
                order = confidence.sort(dim=1, stable=True).indices
                masked = torch.zeros_like(masked).scatter_(1, order[:, :keep_masked], True)
                seq = torch.where(masked[..., None], self.mask_ids, sampled_t)
                if return_history:
                    history.append(masked.clone())
        finally:
            self.train(was_training)
        return (seq, history) if return_history else seq
