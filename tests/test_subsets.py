"""Subset sampler: guaranteed pair coverage, exact subset sizes, determinism, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policygradex.estimate.subsets import default_subset_size, pair_counts, sample_subsets


def _offdiag_min(counts: np.ndarray) -> int:
    n = counts.shape[0]
    iu = np.triu_indices(n, k=1)
    return int(counts[iu].min())


@st.composite
def _designs(draw):
    n = draw(st.integers(2, 25))
    size = draw(st.integers(2, n))
    c = draw(st.integers(1, 4))
    m = draw(st.one_of(st.none(), st.integers(1, 60)))
    seed = draw(st.integers(0, 10_000))
    return n, size, c, m, seed


@settings(max_examples=150, deadline=None)
@given(_designs())
def test_every_pair_covered_and_rows_have_exact_size(design):
    n, size, c, m, seed = design
    members = sample_subsets(n, size, min_pair_coverage=c, m=m, seed=seed)
    assert members.dtype == bool
    assert members.ndim == 2 and members.shape[1] == n
    if m is not None:
        assert members.shape[0] >= m
    assert (members.sum(axis=1) == size).all()
    assert _offdiag_min(pair_counts(members)) >= c


def test_deterministic_for_a_seed_and_seed_matters():
    a = sample_subsets(12, 5, 3, seed=7)
    b = sample_subsets(12, 5, 3, seed=7)
    c = sample_subsets(12, 5, 3, seed=8)
    np.testing.assert_array_equal(a, b)
    assert a.shape != c.shape or not np.array_equal(a, c)


def test_rows_distinct_when_possible():
    for n, size, c, m in [(10, 5, 3, None), (8, 4, 5, 40), (6, 3, 4, 20), (25, 12, 3, None)]:
        members = sample_subsets(n, size, c, m=m, seed=1)
        rows = {tuple(r) for r in members.tolist()}
        assert len(rows) == members.shape[0], (n, size, c, m)


def test_m_rows_when_enough_and_extra_rows_when_too_few():
    members = sample_subsets(8, 4, 1, m=60, seed=0)
    assert members.shape[0] == 60  # 60 random subsets cover every pair once
    few = sample_subsets(10, 3, 3, m=2, seed=0)  # two rows cannot cover 45 pairs 3 times
    assert few.shape[0] >= math.ceil(3 * 45 / 3)
    assert _offdiag_min(pair_counts(few)) >= 3


def test_default_m_is_near_the_counting_bound():
    n, size, c = 10, 5, 3
    members = sample_subsets(n, size, c, seed=0)
    bound = math.ceil(c * math.comb(n, 2) / math.comb(size, 2))
    assert bound <= members.shape[0] <= 3 * bound


def test_size_equal_to_n_repeats_the_only_subset():
    members = sample_subsets(4, 4, 3, seed=0)
    assert members.shape == (3, 4)
    assert members.all()


def test_pair_counts_hand_example():
    members = np.array([[1, 1, 0], [0, 1, 1], [1, 1, 1]], dtype=bool)
    expected = np.array([[2, 2, 1], [2, 3, 2], [1, 2, 2]])
    np.testing.assert_array_equal(pair_counts(members), expected)
    with pytest.raises(ValueError, match="members"):
        pair_counts(np.ones(3, dtype=bool))


def test_default_subset_size():
    assert default_subset_size(2) == 2
    assert default_subset_size(3) == 2
    assert default_subset_size(8) == 4
    assert default_subset_size(9) == 5
    for n in range(2, 40):
        assert 2 <= default_subset_size(n) <= n
    with pytest.raises(ValueError, match="'n'"):
        default_subset_size(1)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n": 1, "size": 2}, "'n'"),
        ({"n": 2.5, "size": 2}, "'n'"),
        ({"n": True, "size": 2}, "'n'"),
        ({"n": 5, "size": 1}, "'size'"),
        ({"n": 5, "size": 6}, "'size'"),
        ({"n": 5, "size": 3, "min_pair_coverage": 0}, "'min_pair_coverage'"),
        ({"n": 5, "size": 3, "m": 0}, "'m'"),
        ({"n": 5, "size": 3, "m": 2.0}, "'m'"),
        ({"n": 5, "size": 3, "seed": -1}, "'seed'"),
    ],
)
def test_bad_inputs_name_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name) as info:
        sample_subsets(**kwargs)
    assert "range" in str(info.value)
