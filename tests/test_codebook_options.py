"""SimVQ's linear codebook, the orthogonal and diversity regularizers, stochastic code sampling and
``freeze_codebook``, against formulas and brute force."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from vqkit import PLAIN_STE, VectorQuantizer, make_quantizer
from vqkit.codebooks import Affine, Linear
from vqkit.losses import orthogonal_loss, soft_assignment_entropy
from vqkit.search import sample_code


def per_code_sum(values, indices, k):
    return torch.zeros(k, values.shape[-1], dtype=values.dtype).index_add_(0, indices, values)


# ----------------------------------------------------------------------------------------------
# SimVQ: the linear codebook
# ----------------------------------------------------------------------------------------------


def test_linear_codebook_gradients_match_the_formula_and_move_every_code():
    torch.manual_seed(0)
    a = 2.0
    vq = VectorQuantizer(4, 12, **{**PLAIN_STE, "codebook": Linear(lr=a), "sync_nu": 1.0})
    with torch.no_grad():
        vq.codes.linear.normal_(0, 0.1)
        vq.codes.shift.normal_(0, 0.1)
    x = torch.randn(5, 4)  # a few codes are selected
    upstream = torch.randn(5, 4)
    out = vq(x)
    (out.quantized * upstream).sum().backward()
    g = per_code_sum(upstream, out.indices, 12)  # dL/dc_k (sync_nu = 1)
    w = vq.codes.weight
    torch.testing.assert_close(vq.codes.linear.grad, a * w.t() @ g)
    torch.testing.assert_close(vq.codes.shift.grad, a * g.sum(0))
    assert all(p is not w for p in vq.parameters())  # the basis is frozen (a buffer)
    before = vq.codebook.clone()
    with torch.no_grad():
        vq.codes.linear -= 0.1 * vq.codes.linear.grad
    unused = torch.ones(12, dtype=torch.bool)
    unused[out.indices] = False
    assert ((vq.codebook - before)[unused].abs().sum(1) > 0).all()  # unselected codes moved too


def test_affine_is_the_diagonal_special_case_of_linear():
    torch.manual_seed(0)
    aff = VectorQuantizer(6, 10, codebook=Affine(lr=3.0))
    lin = VectorQuantizer(6, 10, codebook=Linear(lr=3.0))
    with torch.no_grad():
        aff.codes.scale.normal_(0, 0.1)
        aff.codes.shift.normal_(0, 0.1)
        lin.codes.weight.copy_(aff.codes.weight)
        alpha = aff.codes.affine_map()[0][0]
        lin.codes.linear.copy_(torch.diag((alpha - 1) / 3.0))  # I + a V = diag(alpha)
        lin.codes.shift.copy_(aff.codes.shift[0])
    torch.testing.assert_close(lin.codebook, aff.codebook)


def test_simvq_preset_and_maintenance_in_the_effective_space():
    torch.manual_seed(0)
    vq = make_quantizer("simvq", 8, codebook_size=16, dead_code_steps=1)
    assert vq.codebook_spec.kind == "linear"
    with torch.no_grad():
        vq.codes.linear.normal_(0, 0.2)
    centers = torch.randn(16, 8) * 4
    z = (centers[:, None] + 0.01 * torch.randn(16, 50, 8)).reshape(-1, 8)
    vq(z)  # k-means init writes effective codes through the inverse map
    assert (torch.cdist(centers, vq.codebook).min(1).values < 0.1).all()
    with pytest.raises(ValueError, match="codebook_size"):
        make_quantizer("simvq", 8)
    with pytest.raises(ValueError, match="codebook: fixed by the 'simvq' preset"):
        make_quantizer("simvq", 8, codebook_size=16, codebook="plain")


# ----------------------------------------------------------------------------------------------
# regularizers
# ----------------------------------------------------------------------------------------------


def test_orthogonal_loss_equals_the_gram_formula():
    torch.manual_seed(0)
    c = torch.randn(40, 8, dtype=torch.float64, requires_grad=True)
    cn = F.normalize(c, dim=-1)
    ref = ((cn @ cn.t() - torch.eye(40, dtype=torch.float64)) ** 2).sum() / 40**2
    got = orthogonal_loss(c)
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(torch.autograd.grad(got, c)[0], torch.autograd.grad(ref, c)[0])
    assert orthogonal_loss(torch.eye(5)).item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("masked", [False, True])
def test_soft_assignment_entropy_equals_brute_force(metric, masked):
    torch.manual_seed(1)
    z = (torch.randn(53, 5, dtype=torch.float64) + 30).requires_grad_()  # an offset: computed about a center
    c = (torch.randn(13, 5, dtype=torch.float64) + 30).requires_grad_()
    w = (torch.rand(53) > 0.4).double() if masked else None
    got = soft_assignment_entropy(z, c, 0.8, metric, w, memory_budget=4 * 3 * 13 * 7)  # 7-row chunks
    zz, cc = (z, c) if metric == "euclidean" else (F.normalize(z, dim=-1), F.normalize(c, dim=-1))
    p = torch.softmax(-torch.cdist(zz, cc).pow(2) / 0.8, -1)
    p_bar = p.mean(0) if w is None else (p * w[:, None]).sum(0) / w.sum()
    ref = -(p_bar * p_bar.log()).sum()
    torch.testing.assert_close(got, ref)
    for a, b in zip(torch.autograd.grad(got, (z, c)), torch.autograd.grad(ref, (z, c))):
        torch.testing.assert_close(a, b)


def test_regularizers_enter_the_loss_and_the_stats():
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    base = VectorQuantizer(8, 16, **PLAIN_STE)
    reg = VectorQuantizer(8, 16, **PLAIN_STE, orthogonal_weight=0.5, diversity_weight=0.2, diversity_temperature=2.0)
    reg.load_state_dict(base.state_dict())
    a, b = base(x), reg(x)
    assert "orthogonal_loss" not in a.stats and "diversity_entropy" not in a.stats
    expected = a.loss + 0.5 * b.stats["orthogonal_loss"] + 0.2 * (math.log(16) - b.stats["diversity_entropy"])
    torch.testing.assert_close(b.loss, expected)
    b.loss.backward()
    assert reg.codes.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="diversity_temperature: only used with diversity_weight > 0"):
        VectorQuantizer(8, 16, diversity_temperature=2.0)


# ----------------------------------------------------------------------------------------------
# stochastic code sampling
# ----------------------------------------------------------------------------------------------


def test_sampled_assignments_follow_the_softmax_of_distances():
    torch.manual_seed(0)
    codes = torch.randn(6, 3) + 50
    x = torch.randn(1, 3) + 50
    probs = torch.softmax(-torch.cdist(x.double(), codes.double()).pow(2)[0] / 1.5, 0)
    idx = sample_code(x.expand(100_000, 3), codes, 1.5, memory_budget=2**16)
    freq = torch.bincount(idx, minlength=6).double() / 100_000
    assert (freq - probs).abs().max() < 0.01  # ~4 sigma of the binomial error at n = 1e5
    cold = sample_code(x.expand(100, 3), codes, 1e-6)
    assert (cold == probs.argmax()).all()


def test_stochastic_quantizer_samples_in_training_and_takes_the_nearest_in_eval():
    torch.manual_seed(0)
    vq = VectorQuantizer(3, 8, **PLAIN_STE, sampling_temperature=5.0)
    x = torch.randn(1, 3).expand(4000, 3).contiguous()
    train_idx = vq(x).indices
    assert torch.unique(train_idx).numel() > 1
    vq.eval()
    out = vq(x)
    assert torch.unique(out.indices).numel() == 1
    assert torch.equal(out.indices, vq.search(x, vq.effective_codes()).indices)


# ----------------------------------------------------------------------------------------------
# freezing the codebook
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("codebook", ["affine", "running_affine", "ema", "linear"])
def test_frozen_codebook_gets_no_gradient_and_no_maintenance(codebook):
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 16, codebook=codebook, dead_code_steps=1, freeze_codebook=True)
    before = copy.deepcopy(vq.state_dict())
    for _ in range(3):
        x = torch.randn(32, 8, requires_grad=True)
        out = vq(x)
        (out.quantized.square().sum() + out.loss).backward()
        assert x.grad is not None
    for name, t in vq.state_dict().items():
        assert torch.equal(t, before[name]), name  # no k-means, replacement, EMA, statistics or counters
    assert all(p.grad is None for p in vq.codes.parameters())
    out = vq(torch.randn(32, 8), freeze_codebook=False)  # per call: this one maintains
    assert bool(vq.initialized)


def test_requires_grad_false_freezes_a_gradient_trained_codebook():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 16, dead_code_steps=1)
    vq(torch.randn(64, 8))
    vq.codes.requires_grad_(False)
    before = copy.deepcopy(vq.state_dict())
    vq(torch.randn(64, 8) * 3)
    for name, t in vq.state_dict().items():
        assert torch.equal(t, before[name]), name
    frozen_call = VectorQuantizer(8, 16, dead_code_steps=1)
    frozen_call(torch.randn(64, 8))
    state = copy.deepcopy(frozen_call.state_dict())
    frozen_call(torch.randn(64, 8), freeze_codebook=True)
    for name, t in frozen_call.state_dict().items():
        assert torch.equal(t, state[name]), name


# ----------------------------------------------------------------------------------------------
# replacement_sampling: which batch rows re-seed dead codes
# ----------------------------------------------------------------------------------------------


def test_replacement_candidates_follow_the_row_weights():
    from vqkit.maintenance import replacement_candidates

    torch.manual_seed(0)
    z = torch.arange(6, dtype=torch.float32)[:, None].repeat(1, 3) * 10.0  # row i is (10 i, 10 i, 10 i)
    weight = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 1.0])  # row 4 is padding
    rows = torch.tensor([0.0, 0.0, 3.0, 1.0, 100.0, 0.0])  # only rows 2 and 3 may be drawn, 3:1
    cand, ok = replacement_candidates(z, weight, 4000, noise=0.0, row_weight=rows)
    drawn = cand[:, 0] / 10.0
    assert bool(ok) and set(drawn.unique().tolist()) == {2.0, 3.0}
    assert abs((drawn == 2.0).float().mean().item() - 0.75) < 0.03
    # no valid row with weight: the uniform draw over the valid rows, never the padding
    cand, _ = replacement_candidates(z, weight, 4000, noise=0.0, row_weight=torch.tensor([0, 0, 0, 0, 5.0, 0]))
    assert set((cand[:, 0] / 10.0).unique().tolist()) == {0.0, 1.0, 2.0, 3.0, 5.0}


@pytest.mark.parametrize("rule", ["crowded", "error"])
def test_replacement_row_weights_equal_brute_force(rule):
    torch.manual_seed(1)
    vq = VectorQuantizer(4, 8, codebook="plain", kmeans_init=False, replacement_sampling=rule)
    z = torch.randn(50, 4)
    weight = (torch.rand(50) > 0.2).float()
    got = vq._replacement_row_weight(z, weight)
    d = torch.cdist(z.double(), vq.latent_codebook.double()).square()
    nearest = d.argmin(1)
    if rule == "error":
        want = d.min(1).values
    else:
        want = torch.stack([(weight.double() * (nearest == nearest[i])).sum() for i in range(50)])
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)
    assert VectorQuantizer(4, 8)._replacement_row_weight(z, weight) is None  # uniform: no extra search


def test_error_sampling_reseeds_dead_codes_where_the_codebook_fits_worst():
    """Rows that sit on a code have error 0 and never re-seed; the dead code goes to the far cluster."""
    torch.manual_seed(0)
    vq = VectorQuantizer(2, 3, codebook="plain", kmeans_init=False, dead_code_steps=1, alternating_steps=0,
                         sync_nu=0.0, replacement_sampling="error")
    with torch.no_grad():
        vq.codes.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [-50.0, -50.0]]))
    near = torch.tensor([[0.0, 0.0], [1.0, 0.0]]).repeat(40, 1)  # on codes 0 and 1
    far = torch.tensor([[20.0, 20.0]]) + 0.1 * torch.randn(5, 2)  # nearest to code 1, far from every code
    vq.train()
    vq(torch.cat([near, far]))  # code 2 unused: dead after this call
    vq(torch.cat([near, far]))  # re-seeded before this call's search
    assert vq.latent_codebook[2].sub(torch.tensor([20.0, 20.0])).norm() < 2.0
    with pytest.raises(ValueError, match="replacement_sampling: expected one of"):
        VectorQuantizer(2, 3, replacement_sampling="worst")


def test_replacement_sampling_needs_replacement_and_defaults_resolve():
    from vqkit import PAPER
    from vqkit.quantizers.vector import ALTERNATING_LR

    with pytest.raises(ValueError, match="replacement_sampling: only used with dead-code replacement"):
        VectorQuantizer(4, 8, dead_code_steps=0, replacement_sampling="error")
    assert VectorQuantizer(4, 8, dead_code_steps=0, dead_code_threshold=1.0,
                           replacement_sampling="error").replacement_sampling == "error"
    assert VectorQuantizer(4, 8).replacement_sampling == "uniform"
    # the damped default step; the paper's preset keeps the full step
    assert VectorQuantizer(4, 8).alternating_lr == ALTERNATING_LR == 0.1
    assert PAPER["alternating_lr"] == 1.0 and VectorQuantizer(4, 8, **PAPER).alternating_lr == 1.0
