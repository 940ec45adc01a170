import copy

import pytest
import torch
import torch.nn.functional as F

from vqkit import PLAIN_STE, VectorQuantizer
from vqkit.codebooks import EMA, Affine, EMACodebook
from vqkit.codebooks import assignment_sums
from vqkit.losses import masked_mse
from vqkit.quantizers.vector import DEAD_CODE_RAMP, RAMP_DONE


def make(dim=8, k=16, **kw):
    torch.manual_seed(0)
    return VectorQuantizer(dim, k, **{**PLAIN_STE, **kw})


def per_code_sum(values, indices, k):
    return torch.zeros(k, values.shape[-1]).index_add_(0, indices, values)


# ---------------------------------------------------------------------------------------------
# contract
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        {},
        dict(PLAIN_STE),
        dict(codebook="running_affine"),
        dict(metric="cosine"),
        dict(codebook_dim=4),
        dict(PLAIN_STE, codebook=EMA(0.9), kmeans_init=True),
        dict(estimator="rotation"),
        dict(codebook=Affine(groups=4)),
    ],
)
def test_decode_equals_forward_in_train_and_eval(kw):
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 16, **kw)
    x = torch.randn(64, 8)
    for _ in range(3):
        out = vq(x)  # training: maintenance + alternating steps happen before the output is formed
    # a training call's output is the codebook it used; the EMA codebook folds the call's statistics in
    # afterwards (VQ-VAE-2 order), so decode shows the updated codes
    if not isinstance(vq.codes, EMACodebook):
        torch.testing.assert_close(out.quantized, vq.decode(out.indices), rtol=0, atol=1e-6)
    vq.eval()
    out = vq(x)
    assert torch.equal(out.quantized, vq.decode(out.indices))
    torch.testing.assert_close(vq.codebook[out.indices], out.quantized, rtol=0, atol=1e-6)


def test_channel_dim_matches_channel_last():
    torch.manual_seed(0)
    vq_last = VectorQuantizer(6, 32)
    vq_first = copy.deepcopy(vq_last)
    vq_first.channel_dim = 1
    x = torch.randn(2, 6, 5, 7)
    torch.manual_seed(1)  # same k-means seeds for both
    a = vq_first(x)
    torch.manual_seed(1)
    b = vq_last(x.movedim(1, -1))
    assert torch.equal(a.indices, b.indices)
    assert torch.equal(a.quantized, b.quantized.movedim(-1, 1))
    assert torch.equal(a.loss, b.loss)
    vq_first.eval()
    out = vq_first(x)
    assert torch.equal(vq_first.decode(out.indices), out.quantized)


def test_bf16_autocast_keeps_dtype_and_assignment():
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 64).eval()
    x = torch.randn(256, 16)
    ref = vq(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = vq(x)
    assert out.quantized.dtype == torch.float32
    assert torch.equal(out.indices, ref.indices)
    outb = vq(x.bfloat16())
    assert outb.quantized.dtype == torch.bfloat16


# ---------------------------------------------------------------------------------------------
# gradients against the formulas
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("nu", [0.0, 0.7])
def test_sync_update_gradients(nu):
    vq = make(sync_nu=nu)
    x = torch.randn(40, 8, requires_grad=True)
    upstream = torch.randn(40, 8)
    out = vq(x)
    (out.quantized * upstream).sum().backward()
    torch.testing.assert_close(x.grad, upstream)  # the input gets the identity gradient
    expected = nu * per_code_sum(upstream, out.indices, 16)
    grad = vq.codes.weight.grad
    torch.testing.assert_close(torch.zeros(16, 8) if grad is None else grad, expected)


def test_loss_weights_give_exactly_the_two_terms():
    vq = make(commitment_weight=0.3, codebook_weight=1.7)
    x = torch.randn(50, 8, requires_grad=True)
    out = vq(x)
    q = vq.codes.weight.detach()[out.indices]
    mse = F.mse_loss(x.detach(), q)
    torch.testing.assert_close(out.loss, 2.0 * mse)
    out.loss.backward()
    n = x.numel()
    torch.testing.assert_close(x.grad, 0.3 * 2 * (x.detach() - q) / n)
    torch.testing.assert_close(vq.codes.weight.grad, per_code_sum(1.7 * 2 * (q - x.detach()) / n, out.indices, 16))


@pytest.mark.parametrize("groups", [1, 4])
def test_affine_gradients_are_dense_and_scaled(groups):
    a = 3.0
    vq = make(k=16, codebook=Affine(lr=a, groups=groups), sync_nu=1.0)
    with torch.no_grad():
        vq.codes.scale.normal_()
        vq.codes.shift.normal_()
    x = torch.randn(10, 8)  # only a few codes are selected
    upstream = torch.randn(10, 8)
    out = vq(x)
    (out.quantized * upstream).sum().backward()
    g_code = per_code_sum(upstream, out.indices, 16).view(groups, -1, 8)  # dL/dc_k
    w = vq.codes.weight.detach().view(groups, -1, 8)
    torch.testing.assert_close(vq.codes.shift.grad, a * g_code.sum(1))
    x = a * vq.codes.scale.detach()
    f = vq.codes.scale_floor
    alpha = (f + (1 - f) * torch.where(x >= 0, 1 + x, torch.exp(x)))[:, None]  # f + (1 - f)(elu(x) + 1)
    slope = (1 - f) * torch.where(x >= 0, 1.0, torch.exp(x))
    torch.testing.assert_close(vq.codes.scale.grad, a * slope * (g_code * w).sum(1))
    torch.testing.assert_close(vq.codes.weight.grad, (alpha * g_code).reshape(16, 8))
    # one SGD step on the shared parameters moves every code, also the unselected ones
    before = vq.effective_codes().detach().clone()
    with torch.no_grad():
        vq.codes.scale -= 0.1 * vq.codes.scale.grad
        vq.codes.shift -= 0.1 * vq.codes.shift.grad
    unused = torch.ones(16, dtype=torch.bool)
    unused[out.indices] = False
    group_used = (~unused).view(groups, -1).any(1).repeat_interleave(16 // groups)
    moved = (vq.effective_codes().detach() - before).abs().sum(1) > 0
    assert (unused & group_used).any() and moved[group_used].all()


def test_rotation_trick_gradient_matches_formula():
    vq = make(estimator="rotation")
    x = torch.randn(6, 8, requires_grad=True)
    upstream = torch.randn(6, 8)
    out = vq(x)
    (out.quantized * upstream).sum().backward()
    q = vq.codes.weight.detach()[out.indices]
    for i in range(6):
        e, c = x[i].detach(), q[i]
        e_hat, q_hat = e / e.norm(), c / c.norm()
        r = (e_hat + q_hat) / (e_hat + q_hat).norm()
        rot = torch.eye(8) - 2 * torch.outer(r, r) + 2 * torch.outer(q_hat, e_hat)
        lam = c.norm() / e.norm()
        torch.testing.assert_close(lam * rot @ e, c, atol=1e-5, rtol=1e-5)  # R e = q
        torch.testing.assert_close(x.grad[i], lam * rot.T @ upstream[i], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# codebook maintenance
# ---------------------------------------------------------------------------------------------


def codebook_loss(vq, z, indices):
    return masked_mse(z, vq.effective_codes().detach()[indices]).item()


@pytest.mark.parametrize("codebook", ["plain", Affine(lr=2.0), "running_affine"])
def test_alternating_step_lowers_codebook_loss(codebook):
    vq = make(codebook=codebook)
    z = torch.randn(256, 8) * 2 + 3  # far from the N(0, 1) codebook
    indices = vq.search(z, vq.effective_codes()).indices
    before = codebook_loss(vq, z, indices)
    counts, sums = assignment_sums(z, indices, None, 16)
    vq.codes.alternating_step_(counts, sums, lr=0.5)
    after = codebook_loss(vq, z, indices)
    assert after < before * 0.9


@pytest.mark.parametrize("kind", ["plain", "learned", "learned-groups", "running"])
def test_alternating_step_matches_the_effective_space_formula(kind):
    """Shift block (learned affine: beta += lr * mean residual), then used codes c += lr * (mean - c),
    unused codes untouched; computed here directly on the effective codes."""
    from vqkit.codebooks import AffineCodebook, Codebook, RunningAffineCodebook

    torch.manual_seed(0)
    k, d, lr = 12, 5, 0.7
    if kind == "plain":
        cb = Codebook(k, d)
    elif kind == "running":
        cb = RunningAffineCodebook(k, d, groups=2)
        cb.update_statistics_(torch.randn(50, d) * 3 + 1, None)
    else:
        cb = AffineCodebook(k, d, groups=2 if kind == "learned-groups" else 1, affine_lr=3.0)
        with torch.no_grad():
            cb.scale.normal_(0, 0.1)
            cb.shift.normal_(0, 0.1)
    z = torch.randn(40, d) * 2 + 1
    indices = torch.randint(0, k - 3, (40,))  # the last three codes stay unused
    counts, sums = assignment_sums(z, indices, None, k)
    c = cb().detach().clone()
    if isinstance(cb, AffineCodebook):
        g = cb.groups
        res = (z - c[indices]).view(40, d)
        grp = cb.group_of(indices)
        shift = torch.stack([res[grp == j].sum(0) / max(int((grp == j).sum()), 1) for j in range(g)])
        c = c + lr * shift.repeat_interleave(k // g, 0)
    mean = sums / counts.clamp_min(1)[:, None]
    expected = torch.where(counts[:, None] > 0, c + lr * (mean - c), c)
    raw_unused = cb.weight.detach()[-3:].clone()
    cb.alternating_step_(counts, sums.clone(), lr)
    torch.testing.assert_close(cb().detach(), expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(cb.weight.detach()[-3:], raw_unused)


def test_alternating_output_uses_updated_codebook():
    vq = make(codebook="affine", alternating_steps=2, alternating_lr=1.0, alternating_reassign=True)
    z = torch.randn(256, 8) * 2 + 3
    before = codebook_loss(vq, z, vq.search(z, vq.effective_codes()).indices)
    out = vq(z)
    codes_after = vq.effective_codes().detach()
    torch.testing.assert_close(out.quantized, codes_after[out.indices])
    assert torch.equal(out.indices, vq.search(z, codes_after).indices)  # re-assigned after the steps
    assert codebook_loss(vq, z, out.indices) < 0.5 * before
    assert vq.codes.shift.abs().sum() > 0  # the affine block moved


@pytest.mark.parametrize("affine", [None, "learned", "running"])
def test_kmeans_init_places_codes_on_data(affine):
    torch.manual_seed(0)
    centers = torch.randn(4, 8) * 5
    z = (centers[:, None] + 0.01 * torch.randn(4, 100, 8)).reshape(-1, 8)
    codebook = {None: "plain", "learned": Affine(lr=2.0), "running": "running_affine"}[affine]
    vq = VectorQuantizer(8, 4, **{**PLAIN_STE, "kmeans_init": True, "codebook": codebook})
    if affine == "learned":
        with torch.no_grad():  # a non-identity transform must be inverted when writing the codes
            vq.codes.scale.fill_(0.3)
            vq.codes.shift.fill_(-0.2)
    assert not bool(vq.initialized)
    vq(z)
    assert bool(vq.initialized)
    d = torch.cdist(centers, vq.codebook)
    tol = 0.05 if affine != "running" else 1.0  # running affine re-matches moments after the write
    assert (d.min(1).values < tol).all()
    if affine == "running":
        vq.eval()
        assert vq(z).stats["usage"] == 1.0


@pytest.mark.parametrize("affine", [None, "learned"])
def test_dead_code_is_reseeded_after_starving(affine):
    vq = make(k=8, dead_code_steps=3, codebook=Affine(lr=2.0) if affine else "plain")
    with torch.no_grad():
        vq.codes.weight[7] = 100.0  # far away: never selected
        if affine:
            vq.codes.scale.fill_(0.5)
            vq.codes.shift.fill_(0.1)
    z = torch.randn(64, 8)
    for step in range(3):
        vq(z)
        assert vq.codebook[7].abs().min() > 50
    assert vq.code_age[7] == 3
    vq(z)  # the fourth step re-seeds it from this batch (in effective space)
    dist = (z - vq.codebook[7]).norm(dim=1).min()
    assert dist < 0.05 * z.norm(dim=1).max()
    assert vq.code_age[7] <= 1


def test_dead_code_threshold_recycles_rarely_used_codes():
    """A code used by one vector per step is alive for ``dead_code_steps`` but falls under a usage
    threshold of 2 once its running count (EMA, decay 0.8) has settled; the threshold alone also works."""
    for steps in (0, 50):
        vq = make(dim=2, k=3, dead_code_steps=steps, dead_code_threshold=2.0)
        with torch.no_grad():
            vq.codes.weight.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]))
        many = torch.randn(30, 2) * 0.01
        z = torch.cat([many, many + torch.tensor([10.0, 0.0]), torch.tensor([[0.0, 10.0]])])
        vq(z)  # first step: the running counts copy (30, 30, 1): code 2 is already under the threshold
        torch.testing.assert_close(vq.usage_ema, torch.tensor([30.0, 30.0, 1.0]))
        vq(z)  # ... so this step's maintenance re-seeds it from the batch
        assert (vq.codebook[2] - torch.tensor([0.0, 10.0])).norm() > 1.0
        assert vq.usage_ema[2] >= 0.8 * 2.0
        assert (vq.codebook[:2] - torch.tensor([[0.0, 0.0], [10.0, 0.0]])).norm() < 0.1  # busy codes stay
    with pytest.raises(ValueError, match="dead_code_threshold"):
        VectorQuantizer(2, 3, dead_code_threshold=-1.0)
    assert "usage_ema" not in VectorQuantizer(2, 3).state_dict()  # off by default: no extra state


def test_ema_update_matches_hand_computation():
    vq = VectorQuantizer(2, 2, **{**PLAIN_STE, "codebook": EMA(0.5)})
    with torch.no_grad():
        vq.codes.set_codes_(torch.arange(2), torch.tensor([[0.0, 0.0], [10.0, 10.0]]))
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [9.0, 9.0]])
    out = vq(z)
    assert out.indices.tolist() == [0, 0, 1]
    torch.testing.assert_close(out.quantized, torch.tensor([[0.0, 0.0], [0.0, 0.0], [10.0, 10.0]]))
    # N = 0.5 * 1 + 0.5 * [2, 1] = [1.5, 1.0]; M = 0.5 * w + 0.5 * sums
    n = torch.tensor([1.5, 1.0])
    m = 0.5 * torch.tensor([[0.0, 0.0], [10.0, 10.0]]) + 0.5 * torch.tensor([[1.0, 1.0], [9.0, 9.0]])
    eps = vq.codes.eps
    smoothed = (n + eps) / (n.sum() + 2 * eps) * n.sum()
    torch.testing.assert_close(vq.codebook, m / smoothed[:, None])  # the update is visible at once ...
    assert vq.codes.pending == 1.0  # ... and folded into the buffers by the next training call
    vq.codes.commit_()
    torch.testing.assert_close(vq.codes.cluster_size, n)
    torch.testing.assert_close(vq.codes.embed_sum, m)
    torch.testing.assert_close(vq.codes.weight, m / smoothed[:, None])
    assert vq.codes.pending == 0.0
    assert not any(p.requires_grad for p in vq.codes.parameters())


def test_running_affine_matches_embedding_moments():
    vq = make(codebook="running_affine")
    z = torch.randn(1000, 8) * torch.linspace(0.5, 3, 8) + torch.linspace(-2, 2, 8)
    vq(z)  # the first update copies the batch moments
    c = vq.codebook
    torch.testing.assert_close(c.mean(0), z.mean(0), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(c.var(0, unbiased=False), z.var(0, unbiased=False), atol=1e-3, rtol=1e-3)
    z2 = z * 2
    vq(z2)  # later updates are EMAs with momentum 0.1
    torch.testing.assert_close(vq.codes.z_mean, 0.9 * z.mean(0) + 0.1 * z2.mean(0), atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# masks
# ---------------------------------------------------------------------------------------------


def test_masked_positions_affect_nothing():
    torch.manual_seed(0)
    x = torch.randn(4, 10, 8)
    mask = torch.ones(4, 10, dtype=torch.bool)
    mask[:, 6:] = False
    x_other = x.clone()
    x_other[~mask] = 1000.0  # garbage in the padding
    kw = dict(codebook="running_affine", dead_code_steps=1)
    a, b = VectorQuantizer(8, 16, **kw), VectorQuantizer(8, 16, **kw)
    b.load_state_dict(a.state_dict())
    for step in range(3):
        torch.manual_seed(step)  # k-means / re-seeding draw from the global RNG
        oa = a(x, mask=mask)
        torch.manual_seed(step)
        ob = b(x_other, mask=mask)
    torch.testing.assert_close(oa.loss, ob.loss)
    for k in oa.stats:
        torch.testing.assert_close(oa.stats[k], ob.stats[k])
    for (name, ta), tb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(ta, tb, msg=name)
    assert torch.equal(oa.indices[mask], ob.indices[mask])


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,exc,pattern",
    [
        (dict(codebook_size=0), ValueError, "codebook_size"),
        (dict(metric="l1"), ValueError, "metric"),
        (dict(codebook="lienar"), ValueError, "codebook"),
        (dict(estimator="gumbel"), ValueError, "estimator"),
        (dict(codebook=Affine(groups=3)), ValueError, "codebook: groups"),
        (dict(alternating_lr=2.0), ValueError, "alternating_lr"),
        (dict(sync_nu=-1.0), ValueError, "sync_nu"),
        (dict(codebook="ema", sync_nu=1.0), ValueError, "codebook: an 'ema' codebook.*sync_nu=1.0"),
        (dict(codebook="ema", alternating_steps=1), ValueError, "alternating_steps=1"),
        (dict(alternating_steps=0, alternating_lr=0.5), ValueError, "alternating_lr: only used with"),
        (dict(kmeans_init=False, kmeans_iters=3), ValueError, "kmeans_iters: only used with"),
        (dict(sync_nu=float("nan")), ValueError, "sync_nu: expected a finite float"),
        (dict(commitment_weight=float("inf")), ValueError, "commitment_weight"),
        (dict(dead_code_threshold=float("inf")), ValueError, "dead_code_threshold"),
        (dict(kmeans_init=1), TypeError, "kmeans_init: expected True or False"),
    ],
)
def test_bad_construction_is_named(kwargs, exc, pattern):
    args = dict(dim=8, codebook_size=16)
    args.update(kwargs)
    with pytest.raises(exc, match=pattern):
        VectorQuantizer(args.pop("dim"), args.pop("codebook_size"), **args)


def test_bad_input_is_named():
    vq = VectorQuantizer(8, 16)
    with pytest.raises(ValueError, match=r"x: expected at least 2 dims"):
        vq(torch.randn(8))
    with pytest.raises(ValueError, match=r"x: expected size 8 on channel_dim=-1, got shape \(4, 7\)"):
        vq(torch.randn(4, 7))
    with pytest.raises(TypeError, match="x: expected a floating-point tensor"):
        vq(torch.ones(4, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="x: expected finite values, got 1 NaN/Inf"):
        bad = torch.randn(4, 8)
        bad[1, 2] = float("nan")
        vq(bad)
    with pytest.raises(ValueError, match="mask: expected shape"):
        vq(torch.randn(4, 8), mask=torch.ones(5, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask: expected dtype torch.bool"):
        vq(torch.randn(4, 8), mask=torch.ones(4))
    with pytest.raises(TypeError, match="indices"):
        vq.decode(torch.zeros(3))


# ---------------------------------------------------------------------------------------------
# dead_code_steps="auto": the window grows with K / vectors per call
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k,n,valid,window", [(16, 64, 64, 2), (64, 64, 64, 8), (256, 48, 48, 43), (1000, 300, 7, 1143),
                                              (3, 16, 16, 2), (3, 17, 17, 1), (512, 6272, 6272, 1),
                                              (1024, 6272, 6272, 1), (2048, 6272, 6272, 3), (8192, 6272, 6272, 10),
                                              (65536, 6272, 6272, 84)])
def test_auto_window_is_eight_uses_of_a_mean_code(k, n, valid, window):
    """After a training call past the ramp the window is round(8 K / n) (halves up, >= 1), n the call's valid
    (unmasked) vectors: the calls in which a code of mass 1 / K would be chosen 8 times."""
    vq = VectorQuantizer(4, k, kmeans_init=False)
    assert vq.dead_code_steps == "auto" and int(vq.dead_code_window) == 1
    vq.training_calls.fill_(RAMP_DONE)
    mask = torch.arange(n) < valid
    vq(torch.randn(n, 4), mask=mask)
    expected = max(1, (16 * k + valid) // (2 * valid))
    assert expected == window
    assert int(vq.dead_code_window) == expected
    vq.eval()
    vq(torch.randn(3 * n, 4))  # eval calls leave it alone
    assert int(vq.dead_code_window) == expected


def test_auto_window_replaces_only_codes_unused_that_long():
    """K = 64, 32 vectors per call: window 16. A starved code survives 15 calls and is re-seeded at the 17th
    (its age reaches 16 after the 16th call; the next call's maintenance re-seeds it)."""
    torch.manual_seed(0)
    vq = VectorQuantizer(2, 64, **{**PLAIN_STE, "dead_code_steps": "auto"})
    vq.training_calls.fill_(RAMP_DONE)
    with torch.no_grad():
        vq.codes.weight[5] = 100.0  # never selected
    z = torch.randn(32, 2)
    for _ in range(16):
        vq(z)
        assert vq.codebook[5].abs().min() > 50
    assert int(vq.dead_code_window) == 16 and int(vq.code_age[5]) == 16
    vq(z)
    assert (z - vq.codebook[5]).norm(dim=1).min() < 0.1


def test_auto_equals_every_call_replacement_while_batches_are_large():
    """With n > 16 K / 3 vectors per call the window stays 1: identical to dead_code_steps=1, step for step."""
    outs = []
    for steps in ("auto", 1):
        torch.manual_seed(0)
        vq = VectorQuantizer(4, 16, dead_code_steps=steps)
        opt = torch.optim.Adam(vq.parameters(), 1e-2)
        gen = torch.Generator().manual_seed(1)
        run = []
        for _ in range(6):
            z = torch.randn(96, 4, generator=gen) * 2
            out = vq(z)
            out.loss.backward()
            opt.step()
            opt.zero_grad()
            run.append((out.indices.clone(), vq.codebook.detach().clone()))
        outs.append(run)
    for (ia, ca), (ib, cb) in zip(*outs):
        assert torch.equal(ia, ib)
        torch.testing.assert_close(ca, cb)


def test_auto_window_ramps_in_over_the_first_calls():
    """At the t-th training call the "auto" window is min(round(8 K / n), 1 + t // DEAD_CODE_RAMP): K = 256,
    n = 32 (coverage window 64) ramps 1, 1, ..., 2, ... and reaches 64 at call 630. A fixed window does not ramp."""
    vq = VectorQuantizer(4, 256, kmeans_init=False)
    fixed = VectorQuantizer(4, 256, kmeans_init=False, dead_code_steps=20)
    z = torch.randn(32, 4)
    for t in range(1, 3 * DEAD_CODE_RAMP + 2):
        vq(z)
        fixed(z)
        assert int(vq.training_calls) == t and int(vq.dead_code_window) == 1 + t // DEAD_CODE_RAMP, t
        assert int(fixed.dead_code_window) == 20
    vq.eval()
    vq(z)  # eval calls count nothing
    assert int(vq.training_calls) == 3 * DEAD_CODE_RAMP + 1
    vq.train()
    vq.training_calls.fill_(64 * DEAD_CODE_RAMP - 2)
    vq(z)
    assert int(vq.dead_code_window) == 64
    vq(z)
    assert int(vq.dead_code_window) == 64  # capped by the coverage rule


def test_the_ramp_replaces_stranded_codes_early():
    """Early in training a code unused for a few calls is re-seeded at once: with the ramp a starved code of a
    K = 64, n = 32 codebook (window 16 after the ramp) is re-seeded after 1 + 1 // 10 = 1 call, not 16."""
    torch.manual_seed(0)
    vq = VectorQuantizer(2, 64, **{**PLAIN_STE, "dead_code_steps": "auto"})
    with torch.no_grad():
        vq.codes.weight[5] = 100.0
    z = torch.randn(32, 2)
    vq(z)
    vq(z)
    assert (z - vq.codebook[5]).norm(dim=1).min() < 0.1


SETTLE = 10  # settle_calls of the measurements: training calls 2-11


def _moved_call(vq: VectorQuantizer, calls_before: int | None = None, mask: torch.Tensor | None = None):
    """A call on vectors that moved off the k-means codes of the first call (the encoder after its first
    optimizer steps), optionally with ``training_calls`` set first."""
    if calls_before is not None:
        vq.training_calls.fill_(calls_before)
    torch.manual_seed(2)
    return vq(torch.randn(512, 4) * 1.5 + 3.0, mask=mask)


def _initialized(**kwargs) -> VectorQuantizer:
    torch.manual_seed(0)
    vq = VectorQuantizer(4, 64, **kwargs)
    vq(torch.randn(512, 4))  # the k-means init; training_calls = 1
    return vq


@pytest.mark.parametrize("other", [{}, dict(dead_code_steps=1), dict(dead_code_steps=2), dict(dead_code_steps=0)])
def test_settling_reseeds_the_codes_a_moved_batch_leaves_unused(other):
    """With settle_calls, training calls 2 .. 1 + settle_calls re-seed before the assignment every code the
    call's vectors would not choose (3 rounds): the call uses (nearly) every code and quantizes with a far
    smaller error than without it (the default), where replacement only re-seeds codes unused in the previous
    call."""
    settled = _moved_call(_initialized(settle_calls=SETTLE, **other))
    plain = _moved_call(_initialized(**other))
    assert float(settled.stats["usage"]) > 0.95
    assert float(plain.stats["usage"]) < 0.5
    assert float(settled.stats["vq_mse"]) < 0.25 * float(plain.stats["vq_mse"])


@pytest.mark.parametrize("calls_before,settles", [(1, True), (SETTLE, True), (SETTLE + 1, False), (RAMP_DONE, False)])
def test_settling_runs_on_training_calls_two_to_one_plus_settle_calls(calls_before, settles):
    out = _moved_call(_initialized(settle_calls=SETTLE), calls_before)
    assert (float(out.stats["usage"]) > 0.95) == settles


def test_settling_resumes_with_a_checkpoint_of_its_calls():
    """Loading a checkpoint written during the settling calls continues them, even in a module that was past
    them; a checkpoint from before the call counter existed (vqkit < 0.4.0) is past them."""
    early = _initialized(settle_calls=SETTLE).state_dict()
    late = _initialized(settle_calls=SETTLE)
    _moved_call(late, SETTLE + 1)
    late.load_state_dict(early)
    assert float(_moved_call(late).stats["usage"]) > 0.95
    old = {k: v for k, v in early.items() if k not in ("dead_code_window", "training_calls")}
    before = VectorQuantizer(4, 64, settle_calls=SETTLE)
    before.load_state_dict(old)
    assert float(_moved_call(before).stats["usage"]) < 0.5


def test_settling_ignores_masked_rows():
    """Padding rows neither keep a code alive nor seed one."""
    vq = _initialized(settle_calls=SETTLE)
    mask = torch.arange(512) % 4 != 0
    torch.manual_seed(2)
    x = torch.randn(512, 4) * 1.5 + 3.0
    x[~mask] = 500.0
    out = vq(x, mask=mask)
    assert float(out.stats["usage"]) > 0.95
    assert vq.codebook.abs().max() < 50


@pytest.mark.parametrize("bad,err", [(-1, ValueError), (1.5, TypeError), (True, TypeError), ("10", TypeError)])
def test_settle_calls_rejects_bad_values(bad, err):
    with pytest.raises(err, match="settle_calls"):
        VectorQuantizer(4, 8, settle_calls=bad)


def test_auto_window_survives_a_checkpoint_and_old_checkpoints_load():
    vq = VectorQuantizer(4, 256, kmeans_init=False)
    vq.training_calls.fill_(RAMP_DONE)
    vq(torch.randn(32, 4))
    assert int(vq.dead_code_window) == 64
    fresh = VectorQuantizer(4, 256, kmeans_init=False)
    fresh.load_state_dict(vq.state_dict())
    assert int(fresh.dead_code_window) == 64  # a resumed run keeps its window, not 1
    assert int(fresh.training_calls) == RAMP_DONE + 1  # and its place in the ramp
    old = {k: v for k, v in vq.state_dict().items() if k not in ("dead_code_window", "training_calls")}  # < 0.4.0
    before = VectorQuantizer(4, 256, kmeans_init=False)
    before.load_state_dict(old)
    assert int(before.training_calls) == RAMP_DONE  # a checkpoint from before the ramp is past it
    before(torch.randn(32, 4))
    assert int(before.dead_code_window) == 64
    assert int(VectorQuantizer(4, 8, dead_code_steps=5).dead_code_window) == 5


@pytest.mark.parametrize("bad,err", [("fast", ValueError), ("", ValueError), (-1, ValueError), (1.5, TypeError),
                                     (True, TypeError)])
def test_dead_code_steps_rejects_bad_values(bad, err):
    with pytest.raises(err, match="dead_code_steps"):
        VectorQuantizer(4, 8, dead_code_steps=bad)


def test_a_fixed_window_is_the_argument_not_the_checkpoint():
    """Resuming with another fixed dead_code_steps uses the new one (the checkpoint does not undo it)."""
    saved = VectorQuantizer(4, 8, dead_code_steps=20).state_dict()
    vq = VectorQuantizer(4, 8, dead_code_steps=5)
    vq.load_state_dict(saved)
    assert int(vq.dead_code_window) == 5
    auto = VectorQuantizer(4, 8)
    auto.load_state_dict({**auto.state_dict(), "dead_code_window": torch.tensor(7)})
    assert int(auto.dead_code_window) == 7  # "auto" continues from the checkpoint's window

