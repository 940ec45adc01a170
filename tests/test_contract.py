"""The quantizer contract, as property tests (hypothesis) over every quantizer class.

For random leading shapes, channel axes, dtypes, masks and train/eval mode:

* ``quantized`` has the input's shape and dtype; ``indices`` are int64 with the input's shape minus the
  channel axis (plus the class's trailing axis); ``loss`` is a finite scalar;
* in eval mode ``decode(indices, dtype)`` reproduces ``quantized`` exactly;
* padded (masked) positions are irrelevant: garbage there changes no valid output, loss, stat or buffer;
* gradients reaching the input and the parameters are finite;
* a strict ``state_dict`` round trip into a fresh instance reproduces the eval outputs;
* bad input raises a ValueError / TypeError naming the argument.
"""

from __future__ import annotations

import copy
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from vqkit import list_quantizers, make_quantizer
from vqkit.quantizers import REQUIRED_STATS
from vqkit.quantizers.registry import get_quantizer

DIM = 6

#: extra configurations run beside each registered quantizer's own example (name -> kwargs)
VARIANTS: dict[str, list[dict]] = {
    "vq": [dict(codebook_size=12, dead_code_steps=1),
           dict(codebook_size=12, codebook="ema", dead_code_steps=1, dead_code_threshold=1.0),
           dict(codebook_size=12, codebook="running_affine", metric="cosine"),
           dict(codebook_size=12, codebook_dim=3, estimator="rotation")],
    "grouped_vq": [dict(codebook_size=8, groups=3, shared_codebook=True)],
    "residual_vq": [dict(codebook_size=8, num_levels=3, shared_codebook=True, codebook_dim=4),
                    dict(codebook_size=(12, 8, 4), num_levels=3, codebook="ema"),
                    dict(codebook_size=8, num_levels=3, quantize_dropout=1.0, quantize_dropout_per="batch")],
    "grouped_residual_vq": [dict(codebook_size=(8, 4), groups=3, num_levels=2, codebook_dim=3,
                                 quantize_dropout=0.5)],
    "residual_fsq": [dict(levels=[5, 3, 4, 3, 5, 3], num_levels=2), dict(levels=[5, 4, 3], num_levels=3, quantize_dropout=1.0)],
    "fsq": [dict(levels=[3, 3, 2], num_codebooks=2)],
    "latent": [dict(values_per_dim=[2, 3, 4, 5, 6, 7], index_mode="per_dim")],
    "lfq": [dict(codebook_dim=3, num_codebooks=2, codebook_scale=0.5, batch_entropy="factorized")],
    "bsq": [dict(codebook_dim=2, num_codebooks=3, batch_entropy="exact", commitment_weight=0.25)],
}

CASES = [(name, kwargs) for name in list_quantizers(include_optional=False)
         for kwargs in [get_quantizer(name).example, *VARIANTS.get(name, [])]]
IDS = [f"{name}-{i}" for i, (name, _) in enumerate(CASES)]


def _build(name: str, kwargs: dict, channel_dim: int) -> nn.Module:
    return make_quantizer(name, DIM, channel_dim=channel_dim, **kwargs)


@st.composite
def cases(draw):
    lead = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
    ndim = len(lead) + 1
    channel_dim = draw(st.sampled_from([-1, 0, ndim - 1] if ndim > 1 else [-1]))
    if len(lead) >= 2:
        channel_dim = draw(st.sampled_from([-1, 1, ndim - 1]))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
    masked = draw(st.booleans())
    training = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    return lead, channel_dim, dtype, masked, training, seed


def _input(lead, channel_dim, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, DIM, generator=g) * 2
    return x.movedim(-1, channel_dim).to(dtype).contiguous()


def _channel_last(t, channel_dim):
    return t.movedim(channel_dim, -1)


def test_every_registered_quantizer_is_covered():
    assert set(list_quantizers(include_optional=False)) <= {name for name, _ in CASES}
    assert {"vq", "grouped_vq", "residual_vq", "fsq", "latent"} <= set(list_quantizers())


@pytest.mark.parametrize("name,kwargs", CASES, ids=IDS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=cases())
def test_contract(name, kwargs, case):
    lead, channel_dim, dtype, masked, training, seed = case
    torch.manual_seed(seed)
    q = _build(name, kwargs, channel_dim).to(dtype if dtype == torch.float64 else torch.float32)
    trailing = q.index_layout.trailing
    q.train(training)
    x = _input(lead, channel_dim, dtype, seed).requires_grad_()
    mask = None
    if masked:
        mask = torch.rand(*lead, generator=torch.Generator().manual_seed(seed + 1)) > 0.3
    if training:  # a first call initializes (k-means); the tested call is a steady-state training step
        q(_input(lead, channel_dim, dtype, seed + 2))
    twin = copy.deepcopy(q)

    torch.manual_seed(seed)
    out = q(x, mask)
    quantized, indices, loss = out  # unpacks as a 3-tuple
    assert quantized is out.quantized and indices is out.indices and loss is out.loss
    # shapes and dtypes
    assert out.quantized.shape == x.shape and out.quantized.dtype == x.dtype
    expected = tuple(lead) + tuple(trailing)
    assert out.indices.shape == expected and out.indices.dtype == torch.int64
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert all(not v.requires_grad and v.ndim == 0 for v in out.stats.values())
    assert set(REQUIRED_STATS) <= set(out.stats)
    high = q.index_layout.high()
    dropped = training and getattr(q, "quantize_dropout", 0) > 0  # dropped residual levels are -1
    assert bool((out.indices >= (-1 if dropped else 0)).all()) and bool((out.indices < high).all())
    # finite gradients
    if out.quantized.requires_grad:
        (out.quantized.float().square().sum() + out.loss).backward()
        assert torch.isfinite(x.grad).all()
        for p in q.parameters():
            assert p.grad is None or torch.isfinite(p.grad).all()
    # padding is irrelevant
    if mask is not None:
        dirty = x.detach().clone()
        dl = _channel_last(dirty, channel_dim)
        dl[~mask] = float("nan")
        torch.manual_seed(seed)
        other = twin(dirty, mask)
        valid_a = _channel_last(out.quantized.detach(), channel_dim)[mask]
        valid_b = _channel_last(other.quantized, channel_dim)[mask]
        assert torch.equal(valid_a, valid_b)
        assert torch.equal(out.indices[mask], other.indices[mask])
        assert torch.equal(out.loss.detach(), other.loss.detach())
        for (n, a), b in zip(q.state_dict().items(), twin.state_dict().values()):
            assert torch.equal(a, b), n
    # eval: decode reproduces the output; a strict state_dict round trip reproduces both
    q.eval()
    with torch.no_grad():
        ev = q(x.detach())
        assert torch.equal(q.decode(ev.indices, x.dtype), ev.quantized)
        fresh = _build(name, kwargs, channel_dim).to(dtype if dtype == torch.float64 else torch.float32)
        fresh.load_state_dict(q.state_dict(), strict=True)
        fresh.eval()
        again = fresh(x.detach())
        assert torch.equal(again.quantized, ev.quantized) and torch.equal(again.indices, ev.indices)


@pytest.mark.parametrize("name,kwargs", CASES, ids=IDS)
def test_bad_input_is_named(name, kwargs):
    q = _build(name, kwargs, -1)
    trailing = q.index_layout.trailing
    with pytest.raises(ValueError, match=r"x: expected size 6 on channel_dim=-1"):
        q(torch.randn(3, DIM + 1))
    with pytest.raises(ValueError, match="x: expected at least 2 dims"):
        q(torch.randn(DIM))
    with pytest.raises(TypeError, match="x: expected a floating-point tensor"):
        q(torch.ones(3, DIM, dtype=torch.int64))
    with pytest.raises(TypeError, match="x: expected a torch.Tensor"):
        q([[0.0] * DIM])
    with pytest.raises(ValueError, match="mask: expected shape"):
        q(torch.randn(3, DIM), torch.ones(4, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask: expected dtype torch.bool"):
        q(torch.randn(3, DIM), torch.ones(3))
    with pytest.raises(ValueError, match="x: expected finite values"):
        q(torch.full((3, DIM), float("nan")))
    shape = (3, *trailing)
    with pytest.raises(TypeError, match="indices: expected an integer"):
        q.decode(torch.zeros(shape))
    with pytest.raises(ValueError, match="indices: expected values in"):
        q.decode(torch.full(shape, 10**6, dtype=torch.int64))


def test_the_docs_table_lists_every_registered_quantizer():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "quantizers.md").read_text()
    rows = {line.split("|")[1].strip().strip("`") for line in text.splitlines() if line.startswith("| `")}
    assert set(list_quantizers(include_optional=False)) <= rows
