"""From a trained prior to pictures: sample token maps, decode them with the tokenizer, write image grids."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .layout import TokenSpec
from .tokens import decode_tokens
from .transformer import TokenPrior

__all__ = ["sample_tokens", "sample_images", "save_image_grid", "sample_grid"]


def sample_tokens(prior: TokenPrior, spec: TokenSpec, *, labels: Tensor | None = None, num_samples: int | None = None,
                  batch_size: int = 256, **sampling: Any) -> Tensor:
    """Token maps ``(N, h, w, *trailing)`` (the quantizer's layout) sampled from ``prior`` in batches.

    Args:
        prior: a trained prior whose token space matches ``spec``.
        spec: the token spec of the prior's training tokens.
        labels: int64 ``(N,)`` class labels (conditional priors), or None with ``num_samples``.
        num_samples: N when ``labels`` is None.
        batch_size: samples per ``prior.generate`` call.
        **sampling: ``prior.generate`` options (``steps``, ``temperature``, ``confidence_noise``,
            ``guidance``, ``top_k``, ``generator`` ...).
    """
    if tuple(prior.vocab_sizes) != spec.layout.vocab_sizes or prior.length != spec.length:
        raise ValueError(f"prior: its token space ({prior.length} positions, vocab sizes {prior.vocab_sizes}) does "
                         f"not match spec ({spec.length} positions, vocab sizes {spec.layout.vocab_sizes})")
    n = int(labels.shape[0]) if labels is not None else num_samples
    if n is None or n < 1:
        raise ValueError(f"num_samples: expected an int >= 1 when labels is None, got {num_samples!r}")
    parts = []
    for start in range(0, n, batch_size):
        if labels is not None:
            seq = prior.generate(labels[start:start + batch_size], **sampling)
        else:
            seq = prior.generate(num_samples=min(batch_size, n - start), **sampling)
        parts.append(seq.cpu())
    return spec.to_maps(torch.cat(parts))


def sample_images(prior: TokenPrior, tokenizer: nn.Module, spec: TokenSpec, *, labels: Tensor | None = None,
                  num_samples: int | None = None, batch_size: int = 256, **sampling: Any) -> Tensor:
    """Images ``(N, C, H, W)`` in ``[0, 1]`` (CPU): :func:`sample_tokens` decoded by ``tokenizer``."""
    maps = sample_tokens(prior, spec, labels=labels, num_samples=num_samples, batch_size=batch_size, **sampling)
    return decode_tokens(tokenizer, maps, batch_size=batch_size)


def save_image_grid(images: Tensor, path: str | Path, *, nrow: int | None = None, scale: int = 1,
                    padding: int = 1) -> Path:
    """Write ``images (N, C, H, W)`` in ``[0, 1]`` (C = 1 or 3) as one PNG grid of ``nrow`` images per row.

    Args:
        images: the images (clipped to ``[0, 1]``).
        path: the PNG file.
        nrow: images per row (default ``ceil(sqrt(N))``).
        scale: integer upscaling (nearest neighbour), e.g. 4 for 8x8 digits.
        padding: pixels between images (black).
    """
    from PIL import Image

    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3) or images.shape[0] < 1:
        raise ValueError(f"images: expected (N, 1 or 3, H, W) with N >= 1, got {tuple(getattr(images, 'shape', ()))}")
    n, c, h, w = images.shape
    nrow = nrow or int(torch.ceil(torch.sqrt(torch.tensor(float(n)))))
    rows = -(-n // nrow)
    grid = torch.zeros(c, rows * (h + padding) + padding, nrow * (w + padding) + padding)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top:top + h, left:left + w] = images[i].detach().float().cpu().clamp(0, 1)
    if scale > 1:
        grid = grid.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    array = (grid * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()
    image = Image.fromarray(array[..., 0] if c == 1 else array, mode="L" if c == 1 else "RGB")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    image.save(tmp)
    os.replace(tmp, path)
    return path


def sample_grid(prior: TokenPrior, tokenizer: nn.Module, spec: TokenSpec, path: str | Path, *,
                per_class: int = 8, num_samples: int = 64, scale: int = 1, **sampling: Any) -> tuple[Path, Tensor]:
    """Sample and write one PNG grid: a row of ``per_class`` samples per class for a conditional prior,
    else ``num_samples`` unconditional samples. Returns the path and the images ``(N, C, H, W)``."""
    if prior.num_classes > 0:
        labels = torch.arange(prior.num_classes).repeat_interleave(per_class)
        images = sample_images(prior, tokenizer, spec, labels=labels, **sampling)
        nrow = per_class
    else:
        images = sample_images(prior, tokenizer, spec, num_samples=num_samples, **sampling)
        nrow = None
    return save_image_grid(images, path, nrow=nrow, scale=scale), images
