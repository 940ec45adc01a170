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
from collections.abc import Callable

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from vqkit import FSQ, GroupedVectorQuantizer, LatentQuantizer, ResidualVectorQuantizer, VectorQuantizer

DIM = 6

#: name -> (factory, trailing index axis size or None)
FACTORIES: dict[str, tuple[Callable[[int], nn.Module], int | None]] = {
    "vq": (lambda cd: VectorQuantizer(DIM, 12, channel_dim=cd, dead_code_steps=1), None),
    "vq-ema-threshold": (lambda cd: VectorQuantizer(DIM, 12, channel_dim=cd, codebook="ema", dead_code_steps=1,
                                                    dead_code_threshold=1.0), None),
    "vq-running-cosine": (lambda cd: VectorQuantizer(DIM, 12, channel_dim=cd, codebook="running_affine",
                                                     metric="cosine"), None),
    "vq-projected-rotation": (lambda cd: VectorQuantizer(DIM, 12, channel_dim=cd, codebook_dim=3,
                                                         estimator="rotation"), None),
    "grouped": (lambda cd: GroupedVectorQuantizer(DIM, 8, 2, channel_dim=cd, dead_code_steps=1), 2),
    "grouped-shared": (lambda cd: GroupedVectorQuantizer(DIM, 8, 3, shared_codebook=True, channel_dim=cd), 3),
    "residual": (lambda cd: ResidualVectorQuantizer(DIM, 8, 2, channel_dim=cd, dead_code_steps=1), 2),
    "residual-shared-projected": (lambda cd: ResidualVectorQuantizer(DIM, 8, 3, shared_codebook=True, codebook_dim=4,
                                                                     channel_dim=cd), 3),
    "fsq": (lambda cd: FSQ([5, 4, 3], dim=DIM, channel_dim=cd), None),
    "fsq-groups": (lambda cd: FSQ([3, 3, 2], num_codebooks=2, channel_dim=cd), 2),
    "latent": (lambda cd: LatentQuantizer(DIM, 4, channel_dim=cd), None),
    "latent-per-dim": (lambda cd: LatentQuantizer(DIM, [2, 3, 4, 5, 6, 7], index_mode="per_dim", channel_dim=cd), DIM),
}


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


@pytest.mark.parametrize("name", sorted(FACTORIES))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=cases())
def test_contract(name, case):
    lead, channel_dim, dtype, masked, training, seed = case
    factory, trailing = FACTORIES[name]
    torch.manual_seed(seed)
    q = factory(channel_dim).to(dtype if dtype == torch.float64 else torch.float32)
    q.train(training)
    x = _input(lead, channel_dim, dtype, seed).requires_grad_()
    mask = None
    if masked:
        mask = torch.rand(*lead, generator=torch.Generator().manual_seed(seed + 1)) > 0.3
    twin = copy.deepcopy(q)

    torch.manual_seed(seed)
    out = q(x, mask)
    # shapes and dtypes
    assert out.quantized.shape == x.shape and out.quantized.dtype == x.dtype
    expected = tuple(lead) + ((trailing,) if trailing else ())
    assert out.indices.shape == expected and out.indices.dtype == torch.int64
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert all(not v.requires_grad and v.ndim == 0 for v in out.stats.values())
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
        fresh = factory(channel_dim).to(dtype if dtype == torch.float64 else torch.float32)
        fresh.load_state_dict(q.state_dict(), strict=True)
        fresh.eval()
        again = fresh(x.detach())
        assert torch.equal(again.quantized, ev.quantized) and torch.equal(again.indices, ev.indices)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_bad_input_is_named(name):
    factory, trailing = FACTORIES[name]
    q = factory(-1)
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
    shape = (3, trailing) if trailing else (3,)
    with pytest.raises(TypeError, match="indices: expected an integer"):
        q.decode(torch.zeros(shape))
    with pytest.raises(ValueError, match="indices: expected values in"):
        q.decode(torch.full(shape, 10**6, dtype=torch.int64))
