"""The learned affine codebook's scale ``f + (1 - f)(elu(a s) + 1)``: positive, and converted from old checkpoints.

* Under Adam, a gradient that keeps pushing the scale down shrinks it by a bounded *relative* factor per
  step and never makes it reach or cross zero: no code changes sign (the linear ``1 + a s`` crossed zero in
  ``1 / (a * lr)`` steps).
* A large SGD step up cannot overflow it (it is linear above 1).
* The gradient of the scale parameter is ``a * alpha'(a s) * sum_k <dL/dc_k, w_k>`` (closed form).
* A version-1 state dict (scale ``1 + a s``, possibly negative or near zero) loads into the same effective
  codes, for any values (hypothesis); a current state dict loads unchanged.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import vqkit
from vqkit import VectorQuantizer
from vqkit.codebooks import Affine, AffineCodebook, positive_scale
from vqkit.training.checkpoint import legacy_state_dict


def test_adam_cannot_drive_the_scale_through_zero():
    torch.manual_seed(0)
    a, lr, steps = 10.0, 0.01, 400  # the linear scale 1 + a s would hit zero after 1 / (a * lr) = 10 steps
    cb = AffineCodebook(32, 4, groups=2, affine_lr=a)
    with torch.no_grad():
        cb.weight.abs_().add_(0.1)  # all codes positive, so d(sum c)/d alpha > 0: Adam lowers the scale
    opt = torch.optim.Adam([cb.scale], lr=lr)
    sign = cb().detach().sign()
    prev = cb.affine_map()[0]
    for _ in range(steps):
        opt.zero_grad()
        cb().sum().backward()
        opt.step()
        alpha = cb.affine_map()[0]
        assert (alpha > 0).all()
        # one step moves the scale by a relative factor of about exp(-a * lr) at most
        assert (alpha / prev).min() > math.exp(-1.01 * a * lr)
        prev = alpha
    assert torch.equal(cb().detach().sign(), sign)  # no code flipped
    assert float(prev.max()) < 0.01  # pushed down 100-fold, still positive
    assert float(prev.min()) >= AffineCodebook.scale_floor


def test_a_large_sgd_step_up_cannot_overflow_the_scale():
    cb = AffineCodebook(8, 3, affine_lr=10.0)
    with torch.no_grad():
        cb.weight.fill_(-1.0)
    opt = torch.optim.SGD([cb.scale], lr=100.0)  # the gradient pushes the scale up by a * lr * K = 8000 per step
    for _ in range(5):
        opt.zero_grad()
        cb().sum().backward()
        opt.step()
    alpha = cb.affine_map()[0]
    assert torch.isfinite(cb()).all() and torch.isfinite(alpha).all()
    f = AffineCodebook.scale_floor
    torch.testing.assert_close(alpha, f + (1 - f) * (1 + 10.0 * cb.scale.detach()))  # the linear branch
    assert float(alpha.min()) > 1e4


def test_scale_gradient_matches_the_closed_form():
    torch.manual_seed(1)
    a = 2.5
    cb = AffineCodebook(12, 5, groups=3, affine_lr=a)
    with torch.no_grad():
        cb.scale.normal_(0, 0.2)
        cb.shift.normal_(0, 0.2)
    upstream = torch.randn(12, 5)
    (cb() * upstream).sum().backward()
    x = a * cb.scale.detach()
    assert (x > 0).any() and (x < 0).any()  # both branches
    f = AffineCodebook.scale_floor
    alpha = f + (1 - f) * torch.where(x >= 0, 1 + x, torch.exp(x))
    slope = (1 - f) * torch.where(x >= 0, 1.0, torch.exp(x))
    torch.testing.assert_close(cb.affine_map()[0], alpha)
    w = cb.weight.detach().view(3, 4, 5)
    g = upstream.view(3, 4, 5)
    torch.testing.assert_close(cb.scale.grad, a * slope * (g * w).sum(1))
    torch.testing.assert_close(cb.shift.grad, a * g.sum(1))
    torch.testing.assert_close(cb.weight.grad, (alpha[:, None] * g).reshape(12, 5))


def _linear_codes(scale: torch.Tensor, shift: torch.Tensor, weight: torch.Tensor, a: float) -> torch.Tensor:
    g, d = scale.shape
    return ((1 + a * scale)[:, None] * weight.view(g, -1, d) + a * shift[:, None]).reshape(weight.shape)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), groups=st.sampled_from([1, 2, 4]), a=st.sampled_from([0.5, 1.0, 10.0]),
       spread=st.floats(0.01, 3.0))
def test_version_1_checkpoints_load_to_the_same_codes(seed, groups, a, spread):
    g = torch.Generator().manual_seed(seed)
    old = AffineCodebook(8, 3, groups=groups, affine_lr=a).double()
    with torch.no_grad():
        old.weight.copy_(torch.randn(8, 3, generator=g, dtype=torch.float64))
        # scales 1 + a s anywhere in (-spread, spread) around 0 and around 1: negative, tiny and positive
        old.scale.copy_((torch.rand(groups, 3, generator=g, dtype=torch.float64) * 2 - 1) * spread / a)
        old.scale[0, 0] = -1.0 / a  # exactly zero: the floor's scale, the weights absorb the rest
        old.shift.copy_(torch.randn(groups, 3, generator=g, dtype=torch.float64))
    expected = _linear_codes(old.scale.detach(), old.shift.detach(), old.weight.detach(), a)
    state = old.state_dict()
    state._metadata[""]["version"] = 1
    new = AffineCodebook(8, 3, groups=groups, affine_lr=a).double()
    new.load_state_dict(state)
    torch.testing.assert_close(new().detach(), expected, atol=1e-9, rtol=1e-9)
    assert (new.affine_map()[0] > 0).all()


def test_current_state_dict_loads_unchanged_and_old_quantizer_checkpoint_converts():
    torch.manual_seed(2)
    vq = VectorQuantizer(4, 16, codebook=Affine(lr=3.0, groups=2))
    with torch.no_grad():
        vq.codes.scale.normal_(0, 0.3)
        vq.codes.shift.normal_(0, 0.3)
    state = vq.state_dict()
    assert state._metadata["codes"]["version"] == 2
    fresh = VectorQuantizer(4, 16, codebook=Affine(lr=3.0, groups=2))
    fresh.load_state_dict(state)
    assert torch.equal(fresh.codebook, vq.codebook)
    for name in ("scale", "shift", "weight"):
        assert torch.equal(getattr(fresh.codes, name), getattr(vq.codes, name))
    # the same tensors read as a version-1 checkpoint mean c = (1 + a s) w + a b
    old = vq.state_dict()
    old._metadata["codes"]["version"] = 1
    expected = _linear_codes(vq.codes.scale.detach(), vq.codes.shift.detach(), vq.codes.weight.detach(), 3.0)
    converted = VectorQuantizer(4, 16, codebook=Affine(lr=3.0, groups=2))
    converted.load_state_dict(old)
    torch.testing.assert_close(converted.codebook, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inverse_map_round_trips_for_extreme_scales(dtype):
    cb = AffineCodebook(6, 4, affine_lr=10.0).to(dtype)
    with torch.no_grad():
        cb.scale.copy_(torch.tensor([[-3.0, -0.5, 0.5, 2000.0]]))  # alpha from the floor 1e-3 to 2e4
    values = torch.randn(6, 4)
    cb.set_codes_(torch.arange(6), values)
    alpha, beta = cb.affine_map()
    assert torch.isfinite(cb.weight).all()
    torch.testing.assert_close((alpha * cb.weight.float() + beta), values, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("release, converts", [("0.5.0", True), (None, True), ("unrecorded", True),
                                               ("0.6.0", False), ("0.10.2", False), ("1.0.0rc1", False)])
def test_checkpoints_are_read_by_the_release_that_wrote_them(tmp_path, release, converts):
    """safetensors files store no module versions: the checkpoint's recorded release decides."""
    from vqkit.training.checkpoint import STATE_FILE, load_model_weights, save_checkpoint

    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), VectorQuantizer(4, 8, codebook=Affine(lr=2.0)))
    with torch.no_grad():
        model[1].codes.scale.normal_(0, 0.4)
    path = save_checkpoint(tmp_path, 1, model, torch.optim.SGD(model.parameters(), lr=0.1))
    state = json.loads((path / STATE_FILE).read_text())
    assert state["vqkit"] == vqkit.__version__  # written by every checkpoint, whatever `extra` holds
    if release is None:
        del state["vqkit"]
    else:
        state["vqkit"] = release
    (path / STATE_FILE).write_text(json.dumps(state))
    loaded = torch.nn.Sequential(torch.nn.Linear(4, 4), VectorQuantizer(4, 8, codebook=Affine(lr=2.0)))
    load_model_weights(path, loaded)
    codes = model[1].codes
    expected = _linear_codes(codes.scale.detach(), codes.shift.detach(), codes.weight.detach(), 2.0) \
        if converts else model[1].codebook
    torch.testing.assert_close(loaded[1].codebook, expected, atol=1e-5, rtol=1e-5)
    assert (loaded[1].codes.affine_map()[0] > 0).all()


def test_a_checkpoint_without_its_state_file_is_refused_not_guessed(tmp_path):
    from vqkit.training.checkpoint import STATE_FILE, CheckpointError, load_model_weights, save_checkpoint

    model = VectorQuantizer(4, 8)
    path = save_checkpoint(tmp_path, 1, model, torch.optim.SGD(model.parameters(), lr=0.1))
    (path / STATE_FILE).unlink()
    with pytest.raises(CheckpointError, match="state.json: missing or unreadable.*affine codebook"):
        load_model_weights(path, VectorQuantizer(4, 8))
    plain = VectorQuantizer(4, 8, codebook="plain")
    path = save_checkpoint(tmp_path / "plain", 1, plain, torch.optim.SGD(plain.parameters(), lr=0.1))
    (path / STATE_FILE).unlink()
    load_model_weights(path, VectorQuantizer(4, 8, codebook="plain"))  # nothing to interpret: loads


def test_a_codebook_shared_by_two_paths_is_converted_once_and_right():
    torch.manual_seed(4)
    shared = AffineCodebook(8, 3, affine_lr=2.0)
    model = torch.nn.Module()
    model.a, model.b = shared, shared
    with torch.no_grad():
        shared.scale.normal_(0, 0.5)
    expected = _linear_codes(shared.scale.detach(), shared.shift.detach(), shared.weight.detach(), 2.0)
    state = legacy_state_dict(model, dict(model.state_dict()), "0.5.0")  # both paths stored, like safetensors
    target = torch.nn.Module()
    target.a = target.b = AffineCodebook(8, 3, affine_lr=2.0)
    target.load_state_dict(state)
    torch.testing.assert_close(target.a(), expected, atol=1e-5, rtol=1e-5)


def test_a_partial_version_1_state_dict_converts_the_scale_or_says_why_not():
    cb = AffineCodebook(8, 3, affine_lr=2.0)
    scale = torch.full((1, 3), 0.25)  # 1 + a s = 1.5: representable without the weights
    state = OrderedDict(scale=scale)
    state._metadata = {"": {"version": 1}}
    cb.load_state_dict(state, strict=False)
    torch.testing.assert_close(cb.affine_map()[0], torch.full((1, 3), 1.5))
    state = OrderedDict(scale=torch.full((1, 3), -1.0))  # 1 + a s = -1: its sign belongs in the weights
    state._metadata = {"": {"version": 1}}
    with pytest.raises(RuntimeError, match="scale: a linear scale 1 \\+ a s of -1 .*needs the codebook's weights"):
        cb.load_state_dict(state, strict=False)


def test_the_scale_keeps_its_resolution_in_bf16():
    x = torch.linspace(-8.0, 3.0, 200)
    f = AffineCodebook.scale_floor
    ref = positive_scale(x.double(), f)
    low = positive_scale(x.bfloat16(), f).double()
    assert ((low - ref).abs() / ref).max() < 0.02  # bf16 rounding, also where exp(x) is far below 1


def test_resuming_a_converted_checkpoint_restarts_the_moments_of_the_converted_parameters(tmp_path):
    from vqkit.training.checkpoint import STATE_FILE, read_checkpoint, save_checkpoint

    def make():
        torch.manual_seed(5)
        model = torch.nn.Sequential(torch.nn.Linear(4, 4), VectorQuantizer(4, 8, codebook=Affine(lr=2.0)))
        return model, torch.optim.Adam(model.parameters(), lr=1e-2)

    model, opt = make()
    model[1](model[0](torch.randn(32, 4))).loss.backward()
    opt.step()
    path = save_checkpoint(tmp_path, 1, model, opt)
    for release, reset in (("0.6.0", False), ("0.5.0", True)):
        state = json.loads((path / STATE_FILE).read_text())
        state["vqkit"] = release
        (path / STATE_FILE).write_text(json.dumps(state))
        fresh, fresh_opt = make()
        read_checkpoint(path, fresh, fresh_opt).apply(fresh, fresh_opt)
        codes = fresh[1].codes
        assert (codes.scale in fresh_opt.state) != reset and (codes.weight in fresh_opt.state) != reset
        assert codes.shift in fresh_opt.state and fresh[0].weight in fresh_opt.state
