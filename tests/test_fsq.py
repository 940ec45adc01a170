"""FSQ (Mentzer et al. 2023): bounding formula, implicit codebook round trips, exact indices, STE gradient."""

from __future__ import annotations

import math

import pytest
import torch

from vqkit.quantizers.scalar import FSQ, MAX_HISTOGRAM_CODES, fsq_levels


def latents_for_digits(levels: list[int], digits: torch.Tensor) -> torch.Tensor:
    """Latents z whose bound(z) lands on the integer level ``digit - L // 2`` (inverting the tanh).

    Extreme levels are not reachable exactly (|bound| < (L-1)/2), so the tanh argument is clipped
    just inside (-1, 1); bound(z) is then within 0.5 of the target and rounds to it.
    """
    L = torch.tensor(levels, dtype=torch.float64)
    half_l = (L - 1) * (1 - 1e-3) / 2
    offset = (L % 2 == 0).double() * 0.5
    target = digits.double() - torch.div(L, 2, rounding_mode="floor")
    u = ((target + offset) / half_l).clamp(-0.9999, 0.9999)
    return torch.atanh(u) - shift_of(L)


def shift_of(L: torch.Tensor) -> torch.Tensor:
    """atanh(offset / half_l); for L = 2 aim bound(0) at -0.25 (0 is outside its range)."""
    half_l = (L - 1) * (1 - 1e-3) / 2
    offset = (L % 2 == 0).double() * 0.5
    centre = torch.where(L == 2, -0.25, 0.0).double()
    return torch.atanh((centre + offset) / half_l)


def mixed_radix(levels: list[int], digits: torch.Tensor) -> torch.Tensor:
    basis = torch.tensor([math.prod(levels[:i]) for i in range(len(levels))], dtype=torch.int64)
    return (digits * basis).sum(-1)


@pytest.mark.parametrize("levels", [[8, 5, 5, 5], [7, 6, 2], [3]])
def test_every_index_decodes_to_a_distinct_code_and_reencodes(levels):
    fsq = FSQ(levels).eval()
    k = math.prod(levels)
    idx = torch.arange(k)
    codes = fsq.decode(idx)
    assert codes.shape == (k, len(levels))
    assert torch.unique(codes, dim=0).shape[0] == k
    assert codes.min() >= -1 and codes.max() <= 1
    # the code's integer level per dim, fed back through bound + round, gives the same index
    half_width = torch.tensor([L // 2 for L in levels])
    digits = (codes * half_width).round().long() + half_width
    z = latents_for_digits(levels, digits).float()
    out = fsq(z)
    assert torch.equal(out.indices, idx)
    assert torch.equal(out.quantized, codes)
    assert torch.equal(fsq.codebook, codes)


def test_bound_formula_and_zero_maps_to_centre():
    levels = [8, 5, 4, 2]
    fsq = FSQ(levels)
    z = torch.linspace(-4, 4, 101, dtype=torch.float64)[:, None].expand(-1, 4).unsqueeze(-2)  # (101, 1, 4)
    L = torch.tensor(levels, dtype=torch.float64)
    half_l = (L - 1) * (1 - 1e-3) / 2
    offset = torch.tensor([0.5, 0.0, 0.5, 0.5], dtype=torch.float64)
    expected = torch.tanh(z + shift_of(L)) * half_l - offset
    torch.testing.assert_close(fsq.bound(z), expected, rtol=0, atol=1e-12)
    b0 = fsq.bound(torch.zeros(1, 1, 4, dtype=torch.float64)).flatten()
    torch.testing.assert_close(b0, torch.tensor([0, 0, 0, -0.25], dtype=torch.float64), rtol=0, atol=1e-15)
    # the paper's tan(offset / half_l) misses 0: it is not the inverse of tanh
    paper = torch.tanh(torch.tan(offset / half_l)) * half_l - offset
    assert paper[0] < -1e-5 and paper[2] < -4e-4 and paper[3] < -0.04
    out = fsq(torch.zeros(3, 4))
    assert torch.all(out.quantized == 0)
    # centre digit L // 2 in every dim
    assert torch.all(out.indices == mixed_radix(levels, torch.tensor([4, 2, 2, 1])))
    # each dim takes exactly L values, the even-L ones asymmetric: k / (L // 2), k in [-L//2, L//2 - 1]
    q = fsq(torch.linspace(-6, 6, 2001)[:, None].expand(-1, 4).contiguous()).quantized
    assert sorted(q[:, 0].unique().tolist()) == [k / 4 for k in range(-4, 4)]
    assert sorted(q[:, 1].unique().tolist()) == [k / 2 for k in range(-2, 3)]
    assert sorted(q[:, 3].unique().tolist()) == [-1.0, 0.0]


def test_num_codebooks_indices_trailing_axis():
    fsq = FSQ([8, 5, 5, 5], num_codebooks=3)
    out = fsq(torch.randn(2, 5, 12))
    assert out.indices.shape == (2, 5, 3)
    single = FSQ([8, 5, 5, 5])
    x = torch.randn(2, 5, 12)
    per_group = torch.stack([single(x[..., 4 * g:4 * g + 4]).indices for g in range(3)], -1)
    assert torch.equal(fsq(x).indices, per_group)
    with pytest.raises(ValueError, match="trailing axis of size num_codebooks=3"):
        fsq.decode(torch.zeros(2, 5, dtype=torch.long))


def test_groups_share_one_codebook_in_the_index_layout():
    # held-out usage (CodeCounter reads index_layout) must pool the groups as the training stats do
    from vqkit.training.evaluate import CodeCounter

    fsq = FSQ([3, 3], num_codebooks=2)
    first, second = torch.tensor([[0, 0], [1, 0], [2, 2]]), torch.tensor([[0, 1], [0, 2], [2, 2]])
    z = torch.cat([latents_for_digits([3, 3], first), latents_for_digits([3, 3], second)], -1).float()
    out = fsq(z)
    assert out.indices.tolist() == [[0, 3], [1, 6], [8, 8]]
    assert fsq.index_layout.shared
    counter = CodeCounter(fsq.index_layout)
    counter.add(out.indices)
    usage, ppl = counter.result()
    p = torch.tensor([1, 1, 1, 1, 2], dtype=torch.float64) / 6  # codes 0, 1, 3, 6 once, 8 twice
    assert usage == pytest.approx(5 / 9) and out.stats["usage"].item() == pytest.approx(5 / 9)
    assert ppl == pytest.approx(math.exp(-(p * p.log()).sum().item()))
    assert out.stats["perplexity"].item() == pytest.approx(ppl, rel=1e-6)


def test_gradient_is_bound_derivative_over_half_width():
    levels = [8, 5, 2]
    fsq = FSQ(levels)
    x = (2 * torch.randn(64, 3, dtype=torch.float64)).requires_grad_()
    g = torch.randn(64, 3, dtype=torch.float64)
    fsq(x).quantized.backward(g)
    L = torch.tensor(levels, dtype=torch.float64)
    half_l = (L - 1) * (1 - 1e-3) / 2
    t = torch.tanh(x.detach() + shift_of(L))
    expected = g * half_l * (1 - t**2) / torch.div(L, 2, rounding_mode="floor")
    torch.testing.assert_close(x.grad, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("levels", [[8] * 9, [5] * 20])
def test_indices_exact_above_float_precision(levels):
    k = math.prod(levels)
    assert k > 2**24
    fsq = FSQ(levels).eval()
    torch.manual_seed(0)
    L = torch.tensor(levels)
    digits = (torch.rand(500, len(levels)) * L).long()
    digits[0] = L - 1  # K - 1
    digits[1] = L - 1
    digits[1, 0] = L[0] - 2  # K - 2: the same float32 as K - 1
    expected = mixed_radix(levels, digits)
    assert expected[0] == k - 1 and expected[1] == k - 2
    z = latents_for_digits(levels, digits)
    out = fsq(z)
    assert torch.equal(out.indices, expected)
    assert torch.equal(fsq.decode(expected, dtype=torch.float64), out.quantized)
    # usage / perplexity without a K-sized histogram: distinct indices counted by sorting
    _, counts = torch.unique(expected, return_counts=True)
    assert out.stats["usage"].item() == pytest.approx(counts.numel() / k, rel=1e-6)
    p = counts.double() / counts.sum()
    assert out.stats["perplexity"].item() == pytest.approx(math.exp(-(p * p.log()).sum().item()), rel=1e-5)


def test_projections_train_and_codebook():
    torch.manual_seed(0)
    fsq = FSQ([8, 6, 5], dim=16)
    assert fsq.has_projections and fsq.codebook_size == 240
    x = torch.randn(10, 16, requires_grad=True)
    fsq(x).quantized.backward(torch.randn(10, 16))
    assert x.grad is not None and fsq.project_in.weight.grad.abs().sum() > 0
    assert fsq.project_out.weight.grad.abs().sum() > 0
    cb = fsq.codebook
    assert cb.shape == (240, 16) and not cb.requires_grad
    torch.testing.assert_close(cb, fsq.decode(torch.arange(240)), rtol=0, atol=0)


def test_stats_usage_perplexity_and_mask():
    fsq = FSQ([5, 5])
    digits = torch.tensor([[0, 0], [1, 0], [1, 0], [4, 4]])
    z = latents_for_digits([5, 5], digits).float()
    out = fsq(z)
    assert out.stats["usage"].item() == pytest.approx(3 / 25)
    p = torch.tensor([0.25, 0.5, 0.25])
    assert out.stats["perplexity"].item() == pytest.approx(math.exp(-(p * p.log()).sum().item()), rel=1e-6)
    assert out.stats["level_usage"].item() == pytest.approx((3 + 2) / 10)
    keep = torch.tensor([True, False, False, True])
    masked = fsq(z, mask=keep)
    assert masked.stats["usage"].item() == pytest.approx(2 / 25)
    assert masked.stats["perplexity"].item() == pytest.approx(2.0, rel=1e-6)
    assert torch.equal(masked.quantized[keep], out.quantized[keep])  # padded rows' outputs are meaningless


def test_autocast_bf16_bounds_in_fp32():
    torch.manual_seed(0)
    fsq = FSQ([8, 5, 5, 5])
    x = torch.randn(256, 4).bfloat16()
    out = fsq(x)
    assert out.quantized.dtype == torch.bfloat16
    assert torch.equal(out.indices, fsq(x.float()).indices)
    # casting the module does not round the bounding constants
    cast = FSQ([8, 5, 5, 5]).bfloat16()
    assert torch.equal(cast(x).indices, out.indices) and len(cast.state_dict()) == 0
    proj = FSQ([8, 5, 5, 5], dim=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = proj(torch.randn(16, 8))
    assert y.quantized.dtype == torch.float32 and y.indices.dtype == torch.int64


def test_fsq_levels_table():
    assert fsq_levels(2**8) == [8, 6, 5]
    assert fsq_levels(2**10) == [8, 5, 5, 5]
    assert fsq_levels(2**12) == [7, 5, 5, 5, 5]
    assert fsq_levels(2**14) == [8, 8, 8, 6, 5]
    assert fsq_levels(2**16) == [8, 8, 8, 5, 5, 5]
    with pytest.raises(ValueError, match=r"codebook_size: expected one of 2\^8, .*2\^18 \(or nearest=True\), got 1000"):
        fsq_levels(1000)
    assert fsq_levels(1000, nearest=True) == [8, 5, 5, 5]


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"levels\[1\]: expected an int >= 2, got 1"):
        FSQ([5, 1])
    with pytest.raises(ValueError, match="levels: expected a non-empty"):
        FSQ([])
    with pytest.raises(TypeError, match="levels"):
        FSQ(5)
    with pytest.raises(TypeError, match=r"levels\[0\]"):
        FSQ([5.0, 3])
    with pytest.raises(ValueError, match="num_codebooks"):
        FSQ([5, 3], num_codebooks=0)
    with pytest.raises(ValueError, match="dim"):
        FSQ([5, 3], dim=0)
    fsq = FSQ([8, 5, 5, 5])
    with pytest.raises(ValueError, match=r"x: expected size 4 on channel_dim=-1, got shape \(2, 5\)"):
        fsq(torch.randn(2, 5))
    with pytest.raises(TypeError, match="x: expected a floating-point tensor"):
        fsq(torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="mask"):
        fsq(torch.randn(2, 4), mask=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"indices: expected values in \[0, 1000\)"):
        fsq.decode(torch.tensor([1000]))
    with pytest.raises(TypeError, match="indices"):
        fsq.decode(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="codebook"):
        FSQ([8] * 9).codebook  # noqa: B018
    with pytest.raises(ValueError, match="x: expected finite values, got 1 NaN/Inf"):
        fsq(torch.tensor([[0.0, float("nan"), 0.0, 0.0]]))
    assert MAX_HISTOGRAM_CODES == 2**20


def test_torch_compile_fullgraph():
    fsq = FSQ([8, 5, 5, 5], dim=6, channel_dim=1)
    compiled = torch.compile(fsq, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 6, 3, 3, requires_grad=True)
    out = compiled(x, mask=torch.ones(2, 3, 3, dtype=torch.bool))
    ref = fsq(x)
    assert torch.equal(out.indices, ref.indices)
    torch.testing.assert_close(out.quantized, ref.quantized)
    out.quantized.sum().backward()
    assert x.grad is not None


@pytest.mark.slow
def test_torch_compile_inductor():
    fsq = FSQ([8, 5, 5, 5])
    compiled = torch.compile(fsq, fullgraph=True)
    x = torch.randn(64, 4)
    assert torch.equal(compiled(x).indices, fsq(x).indices)
