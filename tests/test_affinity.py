"""Tests of the affinity matrix built from the per-subset performance table f."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policygradex.errors import UserError
from policygradex.estimate.affinity import Affinity, build_affinity, min_pair_count, standardize_per_task


def _table(members: np.ndarray, values: dict[tuple[int, int], float]) -> np.ndarray:
    f = np.full(members.shape, np.nan)
    for (s, i), v in values.items():
        assert members[s, i]
        f[s, i] = v
    return f


def test_hand_computed_tiny_example() -> None:
    # Subsets: {0,1}, {0,2}, {1,2}, {0,1,2}.
    members = np.array([[1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 1, 1]], dtype=bool)
    f = _table(
        members,
        {
            (0, 0): 1.0, (1, 0): 2.0, (3, 0): 4.0,  # task 0: mean 7/3, std sqrt(14)/3
            (0, 1): 10.0, (2, 1): 30.0, (3, 1): 20.0,  # task 1: mean 20, std sqrt(200/3)
            (1, 2): 5.0, (2, 2): 5.0, (3, 2): 5.0,  # task 2: constant
        },
    )
    aff = build_affinity(f, members)
    r14 = np.sqrt(14.0)
    z0 = {0: -4 / r14, 1: -1 / r14, 3: 5 / r14}
    r = np.sqrt(1.5)  # task 1: deviations -10, 10, 0 over std 10*sqrt(2/3)
    z1 = {0: -r, 2: r, 3: 0.0}
    expected_raw = np.array(
        [
            [0.0, (z0[0] + z0[3]) / 2, (z0[1] + z0[3]) / 2],
            [(z1[0] + z1[3]) / 2, 0.0, (z1[2] + z1[3]) / 2],
            [0.0, 0.0, 0.0],  # constant task: zero-variance guard gives zeros
        ]
    )
    np.testing.assert_allclose(aff.U_raw, expected_raw, atol=1e-12)
    np.testing.assert_allclose(aff.U, (expected_raw + expected_raw.T) / 2, atol=1e-12)
    np.testing.assert_array_equal(aff.counts, [[3, 2, 2], [2, 3, 2], [2, 2, 3]])
    assert aff.counts.dtype.kind == "i"
    assert aff.constant_tasks == (2,)
    assert aff.unseen_pairs == []
    assert aff.min_pair_count == min_pair_count(members) == 2
    np.testing.assert_allclose(aff.z[[0, 1, 3], 0], [z0[0], z0[1], z0[3]])
    assert np.isnan(aff.z[2, 0])


def test_unseen_pair_is_neutral_with_count_zero_and_no_warning() -> None:
    # Task 2 never shares a subset with 0 or 1; task 3 is in no subset at all.
    members = np.array(
        [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0]], dtype=bool
    )
    rng = np.random.default_rng(0)
    f = np.where(members, rng.normal(size=members.shape), np.nan)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        aff = build_affinity(f, members)
    assert aff.counts[0, 2] == aff.counts[2, 0] == aff.counts[1, 2] == 0
    assert aff.U[0, 2] == aff.U_raw[0, 2] == aff.U_raw[2, 0] == 0.0
    assert aff.U[1, 2] == 0.0
    assert aff.counts[3].sum() == 0 and np.all(aff.U[3] == 0.0)
    assert aff.unseen_pairs == [(0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert aff.min_pair_count == min_pair_count(members) == 0
    assert 3 in aff.constant_tasks
    assert np.all(np.isfinite(aff.U))


def test_structure_symmetry_and_diagonal() -> None:
    rng = np.random.default_rng(1)
    m, n = 30, 7
    members = rng.random((m, n)) < 0.5
    f = np.where(members, rng.normal(size=(m, n)) * 50 + 3, np.nan)
    aff = build_affinity(f, members)
    assert isinstance(aff, Affinity)
    np.testing.assert_array_equal(aff.U, aff.U.T)
    np.testing.assert_array_equal(aff.counts, aff.counts.T)
    np.testing.assert_array_equal(np.diag(aff.counts), members.sum(axis=0))
    np.testing.assert_allclose(np.diag(aff.U_raw), 0.0, atol=1e-12)  # mean of a z-score
    seen = members.sum(axis=0) > 0
    np.testing.assert_allclose(np.nanmean(aff.z[:, seen], axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(np.nanstd(aff.z[:, seen], axis=0), 1.0, atol=1e-12)
    # A brute-force double loop agrees with the vectorized formula.
    for i in range(n):
        for j in range(n):
            both = members[:, i] & members[:, j]
            want = aff.z[both, i].mean() if both.any() else 0.0
            assert aff.U_raw[i, j] == pytest.approx(want, abs=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    scale=st.floats(1e-3, 1e3),
    shift=st.floats(-1e3, 1e3),
)
def test_invariant_to_per_task_affine_rescaling(seed: int, scale: float, shift: float) -> None:
    rng = np.random.default_rng(seed)
    m, n = 12, 5
    members = rng.random((m, n)) < 0.6
    f = np.where(members, rng.normal(size=(m, n)), np.nan)
    task_scale = scale * rng.uniform(0.5, 2.0, size=n)
    g = f * task_scale + shift
    np.testing.assert_allclose(build_affinity(g, members).U, build_affinity(f, members).U, atol=1e-7)


def test_integer_members_accepted() -> None:
    members = np.array([[1, 1], [1, 1], [1, 0]])
    f = np.array([[1.0, 2.0], [3.0, 1.0], [2.0, np.nan]])
    aff = build_affinity(f, members)
    np.testing.assert_array_equal(aff.counts, [[3, 2], [2, 2]])
    z, const = standardize_per_task(f, members)
    assert const == ()
    np.testing.assert_allclose(z[:, 0], [-np.sqrt(1.5), np.sqrt(1.5), 0.0])


@pytest.mark.parametrize(
    ("f", "members", "needle"),
    [
        (np.zeros(3), np.ones(3, dtype=bool), "f must be a 2-D"),
        (np.zeros((2, 3)), np.ones((3, 2), dtype=bool), "members must have the shape"),
        (np.array([[np.nan, 1.0]]), np.array([[True, True]]), "f is NaN at subset 0, task 0"),
        (np.array([[1.0, 1.0]]), np.array([[True, False]]), "f has a value at subset 0, task 1"),
        (np.array([[np.inf, 1.0]]), np.array([[True, True]]), "f is infinite"),
        (np.array([[1.0, 1.0]]), np.array([[2, 1]]), "members must be a boolean"),
        (np.array([["a", "b"]]), np.array([[True, True]]), "f must hold real numbers"),
    ],
)
def test_invalid_inputs_name_the_input(f: np.ndarray, members: np.ndarray, needle: str) -> None:
    with pytest.raises(ValueError, match=needle) as info:
        build_affinity(f, members)
    assert isinstance(info.value, UserError)
