"""The fused gather + straight-through + loss op against the plain autograd composition it replaces."""

import pytest
import torch
import torch.nn.functional as F

from vqkit.estimators import straight_through, straight_through_with_loss
from vqkit.losses import masked_mse, vq_loss


def _reference(z, codes, indices, nu, cw, bw, weight):
    q = F.embedding(indices, codes)
    synced = q if weight is None else torch.where(weight[:, None] != 0, q, q.detach())  # padding: no code gradient
    out = q.detach() + (z - z.detach()) + nu * (synced - synced.detach())
    total = cw * masked_mse(z, q.detach(), weight) + bw * masked_mse(z.detach(), q, weight)
    return out, total


@pytest.mark.parametrize("nu", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("n", [7, 5000])  # 5000 x 64 spans several 1 MiB chunks
def test_fused_op_matches_reference_values_and_gradients(nu, weighted, n):
    g = torch.Generator().manual_seed(0)
    d, k = 64, 33
    z = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    codes = torch.randn(k, d, generator=g, dtype=torch.float64, requires_grad=True)
    indices = torch.randint(0, k, (n,), generator=g)
    weight = (torch.rand(n, generator=g, dtype=torch.float64) > 0.3).double() if weighted else None
    up = torch.randn(n, d, generator=g, dtype=torch.float64)
    cw, bw = 0.3, 0.95

    out, total, mse = straight_through_with_loss(z, codes, indices, nu, cw, bw, weight)
    ref_out, ref_total = _reference(z, codes, indices, nu, cw, bw, weight)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(total, ref_total)
    torch.testing.assert_close(mse, masked_mse(z, codes[indices], weight).detach())
    assert not mse.requires_grad

    grads = torch.autograd.grad((out * up).sum() + 3.0 * total, (z, codes))
    ref = torch.autograd.grad((ref_out * up).sum() + 3.0 * ref_total, (z, codes))
    for a, b in zip(grads, ref):
        torch.testing.assert_close(a, b)


def test_fused_op_with_loss_or_output_unused():
    z = torch.randn(10, 4, requires_grad=True)
    codes = torch.randn(6, 4, requires_grad=True)
    idx = torch.randint(0, 6, (10,))
    out, total, _ = straight_through_with_loss(z, codes, idx, 1.0, 0.25, 1.0)
    gz, gc = torch.autograd.grad(total, (z, codes))  # loss only: no task gradient term
    q = codes[idx].detach()
    torch.testing.assert_close(gz, 0.25 * 2 * (z - q).detach() / z.numel())
    out, total, _ = straight_through_with_loss(z, codes, idx, 1.0, 0.25, 1.0)
    gz, gc = torch.autograd.grad(out.sum(), (z, codes))  # output only: straight-through + nu
    torch.testing.assert_close(gz, torch.ones_like(z))
    torch.testing.assert_close(gc, torch.bincount(idx, minlength=6).float()[:, None].expand(6, 4))


def test_straight_through_and_vq_loss_functions():
    z = torch.randn(9, 3, dtype=torch.float64, requires_grad=True)
    q = torch.randn(9, 3, dtype=torch.float64, requires_grad=True)
    out = straight_through(z, q, nu=0.5)
    torch.testing.assert_close(out, q.detach())
    gz, gq = torch.autograd.grad(out.sum(), (z, q))
    torch.testing.assert_close(gz, torch.ones_like(z))
    torch.testing.assert_close(gq, torch.full_like(q, 0.5))
    loss = vq_loss(z, q, 0.25, 0.95)
    gz, gq = torch.autograd.grad(loss.total, (z, q))
    diff = (z - q).detach()
    torch.testing.assert_close(gz, 0.25 * 2 * diff / diff.numel())
    torch.testing.assert_close(gq, -0.95 * 2 * diff / diff.numel())
    torch.testing.assert_close(loss.commitment, (diff**2).mean())
