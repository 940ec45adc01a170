"""The residual family: ResidualVectorQuantizer, GroupedResidualVectorQuantizer, ResidualFSQ.

Against formulas and closed forms: the quantize-dropout distribution of n, dropped levels adding nothing and
seeing no data, ``num_levels=n`` = the sum of the first n levels' codes, per-level sizes, partial sums =
cumulative decodes with straight-through gradients, grouped = G independent residual VQs, residual FSQ =
FSQ on the rescaled residual with a shrinking error and exact decodes. Plus masks, the NaN rule,
``fullgraph`` compilation, two calls before one backward and shared codebooks with dropout.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from torch import nn

from vqkit import FSQ, PLAIN_STE, ResidualVectorQuantizer, make_quantizer
from vqkit.codebooks import EMA
from vqkit.quantizers import GroupedResidualVectorQuantizer, ResidualFSQ
from vqkit.quantizers.residual import PARTIAL_SUMS, QuantizeDropout

pytestmark = pytest.mark.usefixtures("one_thread")

#: no maintenance at all: the codes a call uses are the codes after it
FROZEN = dict(PLAIN_STE)


def _rvq(dim=6, sizes=8, levels=3, **kw) -> ResidualVectorQuantizer:
    return ResidualVectorQuantizer(dim, sizes, levels, **kw)


def _sum_of_codes(q: ResidualVectorQuantizer, indices: torch.Tensor) -> torch.Tensor:
    """``sum_l codebook[l, indices[..., l]]`` for a projection-free residual VQ, level by level."""
    total = None
    for i in range(indices.shape[-1]):
        codes = q.codebook[0 if q.shared_codebook else i][indices[..., i]]
        total = codes if total is None else total + codes
    return total


def _dropout_frequencies(num_levels, cutoff, multiple_of, prob) -> torch.Tensor:
    """The distribution of n in closed form: P(n = v), v = 1..L."""
    p = torch.zeros(num_levels)
    choices = range(cutoff, num_levels + 1)
    for u in choices:
        p[min(math.ceil(u / multiple_of) * multiple_of, num_levels) - 1] += prob / len(choices)
    p[num_levels - 1] += 1.0 - prob
    return p


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    for (name, ta), tb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(ta, tb), name


# ----------------------------------------------------------------------------------------------
# residual VQ: levels, gradients, projections
# ----------------------------------------------------------------------------------------------


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


def test_residual_gradients_identity_once_and_nu_per_level():
    torch.manual_seed(0)
    nu = 0.5
    rvq = _rvq(sizes=8, levels=2, sync_nu=nu, **{k: v for k, v in FROZEN.items() if k != "sync_nu"})
    x = torch.randn(20, 6, requires_grad=True)
    upstream = torch.randn(20, 6)
    out = rvq(x)
    (out.quantized * upstream).sum().backward()
    torch.testing.assert_close(x.grad, upstream)  # identity once, not once per level
    for level in range(2):
        expected = torch.zeros(8, 6).index_add_(0, out.indices[:, level], nu * upstream)
        torch.testing.assert_close(rvq.levels[level].codes.weight.grad, expected)


def test_residual_with_projection_and_channel_first():
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(16, 8, num_levels=2, codebook_dim=4, channel_dim=1)
    x = torch.randn(2, 16, 3, 3)
    out = rvq(x, return_levels=True)
    assert out.quantized.shape == x.shape and out.indices.shape == (2, 3, 3, 2)
    assert out.extras[PARTIAL_SUMS].shape == (2, *x.shape)
    rvq.eval()
    out = rvq(x)
    torch.testing.assert_close(rvq.decode(out.indices), out.quantized, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# quantize dropout
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("levels,cutoff,multiple_of,prob", [(4, 1, 1, 1.0), (6, 2, 4, 1.0), (4, 1, 1, 0.5),
                                                            (5, 3, 2, 0.8)])
def test_dropout_distribution_of_n_per_sample(levels, cutoff, multiple_of, prob):
    torch.manual_seed(0)
    q = _rvq(dim=4, sizes=4, levels=levels, quantize_dropout=prob, quantize_dropout_cutoff=cutoff,
             quantize_dropout_multiple_of=multiple_of, **FROZEN)
    samples = 6000
    out = q(torch.randn(samples, 2, 4))  # two positions per sample: they share the sample's n
    used = out.indices >= 0
    n = used.sum(-1)
    assert torch.equal(n[:, 0], n[:, 1])
    # the used levels are always the first n
    assert torch.equal(used, torch.arange(levels)[None, None] < n[..., None])
    freq = torch.bincount(n[:, 0] - 1, minlength=levels).float() / samples
    expected = _dropout_frequencies(levels, cutoff, multiple_of, prob)
    torch.testing.assert_close(freq, expected, rtol=0, atol=0.025)
    assert (freq[expected == 0] == 0).all()
    torch.testing.assert_close(out.stats["active_levels"], (n[:, 0].float()).mean())


def test_dropout_per_batch_draws_one_n_per_call():
    torch.manual_seed(0)
    q = _rvq(dim=4, sizes=4, levels=4, quantize_dropout=1.0, quantize_dropout_per="batch", **FROZEN)
    seen = set()
    for _ in range(30):
        n = (q(torch.randn(5, 4)).indices >= 0).sum(-1)
        assert (n == n[0]).all()
        seen.add(int(n[0]))
    assert seen == {1, 2, 3, 4}
    for cutoff, multiple_of, prob in ((1, 1, 1.0), (2, 3, 0.7)):
        spec = QuantizeDropout(4, prob, cutoff, multiple_of, "batch")
        draws = torch.stack([spec.draw(3, torch.device("cpu")) for _ in range(4000)])
        assert (draws == draws[:, :1]).all() and draws.shape == (4000, 3)
        freq = torch.bincount(draws[:, 0] - 1, minlength=4).float() / 4000
        torch.testing.assert_close(freq, _dropout_frequencies(4, cutoff, multiple_of, prob), rtol=0, atol=0.03)


def test_dropped_levels_add_nothing_and_see_no_data():
    torch.manual_seed(0)
    q = _rvq(dim=6, sizes=16, levels=3, quantize_dropout=1.0, codebook="ema", kmeans_init=False,
             dead_code_steps=0)
    x = torch.randn(64, 6)
    out = q(x)
    n = (out.indices >= 0).sum(-1)
    assert set(n.tolist()) == {1, 2, 3}
    # the output of each row is the sum of its used levels' codes (the codebook this call searched)
    codes = torch.stack([lvl.codes.weight for lvl in q.levels])  # EMA: the statistics are folded in later
    for row in range(64):
        expected = sum(codes[i][out.indices[row, i]] for i in range(int(n[row])))
        assert torch.equal(out.quantized[row], expected)
    # level l's EMA statistics counted exactly the rows that used it
    for i, level in enumerate(q.levels):
        assert float(level.codes.pending_counts.sum()) == float((n > i).sum())


def test_frozen_dropout_output_equals_decode_of_used_levels():
    torch.manual_seed(0)
    q = _rvq(dim=6, sizes=(16, 8, 4), levels=3, quantize_dropout=1.0, **FROZEN)
    x = torch.randn(3, 40, 6)  # three samples of 40 positions
    out = q(x)
    n = (out.indices[:, 0] >= 0).sum(-1)
    for b in range(3):
        k = int(n[b])
        assert (out.indices[b, :, k:] == -1).all() and (out.indices[b, :, :k] >= 0).all()
        assert torch.equal(q.decode(out.indices[b, :, :k]), out.quantized[b])
        assert torch.equal(_sum_of_codes(q, out.indices[b, :, :k]), out.quantized[b])


def test_dropout_keeps_the_identity_gradient_and_skips_dropped_codes():
    torch.manual_seed(0)
    q = _rvq(dim=6, sizes=8, levels=3, quantize_dropout=1.0, quantize_dropout_per="batch",
             **{k: v for k, v in FROZEN.items() if k != "sync_nu"}, sync_nu=1.0)
    torch.manual_seed(3)
    x = torch.randn(10, 6, requires_grad=True)
    up = torch.randn(10, 6)
    for _ in range(20):  # until a call drops a level
        q.zero_grad()
        x.grad = None
        out = q(x)
        (out.quantized * up).sum().backward()
        if (out.indices == -1).any():
            break
    assert (out.indices[:, -1] == -1).all()
    torch.testing.assert_close(x.grad, up)
    assert q.levels[2].codes.weight.grad is None or (q.levels[2].codes.weight.grad == 0).all()
    torch.testing.assert_close(q.levels[0].codes.weight.grad, torch.zeros(8, 6).index_add_(0, out.indices[:, 0], up))


def test_kmeans_init_call_uses_every_level():
    torch.manual_seed(0)
    q = _rvq(dim=6, sizes=8, levels=4, quantize_dropout=1.0)
    out = q(torch.randn(2, 6))
    assert (out.indices >= 0).all() and all(bool(lvl.initialized) for lvl in q.levels)
    assert (q(torch.randn(64, 6)).indices == -1).any()  # dropout from the second call on


def test_eval_uses_every_level_and_num_levels_is_the_first_n():
    torch.manual_seed(0)
    q = _rvq(dim=6, sizes=(16, 8, 8, 4), levels=4, quantize_dropout=1.0)
    x = torch.randn(4, 10, 6)
    for _ in range(3):
        q(x)
    q.eval()
    full = q(x)
    assert (full.indices >= 0).all() and full.indices.shape == (4, 10, 4)
    for n in range(1, 5):
        part = q(x, num_levels=n)
        assert part.indices.shape == (4, 10, n)
        assert torch.equal(part.indices, full.indices[..., :n])  # sequential: the first n levels do not change
        assert torch.equal(part.quantized, _sum_of_codes(q, part.indices))
        assert torch.equal(q.decode(part.indices), part.quantized)
        assert torch.equal(q.decode(full.indices[..., :n]), part.quantized)
    # num_levels in training: no dropout draw, exactly n levels
    q.train()
    assert q(x, num_levels=2).indices.shape == (4, 10, 2)


def test_per_level_codebook_sizes():
    torch.manual_seed(0)
    sizes = (32, 8, 4)
    q = _rvq(dim=6, sizes=sizes, levels=3)
    assert [lvl.codebook_size for lvl in q.levels] == list(sizes)
    assert q.index_layout.sizes == sizes and q.index_layout.trailing == (3,)
    assert q.codebook_size == sizes
    assert q.codebook.shape == (3, 32, 6) and torch.isnan(q.codebook[2, 4:]).all()
    x = torch.randn(500, 6)
    out = q(x)
    for i, k in enumerate(sizes):
        assert out.indices[:, i].max() < k
    q.eval()
    out = q(x)
    assert torch.equal(q.decode(out.indices), out.quantized)
    bad = out.indices.clone()
    bad[0, 2] = 4  # valid for levels 0 and 1, not for level 2
    with pytest.raises(ValueError, match=r"indices: expected values in \[0, \[32, 8, 4\]\)"):
        q.decode(bad)
    ok = out.indices[:, :2].clone()
    ok[0, 1] = 7
    q.decode(ok)
    with pytest.raises(ValueError, match="codebook_size: expected an int or num_levels=3 ints"):
        _rvq(sizes=(8, 4), levels=3)
    with pytest.raises(ValueError, match="codebook_size: a shared codebook has one size"):
        _rvq(sizes=(8, 4, 4), levels=3, shared_codebook=True)
    assert _rvq(sizes=(8, 8, 8), levels=3, shared_codebook=True).codebook_size == 8


def test_decode_accepts_the_first_n_levels_and_rejects_minus_one():
    torch.manual_seed(0)
    q = _rvq(dim=6, sizes=8, levels=3).eval()
    idx = torch.randint(0, 8, (5, 3))
    assert torch.equal(q.decode(idx[:, :1]), _sum_of_codes(q, idx[:, :1]))
    with pytest.raises(ValueError, match=r"indices: expected a trailing axis of size n with 1 <= n <= num_levels=3"):
        q.decode(torch.zeros(5, 4, dtype=torch.long))
    dropped = idx.clone()
    dropped[2, 1:] = -1
    with pytest.raises(ValueError, match=r"got -1: a level that was not quantized .*indices\[\.\.\., :n\]"):
        q.decode(dropped)
    with pytest.raises(ValueError, match=r"expected values in \[0, 8\), got min -3"):
        q.decode(torch.full((5, 3), -3))


# ----------------------------------------------------------------------------------------------
# per-level outputs
# ----------------------------------------------------------------------------------------------


def test_partial_sums_are_cumulative_decodes_with_ste_gradients():
    torch.manual_seed(0)
    nu = 0.5
    q = _rvq(dim=6, sizes=(8, 6, 4), levels=3, sync_nu=nu, **{k: v for k, v in FROZEN.items() if k != "sync_nu"})
    x = torch.randn(2, 7, 6, requires_grad=True)
    out = q(x, return_levels=True)
    partial = out.extras[PARTIAL_SUMS]
    assert partial.shape == (3, 2, 7, 6) and partial.dtype == x.dtype
    assert torch.equal(partial[-1], out.quantized)
    for level in range(3):  # no maintenance: the training codes are the eval codes
        assert torch.equal(partial[level].detach(), q.decode(out.indices[..., : level + 1]))
    ups = torch.randn(3, 2, 7, 6)
    (partial * ups).sum().backward()
    torch.testing.assert_close(x.grad, ups.sum(0))  # every partial sum: identity to the input
    flat_idx = out.indices.reshape(-1, 3)
    for k in range(3):  # level k's codes: nu times the gradients of the partial sums that contain them
        g = ups[k:].sum(0).reshape(-1, 6)
        expected = torch.zeros(q.level_sizes[k], 6).index_add_(0, flat_idx[:, k], nu * g)
        torch.testing.assert_close(q.levels[k].codes.weight.grad, expected)


def test_partial_sums_with_dropout_stop_at_each_samples_n():
    torch.manual_seed(0)
    q = _rvq(dim=6, sizes=8, levels=4, quantize_dropout=1.0, channel_dim=1, **FROZEN)
    x = torch.randn(16, 6, 3)
    out = q(x, return_levels=True)
    partial = out.extras[PARTIAL_SUMS]
    assert partial.shape == (4, 16, 6, 3)
    n = (out.indices[:, 0] >= 0).sum(-1)
    for b in range(16):
        for level in range(int(n[b]) - 1, 4):
            assert torch.equal(partial[level, b], out.quantized[b])
    with pytest.raises(TypeError, match="return_levels"):
        q(x, return_levels=1)


# ----------------------------------------------------------------------------------------------
# EMA levels, shared codebooks, two calls before one backward
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dropout", [0.0, 1.0])
def test_ema_levels_train(dropout):
    torch.manual_seed(0)
    centers = torch.randn(16, 6) * 3
    data = centers[torch.randint(0, 16, (4096,))] + 0.3 * torch.randn(4096, 6)
    q = _rvq(dim=6, sizes=16, levels=2, codebook=EMA(0.8), kmeans_init=False, quantize_dropout=dropout)
    before = [lvl.codebook.clone() for lvl in q.levels]

    def error():
        q.eval()
        err = (q(data).quantized - data).square().mean().item()
        q.train()
        return err

    start = error()
    for step in range(40):
        out = q(data[torch.randint(0, 4096, (256,))])
        assert torch.isfinite(out.loss)
    assert error() < 0.5 * start
    assert all(not torch.equal(b, lvl.codebook) for b, lvl in zip(before, q.levels))
    assert not any(p.requires_grad for p in q.parameters())  # EMA codes take no gradient


def _loss(out, target):
    return F.mse_loss(out.quantized, target) + out.loss


@pytest.mark.parametrize("config", [dict(quantize_dropout=1.0, dead_code_steps=1),
                                    dict(quantize_dropout=1.0, shared_codebook=True, dead_code_steps=1),
                                    dict(quantize_dropout=0.5, codebook="ema", codebook_size=(16, 8, 8))])
def test_two_calls_before_one_backward_equal_two_separate_backwards(config):
    config = dict(config)
    torch.manual_seed(0)
    enc = nn.Linear(6, 6)
    q = _rvq(dim=6, sizes=config.pop("codebook_size", 16), levels=3, **config)
    q(enc(torch.randn(128, 6)))  # k-means init
    x1, x2 = torch.randn(40, 6), torch.randn(3, 20, 6) * 2 + 1
    sep_enc, sep_q = copy.deepcopy(enc), copy.deepcopy(q)
    torch.manual_seed(1)
    o1 = sep_q(sep_enc(x1))
    _loss(o1, x1).backward()
    torch.manual_seed(2)
    o2 = sep_q(sep_enc(x2))
    _loss(o2, x2).backward()

    torch.manual_seed(1)
    j1 = q(enc(x1))
    torch.manual_seed(2)
    j2 = q(enc(x2))
    (_loss(j1, x1) + _loss(j2, x2)).backward()
    assert (j1.indices == -1).any() or (j2.indices == -1).any()
    assert torch.equal(o1.indices, j1.indices) and torch.equal(o2.indices, j2.indices)
    assert torch.equal(o1.quantized, j1.quantized) and torch.equal(o2.quantized, j2.quantized)
    for a, b in ((sep_enc, enc), (sep_q, q)):
        for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
            assert (pa.grad is None) == (pb.grad is None), name
            if pa.grad is not None:
                torch.testing.assert_close(pb.grad, pa.grad, rtol=1e-5, atol=1e-6, msg=name)
    _assert_same_state(sep_q, q)


def test_shared_codebook_with_dropout_trains():
    torch.manual_seed(0)
    q = _rvq(dim=8, sizes=32, levels=3, shared_codebook=True, quantize_dropout=1.0, dead_code_steps=2)
    enc = nn.Linear(8, 8)
    opt = torch.optim.Adam([*enc.parameters(), *q.parameters()], lr=1e-2)
    data = torch.randn(256, 8)
    losses = []
    for step in range(30):
        x = data[torch.randint(0, 256, (64,))]
        out = q(enc(x))
        loss = _loss(out, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
        losses.append(loss.item())
        assert out.indices.max() < 32 and ((out.indices >= 0) | (out.indices == -1)).all()
    assert sum(losses[-5:]) < sum(losses[:5])
    q.eval()
    out = q(data)
    assert torch.equal(q.decode(out.indices), out.quantized)


# ----------------------------------------------------------------------------------------------
# grouped residual VQ
# ----------------------------------------------------------------------------------------------


def test_grouped_residual_equals_independent_residual_vqs():
    torch.manual_seed(0)
    g = GroupedResidualVectorQuantizer(8, (16, 8), groups=2, num_levels=2, dead_code_steps=1)
    singles = copy.deepcopy(g.residuals)
    x = torch.randn(3, 20, 8)
    for step in range(3):
        torch.manual_seed(step)
        out = g(x + step, return_levels=True)
        torch.manual_seed(step)
        refs = [singles[i]((x + step)[..., 4 * i: 4 * i + 4], return_levels=True) for i in range(2)]
        assert out.indices.shape == (3, 20, 2, 2)
        assert torch.equal(out.quantized, torch.cat([r.quantized for r in refs], -1))
        for i in range(2):
            assert torch.equal(out.indices[..., i, :], refs[i].indices)
        torch.testing.assert_close(out.loss, torch.stack([r.loss for r in refs]).mean())
        assert torch.equal(out.extras[PARTIAL_SUMS], torch.cat([r.extras[PARTIAL_SUMS] for r in refs], -1))
    _assert_same_state(g.residuals, singles)
    g.eval()
    out = g(x, num_levels=1)
    assert out.indices.shape == (3, 20, 2, 1) and torch.equal(g.decode(out.indices), out.quantized)


def test_grouped_residual_dropout_is_shared_by_the_groups():
    torch.manual_seed(0)
    g = GroupedResidualVectorQuantizer(8, 8, groups=4, num_levels=3, quantize_dropout=1.0, **FROZEN)
    out = g(torch.randn(50, 8))
    used = out.indices >= 0
    assert (used == used[:, :1]).all() and (~used).any()
    assert g.index_layout.trailing == (4, 3)
    with pytest.raises(ValueError, match=r"indices: expected trailing axes \(groups=4, n\)"):
        g.decode(torch.zeros(5, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="groups: expected a divisor of dim=8"):
        GroupedResidualVectorQuantizer(8, 8, groups=3, num_levels=2)


# ----------------------------------------------------------------------------------------------
# residual FSQ
# ----------------------------------------------------------------------------------------------


def _bounded(z: torch.Tensor, levels: list[int]) -> torch.Tensor:
    """FSQ's bound(z) / (L // 2), written out."""
    lv = torch.tensor(levels, dtype=z.dtype)
    half_l = (lv - 1) * (1 - 1e-3) / 2
    offset = 0.5 * (lv % 2 == 0)
    return (torch.tanh(z + torch.atanh(offset / half_l)) * half_l - offset) / torch.div(lv, 2, rounding_mode="floor")


def test_residual_fsq_is_fsq_then_the_scaled_grid_on_the_residual():
    levels = [5, 4, 7]
    q = ResidualFSQ(levels, 3).double()
    z = torch.randn(300, 3, dtype=torch.float64)
    out = q(z)
    lv = torch.tensor(levels, dtype=torch.float64)
    half = torch.div(lv, 2, rounding_mode="floor")
    torch.testing.assert_close(q.scales(torch.float64), torch.stack([(lv - 1) ** -l for l in range(3)]))
    first = FSQ(levels).double()(z)  # level 0 is FSQ
    assert torch.equal(out.indices[:, 0], first.indices)
    residual, total = _bounded(z, levels) - first.quantized, first.quantized
    basis = torch.tensor([1, 5, 20])
    for level in (1, 2):
        s = (lv - 1) ** -level
        k = torch.clamp((residual / s * half).round(), -half, lv - 1 - half)
        code = k / half * s
        assert torch.equal(out.indices[:, level], ((k + half).long() * basis).sum(-1))
        residual, total = residual - code, total + code
    torch.testing.assert_close(out.quantized, total, rtol=0, atol=1e-15)
    one = ResidualFSQ(levels, 1)(z.float())  # one level is FSQ itself
    ref = FSQ(levels)(z.float())
    assert torch.equal(one.quantized, ref.quantized) and torch.equal(one.indices[:, 0], ref.indices)


def test_residual_fsq_error_bound_shrinks_by_levels_minus_one_per_level():
    torch.manual_seed(0)
    levels = [5, 4, 7, 8]
    q = ResidualFSQ(levels, 4).double().eval()
    z = torch.randn(4000, 4, dtype=torch.float64) * 2  # saturated latents too
    out = q(z, return_levels=True)
    err = (out.extras[PARTIAL_SUMS] - _bounded(z, levels)).abs()  # (L, N, D)
    steps = torch.tensor(levels, dtype=torch.float64) - 1
    for n in range(1, 5):  # |b - output after n levels| <= (L - 1)^-n per dimension
        assert (err[n - 1] <= steps ** -n + 1e-12).all(), n
    mse = err.square().mean((1, 2))
    assert (mse[1:] < mse[:-1] / 8).all(), mse  # about (L - 1)^2 per level
    # the same mean, reduced in another order (thread count): equal to rounding
    torch.testing.assert_close(out.stats["vq_mse"], mse[-1], rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("kwargs", [dict(levels=[8, 5, 5, 5], num_levels=3),
                                    dict(levels=[7, 6, 3], num_levels=4, dim=10, channel_dim=1)])
def test_residual_fsq_decode_round_trip_is_exact(kwargs, dtype):
    torch.manual_seed(0)
    kwargs = dict(kwargs)
    q = ResidualFSQ(kwargs.pop("levels"), kwargs.pop("num_levels"), **kwargs).eval()
    if dtype == torch.float64:
        q = q.double()
    x = (torch.randn(3, q.dim, 5) if q.channel_dim == 1 else torch.randn(3, 5, q.dim)).to(dtype)
    out = q(x)
    assert out.quantized.dtype == dtype
    assert torch.equal(q.decode(out.indices, dtype), out.quantized)
    for n in range(1, q.num_levels + 1):
        part = q(x, num_levels=n)
        assert torch.equal(part.indices, out.indices[..., :n])
        assert torch.equal(q.decode(part.indices, dtype), part.quantized)


def test_residual_fsq_gradient_is_fsqs_once():
    levels = [5, 4, 3]
    z = (torch.randn(50, 3, dtype=torch.float64) * 0.8).requires_grad_()
    up = torch.randn(50, 3, dtype=torch.float64)
    q = ResidualFSQ(levels, 3).double()
    out = q(z, return_levels=True)
    (out.quantized * up).sum().backward(retain_graph=True)
    # d out / d z = bound'(z) / (L // 2), the derivative of the bounded latent the levels approximate
    slope = torch.func.vmap(torch.func.grad(lambda t: _bounded(t, levels).sum()))(z.detach())
    torch.testing.assert_close(z.grad, up * slope, rtol=1e-12, atol=1e-12)
    z.grad = None
    ups = torch.randn(3, 50, 3, dtype=torch.float64)
    (out.extras[PARTIAL_SUMS] * ups).sum().backward()  # every partial sum: the same estimator
    torch.testing.assert_close(z.grad, ups.sum(0) * slope, rtol=1e-12, atol=1e-12)


def test_residual_fsq_dropout_and_partial_sums():
    torch.manual_seed(0)
    q = ResidualFSQ([5, 5, 5], 4, dim=8, quantize_dropout=1.0, quantize_dropout_cutoff=2)
    x = torch.randn(400, 8)
    out = q(x, return_levels=True)
    n = (out.indices >= 0).sum(-1)
    freq = torch.bincount(n - 1, minlength=4).float() / 400
    torch.testing.assert_close(freq, _dropout_frequencies(4, 2, 1, 1.0), rtol=0, atol=0.07)
    q.eval()
    for k in (2, 3, 4):
        rows = n == k
        assert torch.equal(q.decode(out.indices[rows, :k]), out.quantized[rows])
        for level in range(4):
            ref = q.decode(out.indices[rows, : min(level + 1, k)])
            assert torch.equal(out.extras[PARTIAL_SUMS][level, rows].detach(), ref)


def test_residual_fsq_arguments():
    with pytest.raises(ValueError, match=r"levels: residual FSQ needs every level >= 3"):
        ResidualFSQ([5, 2], 2)
    with pytest.raises(ValueError, match="levels: give either levels"):
        make_quantizer("residual_fsq", 6, num_levels=2)
    q = make_quantizer("residual_fsq", 6, codebook_size=2**10, num_levels=2)
    assert q.levels == (8, 5, 5, 5) and q.index_layout.sizes == (1000, 1000)
    assert q.codebook.shape == (2, 1000, 6)


# ----------------------------------------------------------------------------------------------
# masks, NaN, arguments
# ----------------------------------------------------------------------------------------------


def _family(check_finite: bool = True) -> dict[str, nn.Module]:
    return {
        "rvq": _rvq(dim=8, sizes=(16, 8, 8), levels=3, quantize_dropout=1.0, dead_code_steps=1,
                    check_finite=check_finite),
        "rvq-ema-shared": _rvq(dim=8, sizes=16, levels=3, shared_codebook=True, codebook="ema",
                               quantize_dropout=0.5, check_finite=check_finite),
        "grouped": GroupedResidualVectorQuantizer(8, 8, 2, 3, quantize_dropout=1.0, codebook_dim=3,
                                                  check_finite=check_finite),
        "rfsq": ResidualFSQ([5, 5, 5], 3, dim=8, quantize_dropout=1.0, check_finite=check_finite),
    }


@pytest.mark.parametrize("fill", [float("nan"), 1e20])
@pytest.mark.parametrize("name", sorted(_family()))
def test_padding_may_hold_anything(name, fill):
    x = torch.randn(4, 10, 8)
    mask = torch.ones(4, 10, dtype=torch.bool)
    mask[:, 6:] = False
    mask[3] = False  # one fully padded sequence
    torch.manual_seed(0)
    a = _family()[name]
    b = copy.deepcopy(a)
    clean, dirty = x.clone(), x.clone()
    clean[~mask] = 0.0
    dirty[~mask] = fill
    clean.requires_grad_()
    dirty.requires_grad_()
    for step in range(3):
        torch.manual_seed(step)
        oa = a(clean, mask=mask, return_levels=True)
        torch.manual_seed(step)
        ob = b(dirty, mask=mask, return_levels=True)
    (oa.extras[PARTIAL_SUMS][:, mask].sum() + oa.loss).backward()
    (ob.extras[PARTIAL_SUMS][:, mask].sum() + ob.loss).backward()
    assert torch.equal(oa.loss, ob.loss) and torch.isfinite(ob.loss)
    for k in oa.stats:
        assert torch.equal(oa.stats[k], ob.stats[k]), k
    _assert_same_state(a, b)
    assert torch.equal(oa.extras[PARTIAL_SUMS][:, mask], ob.extras[PARTIAL_SUMS][:, mask])
    assert torch.equal(oa.indices[mask], ob.indices[mask])
    assert torch.equal(clean.grad, dirty.grad) and (dirty.grad[~mask] == 0).all()


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("name", sorted(_family()))
def test_non_finite_input_raises_naming_x(name, training):
    q = _family()[name].train(training)
    x = torch.randn(5, 8)
    x[2, 3] = float("nan")
    with pytest.raises(ValueError, match="x: expected finite values.*mask"):
        q(x)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("name", sorted(_family()))
def test_unchecked_non_finite_rows_come_back_nan_and_change_nothing(name, training):
    torch.manual_seed(0)
    q = _family(check_finite=False)[name].train(training)
    q(torch.randn(64, 8))  # k-means init: dropout is on from the next call
    twin = copy.deepcopy(q)
    x = torch.randn(6, 8)
    bad = torch.tensor([False, True, False, False, True, False])
    dirty = x.clone()
    dirty[1, 0] = float("nan")
    dirty[4] = float("inf")
    torch.manual_seed(1)
    out = q(dirty, return_levels=True)
    torch.manual_seed(1)
    ref = twin(x, mask=~bad, return_levels=True)
    assert torch.isnan(out.quantized[bad]).all() and torch.isfinite(out.quantized[~bad]).all()
    assert torch.isnan(out.extras[PARTIAL_SUMS][:, bad]).all()
    idx = out.indices.reshape(6, -1)
    assert (idx[bad] == -1).all() and (idx[~bad][:, 0] >= 0).all()
    assert torch.equal(out.quantized[~bad], ref.quantized[~bad]) and torch.equal(out.loss, ref.loss)
    assert torch.equal(out.indices[~bad], ref.indices[~bad])
    _assert_same_state(q, twin)


@pytest.mark.parametrize("build,match", [
    (lambda: _rvq(quantize_dropout=float("nan")), "quantize_dropout: expected a finite float"),
    (lambda: _rvq(quantize_dropout=1.5), r"quantize_dropout: expected a float in \[0, 1\]"),
    (lambda: _rvq(quantize_dropout=True), "quantize_dropout: expected a finite float"),
    (lambda: _rvq(quantize_dropout_cutoff=2), "quantize_dropout_cutoff: only used with quantize_dropout > 0"),
    (lambda: _rvq(quantize_dropout_multiple_of=2), "quantize_dropout_multiple_of: only used with"),
    (lambda: _rvq(quantize_dropout_per="batch"), "quantize_dropout_per: only used with"),
    (lambda: _rvq(levels=1, quantize_dropout=1.0), "quantize_dropout: needs num_levels >= 2"),
    (lambda: _rvq(levels=3, quantize_dropout=1.0, quantize_dropout_cutoff=4), "quantize_dropout_cutoff: expected an int <= 3"),
    (lambda: _rvq(levels=3, quantize_dropout=1.0, quantize_dropout_cutoff=0), "quantize_dropout_cutoff: expected an int >= 1"),
    (lambda: _rvq(levels=3, quantize_dropout=1.0, quantize_dropout_multiple_of=4), "quantize_dropout_multiple_of"),
    (lambda: _rvq(quantize_dropout=1.0, quantize_dropout_per="frame"), "quantize_dropout_per: expected one of"),
    (lambda: _rvq(levels=0), "num_levels"),
    (lambda: _rvq(metric="cosine"), "metric"),
    (lambda: _rvq(sync_nu=float("inf")), "sync_nu"),
    (lambda: _rvq(codebook="ema", sync_nu=1.0), "sync_nu"),
    (lambda: _rvq(codebook_dim=0), "codebook_dim"),
    (lambda: _rvq(sizes=(8, 0, 4)), r"codebook_size\[1\]"),
    (lambda: GroupedResidualVectorQuantizer(8, 8, 2, 1, quantize_dropout=0.5), "quantize_dropout: needs num_levels"),
    (lambda: GroupedResidualVectorQuantizer(8, 8, 2, 2, sync_nu=float("nan")), "sync_nu"),
    (lambda: ResidualFSQ([5, 5], 2, quantize_dropout=-0.1), "quantize_dropout"),
    (lambda: ResidualFSQ([5, 5], 0), "num_levels"),
])
def test_bad_hyperparameters_are_rejected_by_name(build, match):
    with pytest.raises((ValueError, TypeError), match=match):
        build()


@pytest.mark.parametrize("name", sorted(_family()))
def test_num_levels_at_call_is_checked(name):
    q = _family()[name]
    with pytest.raises(ValueError, match=r"num_levels: expected an int <= 3"):
        q(torch.randn(4, 8), num_levels=4)
    with pytest.raises(ValueError, match=r"num_levels: expected an int >= 1"):
        q(torch.randn(4, 8), num_levels=0)


# ----------------------------------------------------------------------------------------------
# torch.compile
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize("name", sorted(_family()))
def test_training_forward_with_dropout_has_no_graph_break(name):
    torch.manual_seed(0)
    q = _family(check_finite=False)[name].train()
    if name == "grouped":  # fewer levels: tracing time grows with the number of VQ levels
        q = GroupedResidualVectorQuantizer(8, 8, 2, 2, quantize_dropout=1.0, codebook_dim=3, check_finite=False)
    q(torch.randn(64, 8))  # the k-means initializing step, eager
    ex = torch._dynamo.explain(lambda t, m: q(t, m, return_levels=True))(torch.randn(2, 5, 8), torch.rand(2, 5) > 0.3)
    assert ex.graph_break_count == 0, [str(b.reason) for b in ex.break_reasons]


@pytest.mark.usefixtures("fresh_dynamo")
def test_fullgraph_training_steps_with_dropout_match_eager():
    torch.manual_seed(0)
    # no dead-code replacement here: eager skips its draws on CPU when no code is dead, compiled code always
    # draws, so the two RNG streams would part (the no-graph-break test above covers replacement)
    q = _rvq(dim=8, sizes=(16, 8, 8), levels=3, quantize_dropout=1.0, dead_code_steps=0).train()
    q(torch.randn(64, 8))
    twin = copy.deepcopy(q)
    compiled = torch.compile(twin, fullgraph=True, backend="aot_eager")
    for step in range(3):
        x = torch.randn(4, 7, 8, generator=torch.Generator().manual_seed(step)) * (1 + step)
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        torch.manual_seed(100 + step)
        oa = q(a)
        torch.manual_seed(100 + step)
        ob = compiled(b)
        (oa.quantized.square().sum() + oa.loss).backward()
        (ob.quantized.square().sum() + ob.loss).backward()
        assert torch.equal(oa.indices, ob.indices)
        torch.testing.assert_close(a.grad, b.grad)
        for (name, p), p2 in zip(q.named_parameters(), twin.parameters()):
            torch.testing.assert_close(p.grad, p2.grad, msg=name)
        for (name, t), u in zip(q.state_dict().items(), twin.state_dict().values()):
            torch.testing.assert_close(t, u, msg=name)
        q.zero_grad()
        twin.zero_grad()
    assert (oa.indices == -1).any()
