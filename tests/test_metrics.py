"""vqkit.metrics against closed forms and brute force."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vqkit.metrics import code_counts, distinct_counts, index_stats, misalignment, perplexity, ste_error, usage


def test_usage_and_perplexity_closed_forms():
    counts = torch.tensor([2.0, 0.0, 1.0, 1.0])
    assert usage(counts).item() == pytest.approx(0.75)
    p = torch.tensor([0.5, 0.25, 0.25])
    assert perplexity(counts).item() == pytest.approx(math.exp(-(p * p.log()).sum().item()))
    assert perplexity(torch.ones(7)).item() == pytest.approx(7.0)
    assert perplexity(torch.tensor([5.0, 0, 0])).item() == pytest.approx(1.0)
    batched = perplexity(torch.stack([torch.ones(4), torch.tensor([1.0, 0, 0, 0])]))
    torch.testing.assert_close(batched, torch.tensor([4.0, 1.0]))


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.integers(0, 30), min_size=1, max_size=80), mask_bits=st.lists(st.booleans(), min_size=80,
                                                                                         max_size=80))
def test_sorted_counting_equals_the_histogram(values, mask_bits):
    idx = torch.tensor(values)
    mask = torch.tensor(mask_bits[: len(values)])
    for m in (None, mask):
        hist = code_counts(idx, 31, m)
        sparse = distinct_counts(idx, m)
        assert sparse.sum() == hist.sum()
        assert sorted(sparse[sparse > 0].tolist()) == sorted(hist[hist > 0].tolist())
        torch.testing.assert_close(perplexity(sparse), perplexity(hist))


def test_index_stats_columns_shared_and_huge_codebooks():
    idx = torch.tensor([[0, 1], [0, 2], [3, 1]])  # two columns
    s = index_stats(idx, (4, 4))
    # column 0 uses {0, 3} of 4, column 1 uses {1, 2} of 4
    assert s["usage"].item() == pytest.approx(0.5)
    shared = index_stats(idx, (4, 4), shared=True)  # pooled: {0, 1, 2, 3}
    assert shared["usage"].item() == pytest.approx(1.0)
    huge = index_stats(idx, (2**40, 2**40))  # no K-sized buffer
    assert huge["usage"].item() == pytest.approx(2 / 2**40)
    torch.testing.assert_close(huge["perplexity"], s["perplexity"])
    masked = index_stats(idx, (4, 4), mask=torch.tensor([True, True, False]))
    assert masked["usage"].item() == pytest.approx((1 / 4 + 2 / 4) / 2)


def test_misalignment_moment_gaps():
    z = torch.tensor([[0.0, 0.0], [2.0, 4.0]])  # mean (1, 2), std (1, 2)
    codebook = torch.tensor([[1.0, 2.0], [1.0, 2.0]])  # mean (1, 2), std 0
    out = misalignment(z, codebook)
    assert out["mean_gap"].item() == pytest.approx(0.0)
    assert out["std_ratio"].item() == pytest.approx(0.0)
    shifted = misalignment(z, z + torch.tensor([3.0, 4.0]), quantized=z * 2)
    assert shifted["mean_gap"].item() == pytest.approx(5.0 / math.sqrt(2))
    assert shifted["std_ratio"].item() == pytest.approx(1.0)
    assert shifted["q_mean_gap"].item() == pytest.approx(math.sqrt(1 + 4) / math.sqrt(2))
    assert shifted["q_std_ratio"].item() == pytest.approx(2.0)


def test_ste_error_is_the_mean_squared_distance_over_valid_rows():
    z = torch.tensor([[0.0, 0.0], [1.0, 1.0], [3.0, 0.0]])
    q = torch.tensor([[0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    assert ste_error(z, q).item() == pytest.approx((1 + 0 + 9) / 3)
    assert ste_error(z, q, mask=torch.tensor([True, True, False])).item() == pytest.approx(0.5)
