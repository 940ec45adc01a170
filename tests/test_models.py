"""Models with a quantized bottleneck and the quantizer / model factory."""

from __future__ import annotations

import pytest
import torch

from vqkit.models import (
    MODEL_KINDS,
    quantizer_kinds,
    VQVAE,
    build_model,
    build_quantizer,
    model_arguments,
    quantizer_arguments,
)
from vqkit.quantizers.base import QuantizerOutput


pytestmark = pytest.mark.usefixtures("one_thread")

# small quantizer configs per kind, and the trailing index axis each adds
QUANTIZERS = {
    "vq": (dict(codebook_size=32), ()),
    "grouped_vq": (dict(codebook_size=16, groups=2), (2,)),
    "residual_vq": (dict(codebook_size=16, num_levels=3), (3,)),
    "fsq": (dict(levels=[5, 4, 3]), ()),
    "latent": (dict(values_per_dim=3, index_mode="per_dim"), None),  # trailing axis = feature width
}
# (kind, image shape, model kwargs, expected index grid for that image)
MODELS = [
    ("vqvae", (1, 8, 8), dict(hidden=8, latent_dim=8, downsample=1), (4, 4)),
    ("vqvae", (1, 28, 28), dict(hidden=8, latent_dim=8, downsample=2), (7, 7)),
    ("vqvae", (3, 32, 32), dict(hidden=8, latent_dim=8, downsample=3), (4, 4)),
    ("alexnet", (1, 28, 28), dict(width=4, hidden=16, quantize_at=2), (7, 7)),
    ("resnet18", (3, 32, 32), dict(width=4, quantize_at=2), (16, 16)),
    ("vit", (1, 8, 8), dict(patch_size=2, dim=16, depth=2, heads=2, quantize_at=1), (16,)),
]


@pytest.mark.parametrize("qkind", list(QUANTIZERS))
@pytest.mark.parametrize("mkind,shape,kwargs,grid", MODELS, ids=lambda v: str(v) if isinstance(v, str) else None)
def test_forward_shapes_for_every_quantizer_kind(qkind, mkind, shape, kwargs, grid):
    torch.manual_seed(0)
    qargs, trailing = QUANTIZERS[qkind]
    model = build_model(mkind, shape, 10, dict(kind=qkind, **qargs), **kwargs)
    x = torch.rand(2, *shape)
    out = model(x)
    expected = (2, *shape) if mkind == "vqvae" else (2, 10)
    assert out.output.shape == expected
    assert isinstance(out.quant, QuantizerOutput)
    if trailing is None:  # latent per_dim: one index per feature channel
        assert out.quant.indices.shape[:-1] == (2, *grid)
    else:
        assert out.quant.indices.shape == (2, *grid, *trailing)
    assert out.quant.indices.dtype == torch.int64 and out.quant.loss.ndim == 0
    (out.output.float().square().mean() + out.quant.loss).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_vqvae_decode_indices_matches_eval_forward():
    torch.manual_seed(0)
    model = build_model("vqvae", (1, 8, 8), 10, dict(kind="vq", codebook_size=16), hidden=8, latent_dim=4,
                        downsample=1).eval()
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        out = model(x)
        assert torch.allclose(model.decode_indices(out.quant.indices), out.output, atol=1e-6)


def test_peer_adapter_follows_the_contract():
    pytest.importorskip("vector_quantize_pytorch")
    torch.manual_seed(0)
    q = build_quantizer("vqpytorch", 8, channel_dim=1, codebook_size=16, kmeans_init=True,
                        threshold_ema_dead_code=2)
    x = torch.randn(2, 8, 3, 3)
    out = q(x)
    quantized, indices, loss = out
    assert quantized.shape == x.shape and indices.shape == (2, 3, 3) and loss.ndim == 0
    assert {"usage", "perplexity"} <= set(out.stats)


def test_factory_builds_fsq_from_codebook_size():
    q = build_quantizer("fsq", 32, channel_dim=1, codebook_size=2**10)
    assert list(q.levels) == [8, 5, 5, 5] and q.dim == 32


@pytest.mark.parametrize("call,match", [
    (lambda: build_quantizer("vqq", 8, codebook_size=4), r"quantizer.kind: unknown quantizer 'vqq'; registered: .*residual_vq"),
    (lambda: build_quantizer("vq", 8, codebok_size=4), r"quantizer.codebok_size: unknown key; valid keys: .*codebook_size"),
    (lambda: build_quantizer("vq", 8), r"quantizer.codebook_size: required"),
    (lambda: build_quantizer("fsq", 8, levels=[5, 5], codebook_size=256), r"levels: give either levels .* or codebook_size, not both"),
    (lambda: build_model("vgg", (1, 8, 8), 10, dict(kind="vq", codebook_size=4)), r"model.kind: expected one of"),
    (lambda: build_model("vqvae", (1, 8, 8), 10, dict(kind="vq", codebook_size=4), widht=3),
     r"model.widht: unknown key; valid keys: .*hidden"),
    (lambda: build_model("vqvae", (1, 28, 28), 10, dict(kind="vq", codebook_size=4), downsample=3),
     r"model.downsample: 3 stride-2 stages need H and W divisible by 8, got image size 28x28"),
    (lambda: build_model("alexnet", (1, 28, 28), 10, dict(kind="vq", codebook_size=4), quantize_at=6),
     r"model.quantize_at: expected an int in \[1, 5\], got 6"),
    (lambda: build_model("vit", (1, 28, 28), 10, dict(kind="vq", codebook_size=4), patch_size=5),
     r"model.patch_size: expected a divisor of the image size 28x28, got 5"),
])
def test_factory_errors_name_the_key(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_argument_listings_cover_every_kind():
    for kind in MODEL_KINDS:
        assert "quantize_at" in model_arguments(kind) or kind == "vqvae"
    for kind in quantizer_kinds():  # the registry's names (vqpytorch when the peer is installed)
        assert quantizer_arguments(kind)
    assert "alternating_lr" in quantizer_arguments("grouped_vq")  # forwarded to each group's VectorQuantizer


def test_vqvae_is_fully_convolutional_over_its_grid():
    torch.manual_seed(0)
    model = VQVAE((1, 8, 8), make_quantizer=lambda d, c: build_quantizer("vq", d, channel_dim=c, codebook_size=8),
                  hidden=8, latent_dim=4, downsample=1, res_blocks=1)
    assert model.latent_shape == (4, 4, 4)
    assert model.encode(torch.rand(2, 1, 8, 8)).shape == (2, 4, 4, 4)
