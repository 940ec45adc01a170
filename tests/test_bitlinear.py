"""BitLinear (BitNet b1.58 absmean / Reloaded median): formulas, STE gradients, packed inference, model surgery."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vqkit.ternary import (
    BitLinear,
    freeze_model,
    pack_ternary,
    packed_size_report,
    quantize_activations,
    quantize_model,
    ternarize,
    ternary_matmul,
    unpack_ternary,
)


def reference_forward(layer: BitLinear, x: torch.Tensor) -> torch.Tensor:
    """The papers' formula written out: y = (x_q W_q^T) / (s_w s_x) + b, s_w = 1 / gamma."""
    xn = F.layer_norm(x, (layer.in_features,), eps=1e-5) if layer.norm else x
    s_x = 127 / xn.abs().amax(-1, keepdim=True)
    x_q = torch.clamp(torch.round(xn * s_x), -128, 127)
    w = layer.weight.detach()
    a = w.abs().flatten()
    gamma = a.mean() if layer.scale == "absmean" else a.sort().values[(a.numel() - 1) // 2]
    w_q = torch.clamp(torch.round(w / (gamma + layer.eps)), -1, 1)
    y = (x_q @ w_q.t()) * gamma / s_x
    return y if layer.bias is None else y + layer.bias.detach()


@pytest.mark.parametrize("scale", ["absmean", "median"])
@pytest.mark.parametrize("norm", [True, False])
def test_training_forward_matches_the_formula(scale, norm):
    torch.manual_seed(0)
    layer = BitLinear(48, 24, scale=scale, norm=norm)
    x = torch.randn(3, 7, 48)
    torch.testing.assert_close(layer(x), reference_forward(layer, x), rtol=1e-5, atol=1e-5)


def test_quantized_weights_are_minus_zero_plus_gamma():
    torch.manual_seed(0)
    layer = BitLinear(64, 32)
    wq = layer.quantized_weight().detach()
    gamma = layer.weight.detach().abs().mean()
    values = set(wq.unique().tolist())
    assert values == {-gamma.item(), 0.0, gamma.item()}
    # a zero weight matrix stays zero (eps guards the division)
    with torch.no_grad():
        layer.weight.zero_()
    assert torch.all(layer.quantized_weight() == 0)


def test_median_and_absmean_scales_differ_as_specified():
    w = torch.tensor([[0.1, -0.2, 0.3, -0.4, 10.0]])
    wq_mean, g_mean = ternarize(w, "absmean", eps=1e-5)
    wq_med, g_med = ternarize(w, "median", eps=1e-5)
    assert g_mean.item() == pytest.approx(2.2) and g_med.item() == pytest.approx(0.3)
    assert wq_mean.tolist() == [[0, 0, 0, 0, 1]]  # the outlier inflates mean|W|: most weights -> 0
    assert wq_med.tolist() == [[0, -1, 1, -1, 1]]  # 0.2 / 0.3 rounds to 1; 0.1 / 0.3 to 0
    # even count: torch.median's lower middle value
    _, g_even = ternarize(torch.tensor([0.1, 0.2, 0.3, 0.4]), "median")
    assert g_even.item() == pytest.approx(0.2)
    layer = BitLinear(5, 1, bias=False, scale="median")
    with torch.no_grad():
        layer.weight.copy_(w)
    assert torch.allclose(layer.quantized_weight(), torch.tensor([[0, -0.3, 0.3, -0.3, 0.3]]))


def test_activation_quantization_per_row():
    x = torch.tensor([[0.5, -1.0, 0.25], [2.0, 1.0, -0.01], [0.0, 0.0, 0.0]])
    x_q, s_x = quantize_activations(x)
    assert s_x[:2, 0].tolist() == [127.0, 63.5]
    assert x_q.tolist() == [[64, -127, 32], [127, 64, -1], [0, 0, 0]]  # round half to even: 63.5 -> 64
    assert torch.all(x_q.abs() <= 127)


@pytest.mark.parametrize("scale", ["absmean", "median"])
def test_ste_gradients_equal_a_plain_linear_at_the_quantized_point(scale):
    torch.manual_seed(0)
    layer = BitLinear(32, 16, scale=scale)
    x = torch.randn(10, 32, requires_grad=True)
    g = torch.randn(10, 16)
    layer(x).backward(g)

    # plain linear evaluated at the quantized activations and weights
    xr = x.detach().clone().requires_grad_()
    xn = F.layer_norm(xr, (32,), eps=1e-5)
    x_q, s_x = quantize_activations(xn)
    x_fq = (x_q / s_x).requires_grad_()
    w_fq = layer.quantized_weight().detach().requires_grad_()
    b = layer.bias.detach().clone().requires_grad_()
    F.linear(x_fq, w_fq, b).backward(g)
    torch.testing.assert_close(layer.weight.grad, w_fq.grad, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(layer.bias.grad, b.grad)
    torch.testing.assert_close(layer.weight.grad, g.t() @ x_fq.detach(), rtol=1e-5, atol=1e-6)
    # activations: identity through the quantizer, then the LayerNorm backward
    xn.backward(x_fq.grad)
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(4, 3), (7, 5), (1, 1), (33, 17)])
def test_pack_unpack_round_trip(shape):
    torch.manual_seed(0)
    w = torch.randint(-1, 2, shape).float()
    packed = pack_ternary(w)
    assert packed.dtype == torch.uint8 and packed.numel() == (w.numel() + 3) // 4
    out = unpack_ternary(packed, shape)
    assert out.dtype == torch.int8 and torch.equal(out.float(), w)


def test_pack_layout_and_errors():
    # 4 weights per byte, weight k at bits 2k as w + 1
    assert pack_ternary(torch.tensor([-1, 0, 1, 1])).tolist() == [0 | 1 << 2 | 2 << 4 | 2 << 6]
    with pytest.raises(ValueError, match=r"w_q: expected only values in \{-1, 0, 1\}"):
        pack_ternary(torch.tensor([0.0, 2.0]))
    with pytest.raises(ValueError, match="packed: expected uint8 of shape"):
        unpack_ternary(torch.zeros(3, dtype=torch.uint8), (4, 4))


def test_ternary_matmul_is_exact():
    torch.manual_seed(0)
    x = torch.randint(-128, 128, (9, 3000), dtype=torch.int8)
    w = torch.randint(-1, 2, (11, 3000), dtype=torch.int8)
    exact = x.long() @ w.long().t()
    assert torch.equal(ternary_matmul(x, w).long(), exact)


@pytest.mark.parametrize("scale", ["absmean", "median"])
@pytest.mark.parametrize("bias", [True, False])
def test_frozen_inference_equals_training_forward(scale, bias):
    torch.manual_seed(0)
    layer = BitLinear(96, 40, bias=bias, scale=scale)
    x = 3 * torch.randn(2, 5, 96)
    y_train = layer(x).detach()
    layer.freeze()
    assert layer.frozen and layer.weight is None
    assert set(layer.state_dict()) == ({"packed_weight", "weight_scale"} | ({"bias"} if bias else set()))
    assert layer.packed_weight.dtype == torch.uint8 and layer.packed_weight.numel() == 96 * 40 // 4
    y_frozen = layer(x)
    torch.testing.assert_close(y_frozen, y_train, rtol=1e-5, atol=1e-5)
    # a frozen state dict loads into a fresh layer after freeze()
    other = BitLinear(96, 40, bias=bias, scale=scale).freeze()
    other.load_state_dict(layer.state_dict())
    assert torch.equal(other(x), y_frozen)
    # unfreeze rebuilds a latent weight that ternarizes to the same (W_q, gamma): same training forward
    layer.unfreeze()
    assert not layer.frozen and isinstance(layer.weight, nn.Parameter)
    torch.testing.assert_close(layer(x), y_train, rtol=1e-5, atol=1e-5)


def test_freeze_keep_latent_unfreezes_losslessly():
    torch.manual_seed(0)
    layer = BitLinear(16, 8)
    w = layer.weight.detach().clone()
    layer.freeze(keep_latent=True)
    assert layer.frozen and torch.equal(layer.weight, w)
    layer.unfreeze()
    assert torch.equal(layer.weight, w) and layer.packed_weight is None


def test_drop_in_for_nn_linear():
    torch.manual_seed(3)
    ref = nn.Linear(20, 10)
    torch.manual_seed(3)
    layer = BitLinear(20, 10)
    assert torch.equal(layer.weight, ref.weight) and torch.equal(layer.bias, ref.bias)  # same init
    other = BitLinear(20, 10)
    other.load_state_dict(nn.Linear(20, 10).state_dict())
    assert dict(layer.named_parameters()).keys() == {"weight", "bias"}
    with pytest.raises(ValueError, match="scale: expected one of"):
        BitLinear(4, 4, scale="max")
    with pytest.raises(ValueError, match="eps"):
        BitLinear(4, 4, eps=0.0)


def test_autocast_bf16():
    layer = BitLinear(16, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(torch.randn(4, 16))
    assert y.dtype == torch.bfloat16


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 16))
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        return self.head(self.attn(h, h, h)[0])


def test_quantize_model_respects_exclusions_and_keeps_other_modules():
    torch.manual_seed(0)
    net = Net()
    before = copy.deepcopy(net)
    norm, act, attn = net.body[1], net.body[2], net.attn
    out = quantize_model(net, scale="median", exclude=("head",))
    assert out is net
    assert isinstance(net.body[0], BitLinear) and isinstance(net.body[3], BitLinear)
    assert net.body[0].scale == "median"
    assert type(net.head) is nn.Linear  # excluded
    assert net.body[1] is norm and net.body[2] is act and net.attn is attn  # untouched
    assert type(net.attn.out_proj) is not BitLinear  # MHA does not call out_proj.forward
    for name in ("body.0.weight", "body.0.bias", "body.3.weight", "head.weight"):
        assert torch.equal(net.state_dict()[name], before.state_dict()[name])
    assert net(torch.randn(2, 5, 8)).shape == (2, 5, 3)


def test_quantize_model_predicate_shared_and_errors():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared, nn.Linear(4, 2))
    quantize_model(model, exclude=lambda name, m: m.out_features == 2)
    assert isinstance(model[0], BitLinear) and model[0] is model[2] and type(model[3]) is nn.Linear
    assert isinstance(quantize_model(nn.Linear(3, 3)), BitLinear)
    with pytest.raises(ValueError, match=r"exclude: 'haed' is not a module name.*\['0', '1'\]"):
        quantize_model(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), exclude=["haed"])


def test_packed_size_report():
    model = nn.Sequential(nn.Linear(10, 6), nn.ReLU(), nn.Linear(6, 2))
    quantize_model(model, exclude=("2",))
    report = packed_size_report(model)
    assert report["ternary_weights"] == 60
    assert report["packed_bytes"] == 15 + 4 and report["fp32_bytes"] == 240
    assert report["other_bytes"] == 4 * (6 + 12 + 2)
    assert packed_size_report(freeze_model(model)) == report


def test_digits_mlp_trains_with_bitlinear():
    """Fast version of examples/bitlinear_digits.py: a ternary MLP reaches > 90% on held-out digits."""
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:1400], perm[1400:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: extra threads only add contention on a busy machine
    try:
        acc, agreement = _train_digits(x, y, tr, te)
    finally:
        torch.set_num_threads(threads)
    assert acc > 0.9, acc
    assert agreement >= 0.99


def _train_digits(x, y, tr, te) -> tuple[float, float]:
    torch.manual_seed(0)
    model = quantize_model(nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(8):
        for idx in tr[torch.randperm(len(tr), generator=g)].split(64):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        pred = model(x[te]).argmax(-1)
        acc = (pred == y[te]).float().mean().item()
        frozen_pred = freeze_model(model)(x[te]).argmax(-1)
    return acc, (frozen_pred == pred).float().mean().item()
