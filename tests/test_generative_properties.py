"""Property tests (hypothesis) of the generative stage's invariants: masking, decoding, layouts, metrics."""

from __future__ import annotations

import math

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from vqkit.generative import (  # noqa: E402
    TokenLayout,
    MaskedTokenPrior,
    TokenSpec,
    decoding_schedule,
    frechet_distance,
    precision_recall,
    random_mask,
)

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = settings(max_examples=40, deadline=None)


@FAST
@given(batch=st.integers(1, 16), length=st.integers(1, 300), seed=st.integers(0, 2**31))
def test_random_mask_any_shape(batch, length, seed):
    mask, ratios = random_mask(batch, length, generator=torch.Generator().manual_seed(seed))
    counts = mask.sum(1)
    assert bool((ratios > 0).all() and (ratios <= 1).all())
    assert bool((counts >= 1).all() and (counts <= length).all())
    assert torch.equal(counts, torch.ceil(ratios.double() * length).long().clamp(1, length))


@FAST
@given(length=st.integers(1, 1000), steps=st.integers(1, 100))
def test_decoding_schedule_any_length_and_steps(length, steps):
    counts = decoding_schedule(length, steps)
    assert len(counts) == steps and counts[-1] == 0 and 0 <= counts[0] < length
    prev = length
    for t, c in enumerate(counts):
        assert c >= 0 and (c < prev or prev == 0)  # at least one position revealed per step while any is masked
        if t < steps - 1:
            assert c <= math.floor(length * math.cos(math.pi / 2 * (t + 1) / steps))  # never above the cosine
        prev = c


@settings(max_examples=25, deadline=None)
@given(vocab=st.lists(st.integers(1, 5), min_size=1, max_size=3), length=st.integers(1, 10),
       steps=st.integers(1, 12), seed=st.integers(0, 1000), noise=st.sampled_from([0.0, 4.5]))
def test_maskgit_decoding_any_configuration_fills_every_position(vocab, length, steps, seed, noise):
    torch.manual_seed(seed)
    prior = MaskedTokenPrior(vocab, length, num_classes=2, dim=8, depth=1, heads=2)
    out, history = prior.generate(torch.tensor([0, 1, 1]), steps=steps, confidence_noise=noise,
                                  generator=torch.Generator().manual_seed(seed), return_history=True)
    assert out.shape == (3, length, len(vocab))
    for c, k in enumerate(vocab):
        assert bool((out[..., c] >= 0).all() and (out[..., c] < k).all())
    counts = decoding_schedule(length, steps)
    assert [m.sum(1).tolist() for m in history] == [[c] * 3 for c in counts]
    assert not bool(history[-1].any())


@FAST
@given(h=st.integers(1, 5), w=st.integers(1, 5), vocab=st.lists(st.integers(1, 9), min_size=1, max_size=4),
       trailing=st.booleans(), seed=st.integers(0, 1000))
def test_token_maps_round_trip_through_sequences(h, w, vocab, trailing, seed):
    if not trailing:
        vocab = vocab[:1]
    spec = TokenSpec((h, w), TokenLayout(tuple(vocab), trailing), 3, "hash")
    gen = torch.Generator().manual_seed(seed)
    cols = torch.stack([torch.randint(0, k, (2, h, w), generator=gen) for k in vocab], -1)
    maps = spec.layout.from_columns(cols)
    seqs = spec.to_sequences(maps)
    assert seqs.shape == (2, h * w, len(vocab))
    assert torch.equal(spec.to_maps(seqs), maps)
    spec.layout.check("seqs", seqs)


@FAST
@given(d=st.integers(1, 8), seed=st.integers(0, 10_000))
def test_frechet_distance_is_a_rotation_invariant_symmetric_closed_form(d, seed):
    gen = torch.Generator().manual_seed(seed)
    mu1, mu2 = torch.randn(d, generator=gen, dtype=torch.float64), torch.randn(d, generator=gen, dtype=torch.float64)
    a, b = torch.randn(d, d, generator=gen, dtype=torch.float64), torch.randn(d, d, generator=gen, dtype=torch.float64)
    s1, s2 = a @ a.T, b @ b.T
    fd = frechet_distance(mu1, s1, mu2, s2)
    assert fd >= 0 and fd == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-7, abs=1e-9)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    rotated = frechet_distance(q @ mu1, q @ s1 @ q.T, q @ mu2, q @ s2 @ q.T)
    assert rotated == pytest.approx(fd, rel=1e-7, abs=1e-8)
    # equal covariances: only the means differ
    assert frechet_distance(mu1, s1, mu2, s1) == pytest.approx(float((mu1 - mu2).square().sum()), rel=1e-7, abs=1e-8)
    # diagonal covariances: sum of squared standard-deviation differences
    v1, v2 = torch.rand(d, generator=gen, dtype=torch.float64), torch.rand(d, generator=gen, dtype=torch.float64)
    diag = frechet_distance(mu1, torch.diag(v1), mu1, torch.diag(v2))
    assert diag == pytest.approx(float((v1.sqrt() - v2.sqrt()).square().sum()), rel=1e-9, abs=1e-12)


@FAST
@given(n=st.integers(5, 60), d=st.integers(1, 6), k=st.integers(1, 4), seed=st.integers(0, 1000))
def test_precision_recall_of_a_set_against_itself_is_one(n, d, k, seed):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    assert precision_recall(x, x, k=k) == (1.0, 1.0)
