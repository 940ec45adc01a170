"""LFQ and BSQ: entropy terms against the materialized 2^d softmax (values and gradients, fp64), indices as
bits, decode round trips, straight-through gradients, masks, the NaN rule, low precision, compile, large d."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F

import vqkit.quantizers.lookup_free as lf
from vqkit import make_quantizer
from vqkit.quantizers import BSQ, LFQ


# ----------------------------------------------------------------------------------------------
# brute force: the 2^d soft code distribution, materialized in fp64
# ----------------------------------------------------------------------------------------------


def all_bits(d: int) -> torch.Tensor:
    """``(2^d, d)`` bool: row k holds the bits of k, bit 0 first."""
    k = torch.arange(2**d)
    return (k[:, None] >> torch.arange(d)) & 1 == 1


def brute_force(z: torch.Tensor, scale: float, temperature: float, weight: torch.Tensor | None = None):
    """``z (N, G, d)`` -> (per-sample entropy, exact batch entropy (G,), factorized batch entropy (G,)) of
    ``softmax_c(-||z - c||^2 / temperature)`` over the codes ``{-scale, +scale}^d``."""
    n, g, d = z.shape
    s = torch.tensor(scale, dtype=z.dtype)
    codes = torch.where(all_bits(d), s, -s)  # (K, d)
    logits = -(z[:, :, None, :] - codes).pow(2).sum(-1) / temperature  # (N, G, K)
    p, logp = logits.softmax(-1), logits.log_softmax(-1)
    w = torch.ones(n, dtype=z.dtype) if weight is None else weight.to(z.dtype)
    sample = (-(p * logp).sum(-1) * w[:, None]).sum() / (w.sum() * g)
    pbar = (p * w[:, None, None]).sum(0) / w.sum()  # (G, K)
    exact = -(pbar * pbar.clamp_min(1e-300).log()).sum(-1)
    marg = pbar @ all_bits(d).to(z.dtype)  # (G, d): batch-mean P(bit_i = 1)
    hb = -(marg * marg.clamp_min(1e-300).log() + (1 - marg) * (1 - marg).clamp_min(1e-300).log())
    return sample, exact, hb.sum(-1)


def _latents(n, g, d, seed, spread=1.0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, g, d, generator=gen, dtype=torch.float64) * spread + 0.3 * spread)


# ----------------------------------------------------------------------------------------------
# entropy terms
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("d,g,scale,temperature,masked", [
    (1, 1, 1.0, 0.5, False), (3, 2, 0.5, 0.3, True), (6, 1, 1.0, 1.0, True), (6, 2, 2.0, 4.0, False),
    (5, 1, 1.0, 0.01, True),  # MAGVIT-v2's temperature: nearly one-hot soft codes
])
def test_entropies_match_the_materialized_softmax(d, g, scale, temperature, masked):
    z = _latents(40, g, d, seed=d * 10 + g)
    weight = (torch.arange(40) % 3 != 0).double() if masked else None
    a = z * (4 * scale / temperature)
    sample, exact, fact = brute_force(z, scale, temperature, weight)
    torch.testing.assert_close(lf.per_sample_entropy(a, weight), sample, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(lf.batch_entropy_exact(a, weight), exact, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(lf.batch_entropy_factorized(a, weight), fact, rtol=1e-10, atol=1e-12)
    # the factorized value is the sum of the marginal entropies: an upper bound, exact for one bit
    assert bool((fact >= exact - 1e-12).all())
    if d == 1:
        torch.testing.assert_close(fact, exact)
    # the terms ignore masked rows entirely: the same as dropping them
    if masked:
        keep = weight.bool()
        torch.testing.assert_close(lf.batch_entropy_exact(a, weight), lf.batch_entropy_exact(a[keep]))
        torch.testing.assert_close(lf.per_sample_entropy(a, weight), lf.per_sample_entropy(a[keep]))


def test_factorized_equals_exact_for_independent_bits_and_is_loose_for_correlated_ones():
    # the rows enumerate every sign pattern: the bits are independent over the batch
    z = torch.where(all_bits(4), 0.7, -0.7).double()[:, None, :]
    a = z * 40
    torch.testing.assert_close(lf.batch_entropy_factorized(a), lf.batch_entropy_exact(a))
    # two codes, all bits equal: exact log 2, factorized d log 2
    z = torch.tensor([[1.0] * 4, [-1.0] * 4], dtype=torch.float64)[:, None, :]
    a = z * 400
    torch.testing.assert_close(lf.batch_entropy_exact(a), torch.tensor([math.log(2)], dtype=torch.float64))
    torch.testing.assert_close(lf.batch_entropy_factorized(a), torch.tensor([4 * math.log(2)], dtype=torch.float64))


def test_exact_chunking_over_rows_and_codes_matches_one_block(monkeypatch):
    z = _latents(37, 2, 7, seed=3)
    weight = (torch.arange(37) % 4 != 1).double()
    a = (z * 3).requires_grad_()
    h1 = lf.batch_entropy_exact(a, weight)
    (g1,) = torch.autograd.grad(h1 @ torch.tensor([1.0, -0.5], dtype=torch.float64), a)
    monkeypatch.setattr(lf, "EXACT_CODE_BITS", 3)  # 16 code blocks of 8 codes
    monkeypatch.setattr(lf, "EXACT_CHUNK_ELEMENTS", 2 * 8 * 5)  # blocks of 5 rows
    assert lf._exact_blocks(2, 37, 7) == (3, 16, 5)
    h2 = lf.batch_entropy_exact(a, weight)
    (g2,) = torch.autograd.grad(h2 @ torch.tensor([1.0, -0.5], dtype=torch.float64), a)
    torch.testing.assert_close(h2, h1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g2, g1, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("masked", [False, True])
def test_entropy_gradients_match_autograd_on_the_brute_force(masked):
    d, g, scale, temperature = 5, 2, 0.8, 0.7
    z = _latents(24, g, d, seed=11).requires_grad_()
    weight = (torch.arange(24) % 3 != 2).double() if masked else None
    coef = torch.tensor([0.7, -1.3], dtype=torch.float64)

    def ours(t):
        a = t * (4 * scale / temperature)
        return (lf.per_sample_entropy(a, weight), lf.batch_entropy_exact(a, weight) @ coef,
                lf.batch_entropy_factorized(a, weight) @ coef)

    def brute(t):
        s, e, f = brute_force(t, scale, temperature, weight)
        return s, e @ coef, f @ coef

    for mine, ref in zip(ours(z), brute(z)):
        (gm,) = torch.autograd.grad(mine, z, retain_graph=True)
        (gr,) = torch.autograd.grad(ref, z, retain_graph=True)
        torch.testing.assert_close(gm, gr, rtol=1e-8, atol=1e-12)
        if masked:
            assert (gm[~weight.bool()] == 0).all()


def test_saturated_and_empty_inputs_stay_finite():
    a = torch.tensor([[[1e4, -1e4, 3e3]], [[2e4, -5e3, -1e4]]], requires_grad=True)  # fp32, saturated bits
    for fn in (lf.per_sample_entropy, lf.batch_entropy_exact, lf.batch_entropy_factorized):
        h = fn(a).sum()
        (grad,) = torch.autograd.grad(h, a)
        assert torch.isfinite(h) and torch.isfinite(grad).all()
    assert float(lf.batch_entropy_factorized(a.detach()).sum()) == pytest.approx(math.log(2), abs=1e-6)  # bit 2 splits
    none = torch.zeros(2)
    for fn in (lf.per_sample_entropy, lf.batch_entropy_exact, lf.batch_entropy_factorized):
        h = fn(a, none).sum()
        (grad,) = torch.autograd.grad(h, a)
        assert float(h.detach()) == 0.0 and (grad == 0).all()
        assert float(fn(a.detach()[:0]).sum()) == 0.0


def test_quantizer_loss_and_its_gradient_equal_the_brute_force_formula():
    torch.manual_seed(0)
    d, temperature, scale = 5, 0.5, 0.7
    q = LFQ(d, entropy_weight=0.3, diversity=1.7, temperature=temperature, codebook_scale=scale,
            commitment_weight=0.4, batch_entropy="exact").double()
    x = (torch.randn(3, 8, d, dtype=torch.float64) * 0.6).requires_grad_()
    mask = torch.rand(3, 8) > 0.25
    out = q(x, mask)
    out.loss.backward()

    xr = x.detach().clone().requires_grad_()
    w = mask.reshape(-1).double()
    zf = xr.reshape(-1, 1, d)
    sample, exact, _ = brute_force(zf, scale, temperature, w)
    qc = torch.where(zf > 0, torch.tensor(scale, dtype=torch.float64), -scale).detach()
    commit = (((zf - qc) ** 2).sum((1, 2)) * w).sum() / (w.sum() * d)
    ref = 0.3 * (sample - 1.7 * exact[0]) + 0.4 * commit
    ref.backward()
    torch.testing.assert_close(out.loss, ref.float())
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-8, atol=1e-12)
    assert out.loss.dtype == torch.float32
    stats = out.stats
    torch.testing.assert_close(stats["per_sample_entropy"], sample.float())
    torch.testing.assert_close(stats["batch_entropy"], exact[0].float())
    torch.testing.assert_close(stats["entropy_loss"], (0.3 * (sample - 1.7 * exact[0])).float())
    torch.testing.assert_close(stats["commitment_loss"], (0.4 * commit).float())


def test_bsq_entropies_are_those_of_the_codes_on_the_sphere():
    d, temperature = 6, 0.2
    q = BSQ(d, temperature=temperature, batch_entropy="exact").double()
    x = torch.randn(50, d, dtype=torch.float64) * 3
    out = q(x)
    u = F.normalize(x, dim=-1)[:, None, :]
    sample, exact, fact = brute_force(u, 1 / math.sqrt(d), temperature)
    torch.testing.assert_close(out.stats["per_sample_entropy"], sample.float())
    torch.testing.assert_close(out.stats["batch_entropy"], exact[0].float())
    factorized = BSQ(d, temperature=temperature).double()  # the default: the paper's per-dimension approximation
    assert factorized.batch_entropy_mode == "factorized"
    torch.testing.assert_close(factorized(x).stats["batch_entropy"], fact[0].float())


# ----------------------------------------------------------------------------------------------
# indices, codes, decode
# ----------------------------------------------------------------------------------------------


def test_lfq_indices_are_the_bits_and_codes_the_signs():
    torch.manual_seed(0)
    q = LFQ(12, num_codebooks=3, codebook_scale=0.5)  # 3 groups of 4 bits, no projections
    x = torch.randn(7, 5, 12)
    x[0, 0] = 0.0  # sign(0) -> the negative code
    out = q(x)
    z = x.unflatten(-1, (3, 4))
    expected = ((z > 0).long() * torch.tensor([1, 2, 4, 8])).sum(-1)
    assert out.indices.shape == (7, 5, 3) and torch.equal(out.indices, expected)
    assert torch.equal(out.quantized, torch.where(x > 0, 0.5, -0.5))
    assert (out.indices[0, 0] == 0).all()
    assert q.codebook.shape == (16, 4) and torch.equal(q.codebook, q.decode(torch.arange(16).expand(3, 16).T)[:, :4])


@pytest.mark.parametrize("cls", [LFQ, BSQ])
def test_every_index_decodes_to_a_distinct_code_and_reencodes_to_itself(cls):
    d = 6
    q = cls(d).eval()
    idx = torch.arange(2**d)
    codes = q.decode(idx)
    assert codes.shape == (2**d, d) and torch.unique(codes, dim=0).shape[0] == 2**d
    scale = 1.0 if cls is LFQ else 1 / math.sqrt(d)
    assert torch.equal(codes.abs(), torch.full_like(codes, scale))
    out = q(codes * 2.5)  # any positive multiple of a code quantizes to that code
    assert torch.equal(out.indices, idx) and torch.equal(out.quantized, codes)
    assert torch.equal(q.codebook, codes)
    if cls is BSQ:
        torch.testing.assert_close(codes.norm(dim=-1), torch.ones(2**d))


@pytest.mark.parametrize("cls", [LFQ, BSQ])
def test_decode_reproduces_eval_forward_with_projections_groups_and_channel_dim(cls):
    torch.manual_seed(0)
    q = cls(10, 3, num_codebooks=2, channel_dim=1).eval()
    assert q.has_projections and q.index_layout.trailing == (2,)
    x = torch.randn(2, 10, 4, 5)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        out = q(x.to(dtype))
        assert out.quantized.dtype == dtype and out.indices.shape == (2, 4, 5, 2)
        assert torch.equal(q.decode(out.indices, dtype), out.quantized)
    with pytest.raises(ValueError, match="codebook: with num_codebooks > 1 and projections"):
        q.codebook  # noqa: B018
    with pytest.raises(ValueError, match="indices: expected a trailing axis of size num_codebooks=2"):
        q.decode(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"indices: expected values in \[0, 8\)"):
        q.decode(torch.full((3, 2), 8))


# ----------------------------------------------------------------------------------------------
# gradients, masks, NaN, dtypes
# ----------------------------------------------------------------------------------------------


def test_straight_through_gradients():
    g = torch.randn(9, 5, dtype=torch.float64)
    x = torch.randn(9, 5, dtype=torch.float64, requires_grad=True)
    LFQ(5).double()(x).quantized.backward(g)
    assert torch.equal(x.grad, g)  # identity
    xb = x.detach().clone().requires_grad_()
    BSQ(5).double()(xb).quantized.backward(g)
    ref = x.detach().clone().requires_grad_()
    F.normalize(ref, dim=-1).backward(g)  # identity on u, then through the normalization
    torch.testing.assert_close(xb.grad, ref.grad, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cls,kwargs", [(LFQ, dict(batch_entropy="exact")), (LFQ, dict(codebook_dim=3)),
                                        (BSQ, dict(num_codebooks=2))])
def test_masked_rows_change_nothing_and_equal_dropping_them(cls, kwargs):
    torch.manual_seed(0)
    q = cls(8, **kwargs)
    x = torch.randn(3, 6, 8)
    lens = torch.tensor([6, 2, 4])
    mask = torch.arange(6)[None] < lens[:, None]
    dirty = x.clone()
    dirty[~mask] = float("nan")
    a = q(dirty, lens=lens)
    b = q(x[mask][None])  # only the valid rows
    torch.testing.assert_close(a.loss, b.loss, rtol=1e-5, atol=1e-6)
    for key in a.stats:
        torch.testing.assert_close(a.stats[key], b.stats[key], rtol=1e-5, atol=1e-6, msg=key)
    assert torch.equal(a.quantized[mask], b.quantized[0]) and torch.equal(a.indices[mask], b.indices[0])
    xa = dirty.clone().requires_grad_()
    q(xa, mask).loss.backward()
    assert torch.isfinite(xa.grad).all() and (xa.grad[~mask] == 0).all()


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("cls", [LFQ, BSQ])
def test_non_finite_rows(cls, training):
    x = torch.randn(6, 8)
    with pytest.raises(ValueError, match="x: expected finite values"):
        cls(8, 4).train(training)(torch.where(torch.arange(8) == 3, float("nan"), x))
    torch.manual_seed(0)
    q = cls(8, 4, check_finite=False).train(training)
    bad = torch.tensor([False, True, False, False, True, False])
    dirty = x.clone()
    dirty[1, 0] = float("nan")
    dirty[4] = float("inf")
    out = q(dirty)
    ref = q(x, mask=~bad)
    assert torch.isnan(out.quantized[bad]).all() and torch.isfinite(out.quantized[~bad]).all()
    assert (out.indices[bad] == -1).all() and (out.indices[~bad] >= 0).all()
    assert torch.equal(out.quantized[~bad], ref.quantized[~bad]) and torch.equal(out.loss, ref.loss)
    for key in ref.stats:
        assert torch.equal(out.stats[key], ref.stats[key]), key


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cls", [LFQ, BSQ])
def test_low_precision_inputs_quantize_in_fp32(cls, dtype):
    torch.manual_seed(0)
    q = cls(8)
    x = torch.randn(4, 16, 8).to(dtype).requires_grad_()
    out = q(x)
    ref = q(x.detach().float())
    assert out.quantized.dtype == dtype and torch.equal(out.indices, ref.indices)
    torch.testing.assert_close(out.loss, ref.loss)
    assert out.loss.dtype == torch.float32 and out.stats["batch_entropy"].dtype == torch.float32
    out.loss.backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()
    proj = cls(16, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = proj(torch.randn(8, 16))
    assert y.quantized.dtype == torch.float32 and torch.isfinite(y.loss)


# ----------------------------------------------------------------------------------------------
# compile, large d, arguments
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls,kwargs", [(LFQ, dict(codebook_dim=4, batch_entropy="exact")),
                                        (BSQ, dict(codebook_dim=3, num_codebooks=2))])
def test_training_forward_compiles_without_graph_breaks(cls, kwargs):
    torch._dynamo.reset()
    torch.manual_seed(0)
    q = cls(8, channel_dim=1, **kwargs).train()
    x = torch.randn(2, 8, 3, 3, requires_grad=True)
    mask = torch.rand(2, 3, 3) > 0.2

    def step(t, m):
        out = q(t, m)
        return out.quantized, out.indices, out.loss, out.stats["batch_entropy"]

    ex = torch._dynamo.explain(step)(x, mask)
    assert ex.graph_break_count == 0, [str(b.reason) for b in ex.break_reasons]
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    got = compiled(x, mask)
    ref = step(x, mask)
    assert torch.equal(got[1], ref[1])
    for a, b in zip(got[::2], ref[::2]):
        torch.testing.assert_close(a, b)
    (g1,) = torch.autograd.grad(got[0].sum() + got[2], x)
    (g2,) = torch.autograd.grad(ref[0].sum() + ref[2], x)
    torch.testing.assert_close(g1, g2)
    torch._dynamo.reset()


def test_large_codebooks_without_a_2_to_the_d_allocation():
    torch.manual_seed(0)
    q = LFQ(40)
    assert q.codebook_size == 2**40 and q.batch_entropy_mode == "factorized"
    x = torch.randn(256, 40, requires_grad=True)
    out = q(x)  # a 2^40 softmax or histogram would not fit in memory
    out.loss.backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(out.loss)
    expected = ((x.detach() > 0).long() << torch.arange(40)).sum(-1)
    assert torch.equal(out.indices, expected)
    assert out.stats["usage"].item() == pytest.approx(256 / 2**40, rel=1e-6)  # counted by sorting
    assert out.stats["perplexity"].item() == pytest.approx(256, rel=1e-4)
    q.eval()
    assert torch.equal(q.decode(out.indices), q(x.detach()).quantized)
    top = LFQ(62).eval()  # the largest: indices up to 2^62 - 1, exact in int64
    ones = top(torch.ones(1, 62))
    assert ones.indices.item() == 2**62 - 1 and torch.equal(top.decode(ones.indices), ones.quantized)
    with pytest.raises(ValueError, match="codebook: 2\\^40 implicit codes"):
        q.codebook  # noqa: B018


def test_auto_rule_and_registry():
    assert LFQ(12).batch_entropy_mode == "exact" and LFQ(13).batch_entropy_mode == "factorized"
    assert LFQ(20, batch_entropy="exact").batch_entropy_mode == "exact"
    assert BSQ(8).batch_entropy_mode == "factorized" and BSQ(8, batch_entropy="auto").batch_entropy_mode == "exact"
    q = make_quantizer("lfq", 16, codebook_size=2**8, channel_dim=1)
    assert isinstance(q, LFQ) and q.codebook_dim == 8 and q.has_projections
    b = make_quantizer("bsq", 18)
    assert isinstance(b, BSQ) and b.codebook_size == 2**18 and not b.has_projections


@pytest.mark.parametrize("build,match", [
    (lambda: LFQ(8, temperature=0.0), "temperature: expected a float in \\(0"),
    (lambda: LFQ(8, temperature=float("nan")), "temperature: expected a finite float"),
    (lambda: LFQ(8, entropy_weight=float("inf")), "entropy_weight"),
    (lambda: LFQ(8, diversity=-1.0), "diversity"),
    (lambda: LFQ(8, entropy_weight=0.0, diversity=2.0), "diversity: only used with entropy_weight > 0"),
    (lambda: LFQ(8, commitment_weight=-0.1), "commitment_weight"),
    (lambda: LFQ(8, codebook_scale=0.0), "codebook_scale"),
    (lambda: LFQ(8, codebook_size=1000), "codebook_size: expected a power of two.*nearest: 1024"),
    (lambda: LFQ(8, 4, codebook_size=16), "codebook_size: give codebook_dim .* or codebook_size"),
    (lambda: LFQ(8, 63), "codebook_dim: expected an int <= 62"),
    (lambda: LFQ(100), "codebook_dim: dim / num_codebooks = 100 bits"),
    (lambda: LFQ(9, num_codebooks=2), "num_codebooks: dim=9 is not divisible"),
    (lambda: LFQ(8, batch_entropy="chunked"), "batch_entropy: expected one of"),
    (lambda: LFQ(30, batch_entropy="exact"), "batch_entropy: 'exact' .* d <= 24"),
    (lambda: BSQ(8, num_codebooks=0), "num_codebooks"),
    (lambda: BSQ(8, check_finite=1), "check_finite"),
    (lambda: BSQ(8, codebook_scale=2.0), "codebook_scale"),  # BSQ's scale is fixed: 1 / sqrt(d)
])
def test_bad_arguments_are_rejected_by_name(build, match):
    with pytest.raises((ValueError, TypeError), match=match):
        build()


def test_entropy_weight_zero_reports_the_terms_without_their_gradient():
    torch.manual_seed(0)
    q = LFQ(6, entropy_weight=0.0, commitment_weight=0.0)
    x = torch.randn(20, 6, requires_grad=True)
    out = q(x)
    assert float(out.loss.detach()) == 0.0
    if out.loss.requires_grad:
        out.loss.backward()
    assert x.grad is None or (x.grad == 0).all()
    assert out.stats["per_sample_entropy"] > 0 and out.stats["batch_entropy"] > 0
    twin = copy.deepcopy(q)
    twin.entropy_weight = 1.0
    assert torch.equal(twin(x).stats["batch_entropy"], out.stats["batch_entropy"])
