"""LatentQuantizer (QLAE, Hsu et al. 2023): per-dim snapping, gradients to the learned values, indices, mask."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from vqkit.quantizers.scalar import LatentQuantizer, latent_quantization_param_groups

SIZES = [3, 5, 7, 10]


def scrambled(lq: LatentQuantizer, seed: int = 0) -> LatentQuantizer:
    """Random, unsorted values (as after training) so the search cannot rely on the init order."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        lq.values.copy_(torch.randn(lq.values.shape, generator=g))
    return lq


def brute_force(values_per_dim: list[list[float]], z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n, d = z.shape
    local = torch.empty(n, d, dtype=torch.long)
    q = torch.empty(n, d)
    for i in range(n):
        for j in range(d):
            dist = [abs(float(z[i, j]) - v) for v in values_per_dim[j]]
            k = min(range(len(dist)), key=dist.__getitem__)
            local[i, j], q[i, j] = k, values_per_dim[j][k]
    return local, q


def per_dim_values(lq: LatentQuantizer) -> list[list[float]]:
    return [row[: v].tolist() for row, v in zip(lq.value_table, lq.radices)]


def test_init_and_value_table():
    lq = LatentQuantizer(4, SIZES)
    assert lq.values.numel() == sum(SIZES)
    table = lq.value_table
    assert table.shape == (4, 10)
    for d, v in enumerate(SIZES):
        torch.testing.assert_close(table[d, :v], torch.linspace(-1, 1, v))
        assert torch.isnan(table[d, v:]).all()
    paper = LatentQuantizer(2, 10, init_range=(-0.5, 0.5))
    torch.testing.assert_close(paper.value_table[0], torch.linspace(-0.5, 0.5, 10))
    assert paper.quantization_weight == 0.01 and paper.commitment_weight == 0.01


def test_snapping_matches_brute_force_and_indices_are_mixed_radix():
    torch.manual_seed(0)
    lq = scrambled(LatentQuantizer(4, SIZES))
    z = 2 * torch.randn(200, 4)
    out = lq(z)
    local, q = brute_force(per_dim_values(lq), z)
    assert torch.equal(out.quantized, q)
    basis = torch.tensor([1, 3, 15, 105])
    assert torch.equal(out.indices, (local * basis).sum(-1))
    assert lq.codebook_size == math.prod(SIZES)


def test_output_is_q_and_task_gradient_goes_straight_to_input():
    torch.manual_seed(0)
    lq = scrambled(LatentQuantizer(4, SIZES))
    z = torch.randn(50, 4, requires_grad=True)
    g = torch.randn(50, 4)
    out = lq(z)
    out.quantized.backward(g)
    assert torch.equal(z.grad, g)
    assert lq.values.grad is None or torch.all(lq.values.grad == 0)  # plain STE: task grad skips values


def test_loss_gradients_match_the_analytic_formulas():
    torch.manual_seed(0)
    qw, cw = 0.3, 0.7
    lq = scrambled(LatentQuantizer(4, SIZES, quantization_weight=qw, commitment_weight=cw))
    z = torch.randn(60, 4, dtype=torch.float32, requires_grad=True)
    out = lq(z)
    local, q = brute_force(per_dim_values(lq), z.detach())
    n, d = z.shape
    expected_loss = (qw + cw) * ((z.detach() - q) ** 2).mean()
    torch.testing.assert_close(out.loss, expected_loss)
    out.loss.backward()
    # quantization term -> values: qw * 2 / (N D) * sum_{n assigned to v_dj} (v_dj - z_nd)
    expected = torch.zeros(sum(SIZES))
    offsets = [sum(SIZES[:k]) for k in range(4)]
    for i in range(n):
        for j in range(d):
            expected[offsets[j] + local[i, j]] += qw * 2 / (n * d) * (q[i, j] - z[i, j].detach())
    torch.testing.assert_close(lq.values.grad, expected, rtol=1e-5, atol=1e-8)
    assert lq.values.grad.abs().sum() > 0
    # commitment term -> input: cw * 2 / (N D) * (z - q)
    torch.testing.assert_close(z.grad, cw * 2 / (n * d) * (z.detach() - q), rtol=1e-5, atol=1e-8)


def test_values_learn_from_the_quantization_loss():
    torch.manual_seed(0)
    lq = LatentQuantizer(1, 2, quantization_weight=1.0, commitment_weight=0.0)
    data = torch.cat([torch.full((50, 1), -0.3), torch.full((50, 1), 0.6)])
    opt = torch.optim.SGD(lq.parameters(), lr=1.0)
    for _ in range(200):
        opt.zero_grad()
        lq(data).loss.backward()
        opt.step()
    torch.testing.assert_close(lq.values.detach(), torch.tensor([-0.3, 0.6]), rtol=0, atol=1e-4)


def test_joint_index_covers_the_product_and_codebook():
    lq = scrambled(LatentQuantizer(3, [2, 3, 4]))
    k = torch.arange(24)
    codes = lq.decode(k)
    assert codes.shape == (24, 3) and torch.unique(codes, dim=0).shape[0] == 24
    assert torch.equal(lq(codes).indices, k)
    assert torch.equal(lq.codebook, codes)


def test_per_dim_mode_for_huge_products():
    with pytest.raises(ValueError, match="index_mode='per_dim'"):
        LatentQuantizer(64, 10)
    lq = LatentQuantizer(64, 10, index_mode="per_dim")
    out = lq(torch.randn(8, 64))
    assert out.indices.shape == (8, 64)
    # per-dimension index columns: usage / perplexity are the mean per-dimension value statistics
    torch.testing.assert_close(out.stats["usage"], out.stats["value_usage"])
    assert torch.equal(lq.decode(out.indices), out.quantized)
    with pytest.raises(ValueError, match="indices: expected values in"):
        lq.decode(torch.full((2, 64), 10))


def test_mask_excluded_from_loss_and_stats():
    torch.manual_seed(0)
    lq = scrambled(LatentQuantizer(4, SIZES))
    z = torch.randn(6, 5, 4, requires_grad=True)
    mask = torch.rand(6, 5) > 0.4
    out = lq(z, mask=mask)
    ref = lq(z.detach()[mask])
    torch.testing.assert_close(out.loss, ref.loss)
    for key in ("value_usage", "value_perplexity", "usage", "perplexity"):
        torch.testing.assert_close(out.stats[key], ref.stats[key])
    out.loss.backward()
    assert torch.all(z.grad[~mask] == 0) and z.grad[mask].abs().sum() > 0


def test_stats_values():
    lq = LatentQuantizer(2, [2, 4])
    z = torch.tensor([[-1.0, -1.0], [-1.0, 1.0], [1.0, 1.0], [1.0, 1.0]])
    s = lq(z).stats
    assert s["value_usage"].item() == pytest.approx(4 / 6)
    # dim 0: uniform over 2 -> 2; dim 1: (1/4, 3/4) -> exp(H)
    h1 = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert s["value_perplexity"].item() == pytest.approx((2 + math.exp(h1)) / 2, rel=1e-6)
    assert s["usage"].item() == pytest.approx(3 / 8)
    assert all(not v.requires_grad for v in s.values())


def test_autocast_and_dtype():
    lq = LatentQuantizer(4, SIZES)
    x = torch.randn(16, 4).bfloat16()
    out = lq(x)
    assert out.quantized.dtype == torch.bfloat16 and out.loss.dtype == torch.float32
    assert torch.equal(out.indices, lq(x.float()).indices)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = lq(torch.randn(16, 4))
    assert out.quantized.dtype == torch.float32


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"values_per_dim\[1\]: expected an int >= 2, got 1"):
        LatentQuantizer(2, [3, 1])
    with pytest.raises(ValueError, match="values_per_dim: expected an int or 3 ints"):
        LatentQuantizer(3, [3, 4])
    with pytest.raises(ValueError, match="values_per_dim: expected an int >= 2"):
        LatentQuantizer(3, 1)
    with pytest.raises(ValueError, match="init_range"):
        LatentQuantizer(3, 4, init_range=(1.0, -1.0))
    with pytest.raises(ValueError, match="quantization_weight"):
        LatentQuantizer(3, 4, quantization_weight=-1.0)
    with pytest.raises(ValueError, match="index_mode"):
        LatentQuantizer(3, 4, index_mode="flat")
    lq = LatentQuantizer(3, 4)
    with pytest.raises(ValueError, match=r"x: expected size 3"):
        lq(torch.randn(2, 4))
    with pytest.raises(TypeError, match="x: expected a floating-point"):
        lq(torch.ones(2, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="mask: expected dtype torch.bool"):
        lq(torch.randn(2, 3), mask=torch.ones(2))
    with pytest.raises(ValueError, match="x: expected finite values"):
        lq(torch.tensor([[0.0, float("inf"), 1.0]]))


def test_param_groups_recipe():
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 4))
            self.lq = LatentQuantizer(4, 10)
            self.dec = nn.Linear(4, 8, bias=False)
            self.tied = self.enc[0]  # shared module: listed once

    model = Model()
    groups = latent_quantization_param_groups(model)
    decay, exempt = ({id(p) for p in g["params"]} for g in groups)
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert decay == {id(model.enc[0].weight), id(model.enc[2].weight), id(model.dec.weight)}
    assert exempt == {id(model.enc[0].bias), id(model.enc[1].weight), id(model.enc[1].bias),
                      id(model.enc[2].bias), id(model.lq.values)}
    custom = latent_quantization_param_groups(model, 0.5, no_decay=lambda name, p: name.startswith("dec"))
    assert custom[0]["weight_decay"] == 0.5 and id(model.dec.weight) in {id(p) for p in custom[1]["params"]}
    opt = torch.optim.AdamW(groups, lr=1e-3)
    out = model.lq(model.enc(torch.randn(5, 8)))
    (model.dec(out.quantized).pow(2).mean() + out.loss).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    with pytest.raises(ValueError, match="weight_decay"):
        latent_quantization_param_groups(model, -0.1)


def test_torch_compile_fullgraph():
    lq = LatentQuantizer(4, SIZES, channel_dim=1)
    compiled = torch.compile(lq, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    mask = torch.rand(2, 3, 3) > 0.3
    out, ref = compiled(x, mask=mask), lq(x, mask=mask)
    assert torch.equal(out.indices, ref.indices) and torch.equal(out.quantized, ref.quantized)
    torch.testing.assert_close(out.loss, ref.loss)
    out.loss.backward()
    assert lq.values.grad is not None and lq.values.grad.abs().sum() > 0


@pytest.mark.slow
def test_torch_compile_inductor():
    lq = LatentQuantizer(4, SIZES)
    compiled = torch.compile(lq, fullgraph=True)
    x = torch.randn(64, 4)
    assert torch.equal(compiled(x).indices, lq(x).indices)
