"""A convolutional VQ-VAE whose bottleneck is any vqkit quantizer.

Encoder: ``downsample`` stride-2 4x4 convolutions (``H x W -> H / 2^d x W / 2^d``), optional residual
blocks, a 1x1 convolution to ``latent_dim`` channels; the quantizer acts on every grid position
(channels on axis 1); the decoder mirrors the encoder with transposed convolutions. Typical settings:
8x8 digits ``downsample=1`` (4x4 grid), 28x28 (Fashion-)MNIST ``downsample=2`` (7x7), 32x32 CIFAR
``downsample=2`` (8x8) or ``3`` (4x4).
"""

from __future__ import annotations

from torch import Tensor, nn

from .base import ModelOutput, QuantizedModel, QuantizerFactory, check_image_shape

__all__ = ["VQVAE", "ResBlock"]


class ResBlock(nn.Module):
    """``x + conv1x1(relu(conv3x3(relu(x))))``, channels preserved."""

    def __init__(self, channels: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or channels
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, hidden, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(hidden, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class VQVAE(QuantizedModel):
    """Convolutional VQ-VAE.

    Args:
        image_shape: ``(C, H, W)``; ``H`` and ``W`` must be divisible by ``2^downsample``.
        make_quantizer: ``(dim, channel_dim) -> quantizer`` (see :mod:`vqkit.models.factory`).
        hidden: channels of the convolutions.
        latent_dim: channels D of the quantized grid.
        downsample: number of stride-2 stages d >= 0.
        res_blocks: residual blocks after the encoder's downsampling (and before the decoder's upsampling).

    Shapes: ``x (B, C, H, W)`` -> ``output`` (reconstruction) ``(B, C, H, W)``, ``quant.indices``
    ``(B, H / 2^d, W / 2^d)`` (plus the quantizer's trailing axis, if any).
    """

    task = "reconstruction"

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        *,
        make_quantizer: QuantizerFactory,
        hidden: int = 64,
        latent_dim: int = 32,
        downsample: int = 2,
        res_blocks: int = 0,
    ) -> None:
        super().__init__()
        c, h, w = check_image_shape(image_shape)
        for name, value, low in (("hidden", hidden, 1), ("latent_dim", latent_dim, 1), ("downsample", downsample, 0),
                                 ("res_blocks", res_blocks, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"model.{name}: expected an int >= {low}, got {value!r}")
        factor = 2**downsample
        if h % factor or w % factor:
            raise ValueError(f"model.downsample: {downsample} stride-2 stages need H and W divisible by {factor}, "
                             f"got image size {h}x{w}")
        self.image_shape = (c, h, w)
        self.latent_shape = (latent_dim, h // factor, w // factor)
        enc: list[nn.Module] = [nn.Conv2d(c, hidden, 3, padding=1)]
        for _ in range(downsample):
            enc += [nn.ReLU(), nn.Conv2d(hidden, hidden, 4, stride=2, padding=1)]
        enc += [ResBlock(hidden) for _ in range(res_blocks)]
        enc += [nn.ReLU(), nn.Conv2d(hidden, latent_dim, 1)]
        self.encoder = nn.Sequential(*enc)
        self.quantizer = make_quantizer(latent_dim, 1)
        dec: list[nn.Module] = [nn.Conv2d(latent_dim, hidden, 3, padding=1)]
        dec += [ResBlock(hidden) for _ in range(res_blocks)]
        for _ in range(downsample):
            dec += [nn.ReLU(), nn.ConvTranspose2d(hidden, hidden, 4, stride=2, padding=1)]
        dec += [nn.ReLU(), nn.Conv2d(hidden, c, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> continuous latents ``(B, D, h, w)``."""
        return self.encoder(x)

    def decode_indices(self, indices: Tensor) -> Tensor:
        """Code indices (as in ``quant.indices``) -> reconstruction ``(B, C, H, W)``."""
        return self.decoder(self.quantizer.decode(indices))

    def forward(self, x: Tensor) -> ModelOutput:
        quant = self.quantizer(self.encode(x))
        return ModelOutput(self.decoder(quant.quantized), quant)
