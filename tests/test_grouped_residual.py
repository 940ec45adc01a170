"""GroupedVectorQuantizer (the residual quantizers are tested in tests/test_residual.py)."""

import pytest
import torch

from vqkit import PLAIN_STE, GroupedVectorQuantizer


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


def test_errors():
    with pytest.raises(ValueError, match="groups: expected a divisor of dim=10"):
        GroupedVectorQuantizer(10, 8, groups=3)
