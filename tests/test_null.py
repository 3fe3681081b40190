"""Tests of the permutation null test for groupings."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score

from policygradex.estimate.affinity import build_affinity, table_affinity
from policygradex.group.null import NullTest, null_test, within_between_contrast
from policygradex.group.sdp import group_tasks


def simulate_f(
    seed: int, planted: bool, n: int = 10, m: int = 60, size: int = 4, noise: float = 0.15
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random subsets of ``size`` tasks; f(S, i) = fraction of S in i's cluster + noise.

    Two planted clusters (even / odd task index).  With ``planted=False`` f is pure noise.
    """
    rng = np.random.default_rng(seed)
    clusters = np.arange(n) % 2
    members = np.zeros((m, n), dtype=bool)
    for s in range(m):
        members[s, rng.choice(n, size=size, replace=False)] = True
    f = np.full((m, n), np.nan)
    for s in range(m):
        tasks = np.flatnonzero(members[s])
        for i in tasks:
            signal = np.mean(clusters[tasks] == clusters[i]) if planted else 0.0
            f[s, i] = signal + noise * rng.normal()
    return f, members, clusters


@pytest.mark.parametrize("k", [None, 2])
def test_planted_structure_is_significant(k: int | None) -> None:
    f, members, clusters = simulate_f(seed=0, planted=True)
    res = null_test(f, members, k=k, n_perm=60, seed=1)
    assert isinstance(res, NullTest)
    assert res.p_value < 0.05
    assert res.p_value == pytest.approx(1 / 61)  # nothing in the null reaches the observed
    assert normalized_mutual_info_score(clusters, res.grouping.labels) == pytest.approx(1.0)
    assert res.observed > 0.3
    assert res.null_stats.shape == (60,) and res.null_k.shape == (60,)
    assert res.n_perm == 60 and res.statistic == "within_minus_between"
    # the affinity the grouping was made on: the table's, and the grouping is the SDP's on it
    np.testing.assert_array_equal(res.U, build_affinity(f, members).U)
    np.testing.assert_array_equal(res.affinity.counts, build_affinity(f, members).counts)  # theta*'s, for the pair counts
    assert res.grouping.labels.tolist() == group_tasks(res.U, k=k).labels.tolist()


def test_affinity_of_a_window_is_the_mean_of_its_standardized_tables() -> None:
    f, members, _ = simulate_f(seed=1, planted=True)
    g = f + np.random.default_rng(2).normal(0, 0.1, f.shape)  # the next checkpoint's table: same subsets
    res = null_test([f, g], members, n_perm=5, seed=0)
    np.testing.assert_array_equal(res.U, table_affinity([f, g], members))


def test_pure_noise_is_not_significant() -> None:
    p_values = []
    for seed in range(6):
        f, members, _ = simulate_f(seed=seed, planted=False)
        p_values.append(null_test(f, members, n_perm=30, seed=seed).p_value)
    p = np.array(p_values)
    # Under H0 p is (super-)uniform: most runs are well above 0.05, none pile up near 0.
    assert np.sum(p <= 0.05) <= 1, p
    assert 0.2 < p.mean() < 0.85, p


def test_deterministic_given_seed_and_p_value_formula() -> None:
    f, members, _ = simulate_f(seed=3, planted=False, n=6, m=25, size=3)
    a = null_test(f, members, k=2, n_perm=15, seed=7)
    b = null_test(f, members, k=2, n_perm=15, seed=7)
    np.testing.assert_array_equal(a.null_stats, b.null_stats)
    assert a.p_value == b.p_value
    assert a.p_value == (1 + np.sum(a.null_stats >= a.observed - 1e-12)) / 16
    assert np.all(a.null_k == 2)


def test_permutation_keeps_each_task_values() -> None:
    from policygradex.group.null import _permute_within_tasks

    f, members, _ = simulate_f(seed=4, planted=True)
    g = _permute_within_tasks(f, members, np.random.default_rng(0))
    np.testing.assert_array_equal(np.isnan(g), ~members)
    for i in range(f.shape[1]):
        np.testing.assert_array_equal(np.sort(g[members[:, i], i]), np.sort(f[members[:, i], i]))
    assert not np.array_equal(np.nan_to_num(g), np.nan_to_num(f))


def test_within_between_contrast() -> None:
    U = np.array(
        [
            [0.0, 1.0, -1.0, 0.0],
            [1.0, 0.0, 0.5, -0.5],
            [-1.0, 0.5, 0.0, 2.0],
            [0.0, -0.5, 2.0, 0.0],
        ]
    )
    # Groups {0,1}, {2,3}: within pairs 1 and 2 (mean 1.5); between -1, 0, 0.5, -0.5 (-0.25).
    assert within_between_contrast(U, np.array([0, 0, 1, 1])) == pytest.approx(1.75)
    assert within_between_contrast(U, np.zeros(4, dtype=int)) == 0.0
    assert within_between_contrast(U, np.arange(4)) == 0.0


def test_invalid_arguments() -> None:
    f, members, _ = simulate_f(seed=0, planted=True, n=6, m=20, size=3)
    with pytest.raises(ValueError, match="n_perm must be an integer >= 1"):
        null_test(f, members, n_perm=0)
    with pytest.raises(ValueError, match="members must have the shape"):
        null_test(f, members[:, :-1])
    with pytest.raises(ValueError, match="k must be between 1"):
        null_test(f, members, k=7, n_perm=2)
