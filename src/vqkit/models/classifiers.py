"""Classifiers with one quantized bottleneck, as in the classification experiments of Huh et al. 2023.

The quantizer sits between two layers of the network (``quantize_at``) and quantizes every feature
vector there: each spatial position of a CNN feature map (channels on axis 1), each token of a ViT.
All three networks are sized for small images (8x8 to 32x32): no 224-pixel stems.

* :class:`AlexNetVQ`: five convolutions (widths ``w, 3w, 6w, 4w, 4w``) with max-pooling after the 1st,
  2nd and 5th, then a two-layer MLP head; ``quantize_at`` in 1..5 = after that convolution.
* :class:`ResNet18VQ`: a 3x3 stem and four stages of two basic blocks (widths ``w, 2w, 4w, 8w``, strides
  1, 2, 2, 2), global average pooling, linear head; ``quantize_at`` in 0..4 = after the stem (0) or stage k.
* :class:`ViTVQ`: patch embedding, ``depth`` pre-norm transformer blocks, mean-pooled tokens, linear
  head; ``quantize_at`` in 0..depth = after block k (0 = the patch embeddings).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import ModelOutput, QuantizedModel, QuantizerFactory, check_image_shape

__all__ = ["AlexNetVQ", "ResNet18VQ", "ViTVQ", "BasicBlock"]


def _check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        rng = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"model.{name}: expected an int {rng}, got {value!r}")
    return value


def _check_classes(num_classes: object) -> int:
    return _check_int("num_classes", num_classes, 1)


class _Staged(QuantizedModel):
    """Runs ``stages`` in order with the quantizer after stage ``quantize_at - 1``, then ``head``."""

    task = "classification"
    stages: nn.ModuleList
    head: nn.Module
    quantize_at: int

    def features(self, x: Tensor) -> tuple[Tensor, object]:
        quant = None
        for i, stage in enumerate(self.stages):
            if i == self.quantize_at:
                quant = self.quantizer(x)
                x = quant.quantized
            x = stage(x)
        if quant is None:
            quant = self.quantizer(x)
            x = quant.quantized
        return x, quant

    def forward(self, x: Tensor) -> ModelOutput:
        feats, quant = self.features(x)
        return ModelOutput(self.head(feats), quant)


class AlexNetVQ(_Staged):
    """Small AlexNet-style CNN with a quantized bottleneck.

    Args:
        image_shape: ``(C, H, W)``, ``H, W >= 8``.
        num_classes: output classes.
        make_quantizer: ``(dim, channel_dim) -> quantizer``.
        width: base width ``w`` (AlexNet's is 64).
        hidden: width of the MLP head.
        dropout: dropout before each head layer.
        quantize_at: the quantizer follows convolution ``quantize_at`` (1..5).

    Shapes: ``x (B, C, H, W)`` -> logits ``(B, num_classes)``.
    """

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, *, make_quantizer: QuantizerFactory,
                 width: int = 64, hidden: int = 512, dropout: float = 0.0, quantize_at: int = 4) -> None:
        super().__init__()
        c, h, w = check_image_shape(image_shape)
        _check_classes(num_classes)
        _check_int("width", width, 1)
        _check_int("hidden", hidden, 1)
        _check_int("quantize_at", quantize_at, 1, 5)
        if min(h, w) < 8:
            raise ValueError(f"image_shape: AlexNetVQ needs images of at least 8x8, got {h}x{w}")
        widths = [width, 3 * width, 6 * width, 4 * width, 4 * width]
        pools = [True, True, False, False, True]
        stages, prev = [], c
        for out, pool in zip(widths, pools):
            layers: list[nn.Module] = [nn.Conv2d(prev, out, 3, padding=1), nn.ReLU(inplace=True)]
            if pool:
                layers.append(nn.MaxPool2d(2))
            stages.append(nn.Sequential(*layers))
            prev = out
        # the quantizer after conv k sees the output of stage k - 1 (before its pooling, if any: keep the
        # pooling inside the stage so that the quantized map is the pooled one)
        self.stages = nn.ModuleList(stages)
        self.quantize_at = quantize_at
        self.quantizer = make_quantizer(widths[quantize_at - 1], 1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(prev, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                  nn.Linear(hidden, num_classes))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv + BN, identity (or 1x1 projection) shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False), nn.BatchNorm2d(out_ch),
        )
        self.shortcut = (nn.Identity() if stride == 1 and in_ch == out_ch else
                         nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)))

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class ResNet18VQ(_Staged):
    """ResNet-18-style network for small images with a quantized bottleneck.

    Args:
        image_shape: ``(C, H, W)``.
        num_classes: output classes.
        make_quantizer: ``(dim, channel_dim) -> quantizer``.
        width: width of the first stage (ResNet-18's is 64).
        quantize_at: 0 = after the stem, k = after stage k (1..4).

    Shapes: ``x (B, C, H, W)`` -> logits ``(B, num_classes)``.
    """

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, *, make_quantizer: QuantizerFactory,
                 width: int = 64, quantize_at: int = 3) -> None:
        super().__init__()
        c, _, _ = check_image_shape(image_shape)
        _check_classes(num_classes)
        _check_int("width", width, 1)
        _check_int("quantize_at", quantize_at, 0, 4)
        widths = [width, 2 * width, 4 * width, 8 * width]
        stem = nn.Sequential(nn.Conv2d(c, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        stages: list[nn.Module] = [stem]
        prev = width
        for i, out in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(prev, out, stride), BasicBlock(out, out)))
            prev = out
        self.stages = nn.ModuleList(stages)
        self.quantize_at = quantize_at + 1  # position among [stem, stage1..4]
        self.quantizer = make_quantizer(([width] + widths)[quantize_at], 1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(prev, num_classes))


class _Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln(x))``, ``x + mlp(ln(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, channels: int, dim: int, patch: int, num_patches: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, dim, patch, stride=patch)
        self.pos = nn.Parameter(torch.randn(1, num_patches, dim) * 0.02)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2) + self.pos


class ViTVQ(_Staged):
    """Small vision transformer with quantized tokens.

    Args:
        image_shape: ``(C, H, W)``; ``H, W`` divisible by ``patch_size``.
        num_classes: output classes.
        make_quantizer: ``(dim, channel_dim) -> quantizer`` (tokens are channel-last).
        patch_size: side of the square patches.
        dim: token width; depth: transformer blocks; heads: attention heads (divide ``dim``).
        mlp_ratio: MLP hidden width / ``dim``.
        quantize_at: 0 = quantize the patch embeddings, k = after block k (1..depth).

    Shapes: ``x (B, C, H, W)`` -> logits ``(B, num_classes)``; ``quant.indices`` ``(B, num_patches)``.
    """

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, *, make_quantizer: QuantizerFactory,
                 patch_size: int = 4, dim: int = 128, depth: int = 6, heads: int = 4, mlp_ratio: float = 2.0,
                 quantize_at: int = 3) -> None:
        super().__init__()
        c, h, w = check_image_shape(image_shape)
        _check_classes(num_classes)
        _check_int("patch_size", patch_size, 1)
        _check_int("dim", dim, 1)
        _check_int("depth", depth, 1)
        _check_int("heads", heads, 1)
        _check_int("quantize_at", quantize_at, 0, depth)
        if h % patch_size or w % patch_size:
            raise ValueError(f"model.patch_size: expected a divisor of the image size {h}x{w}, got {patch_size}")
        if dim % heads:
            raise ValueError(f"model.heads: expected a divisor of dim={dim}, got {heads}")
        num_patches = (h // patch_size) * (w // patch_size)
        stages: list[nn.Module] = [_PatchEmbed(c, dim, patch_size, num_patches)]
        stages += [_Block(dim, heads, mlp_ratio) for _ in range(depth)]
        self.stages = nn.ModuleList(stages)
        self.quantize_at = quantize_at + 1
        self.quantizer = make_quantizer(dim, -1)
        self.head = nn.Sequential(nn.LayerNorm(dim), _MeanTokens(), nn.Linear(dim, num_classes))


class _MeanTokens(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.mean(1)
