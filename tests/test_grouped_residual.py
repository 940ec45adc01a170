import pytest
import torch

from vqkit import PLAIN_STE, GroupedVectorQuantizer, ResidualVectorQuantizer


def test_grouped_quantizes_each_group_independently():
    torch.manual_seed(0)
    gvq = GroupedVectorQuantizer(8, 16, groups=2, **PLAIN_STE).eval()
    x = torch.randn(30, 8)
    out = gvq(x)
    for g in range(2):
        vq = gvq.quantizers[g]
        ref = vq(x[:, 4 * g : 4 * g + 4])
        assert torch.equal(out.indices[:, g], ref.indices)
    # the loss is the elementwise mean over the whole vector: the mean of the group losses
    losses = [gvq.quantizers[g](x[:, 4 * g : 4 * g + 4]).loss for g in range(2)]
    torch.testing.assert_close(out.loss, torch.stack(losses).mean())


def test_residual_error_shrinks_with_levels():
    torch.manual_seed(0)
    x = torch.randn(2000, 8)
    errors = []
    for levels in (1, 2, 4):
        torch.manual_seed(0)
        rvq = ResidualVectorQuantizer(8, 32, num_levels=levels)
        rvq(x)  # k-means init of every level on its residuals
        rvq.eval()
        errors.append((rvq(x).quantized - x).pow(2).mean().item())
    assert errors[0] > errors[1] > errors[2]


def test_residual_gradients():
    torch.manual_seed(0)
    nu = 0.5
    rvq = ResidualVectorQuantizer(6, 8, num_levels=2, sync_nu=nu, **{k: v for k, v in PLAIN_STE.items() if k != "sync_nu"})
    x = torch.randn(20, 6, requires_grad=True)
    upstream = torch.randn(20, 6)
    out = rvq(x)
    (out.quantized * upstream).sum().backward()
    torch.testing.assert_close(x.grad, upstream)  # identity once, not once per level
    for level in range(2):
        idx = out.indices[:, level]
        expected = torch.zeros(8, 6).index_add_(0, idx, nu * upstream)
        torch.testing.assert_close(rvq.levels[level].codes.weight.grad, expected)


def test_residual_with_projection_and_channel_first():
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(16, 8, num_levels=2, codebook_dim=4, channel_dim=1)
    x = torch.randn(2, 16, 3, 3)
    out = rvq(x)
    assert out.quantized.shape == x.shape and out.indices.shape == (2, 3, 3, 2)
    rvq.eval()
    out = rvq(x)
    torch.testing.assert_close(rvq.decode(out.indices), out.quantized, rtol=0, atol=1e-6)


def test_errors():
    with pytest.raises(ValueError, match="groups: expected a divisor of dim=10"):
        GroupedVectorQuantizer(10, 8, groups=3)
    with pytest.raises(ValueError, match="num_levels"):
        ResidualVectorQuantizer(8, 8, num_levels=0)
    with pytest.raises(ValueError, match="metric"):
        ResidualVectorQuantizer(8, 8, num_levels=2, metric="cosine")
    with pytest.raises(ValueError, match="indices: expected a trailing axis of size num_levels=2"):
        ResidualVectorQuantizer(8, 8, num_levels=2).decode(torch.zeros(4, 3, dtype=torch.long))
