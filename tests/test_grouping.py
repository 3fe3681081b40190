"""Tests of the SDP grouping, its rounding and the partition helpers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from policygradex.errors import UserError
from policygradex.group.sdp import (
    Grouping,
    canonical_labels,
    default_penalty,
    group_tasks,
    groups_from_labels,
    partition_matrix,
    partition_objective,
    random_grouping,
)


def planted_affinity(
    sizes: list[int], noise: float, seed: int, within: float = 1.0, between: float = -0.3
) -> tuple[np.ndarray, np.ndarray]:
    """Block affinity (``within`` on blocks, ``between`` off them) + symmetric Gaussian noise.

    Tasks are shuffled so that the blocks are not contiguous.
    """
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    truth = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))
    U = np.where(truth[:, None] == truth[None, :], within, between)
    E = rng.normal(0.0, noise, size=(n, n))
    U = U + (E + E.T) / np.sqrt(2.0)
    np.fill_diagonal(U, 0.0)
    return U, truth


PLANTED = [
    ([5, 7], 0.3, "block"),
    ([3, 6, 9], 0.3, "signed"),
    ([4, 5, 7, 8], 0.3, "signed"),
    ([3, 4, 6, 8, 9], 0.25, "block"),
    ([4, 5, 6, 7, 8], 0.3, "signed"),
]


@pytest.mark.parametrize(("sizes", "noise", "kind"), PLANTED)
@pytest.mark.parametrize("mode", ["auto", "fixed"])
def test_recovers_planted_blocks(sizes: list[int], noise: float, kind: str, mode: str) -> None:
    between = 0.0 if kind == "block" else -0.3
    U, truth = planted_affinity(sizes, noise, seed=len(sizes), between=between)
    k = len(sizes) if mode == "fixed" else None
    g = group_tasks(U, k=k)
    assert g.k == len(sizes)
    assert adjusted_rand_score(truth, g.labels) == 1.0
    assert normalized_mutual_info_score(truth, g.labels) == pytest.approx(1.0)
    assert g.solver == "clarabel" and g.status in ("optimal", "optimal_inaccurate")
    # Well separated: the SDP is tight and the gap certifies optimality of the partition.
    assert abs(g.gap) < 1e-4 * max(1.0, abs(g.objective))
    assert g.trace == pytest.approx(len(sizes), abs=1e-3)
    if mode == "auto":
        assert g.penalty == pytest.approx(default_penalty(U, 4.0))
    else:
        assert g.penalty is None


def test_scs_solver_recovers_planted_blocks() -> None:
    U, truth = planted_affinity([4, 6, 8], 0.3, seed=3)
    g = group_tasks(U, solver="scs")
    assert g.solver == "scs"
    assert adjusted_rand_score(truth, g.labels) == 1.0


def _same_partition_under_permutations(U: np.ndarray, k: int | None, seeds: range) -> None:
    base = group_tasks(U, k=k)
    n = U.shape[0]
    for seed in seeds:
        perm = np.random.default_rng(seed).permutation(n)
        g = group_tasks(U[np.ix_(perm, perm)], k=k)
        # Task a of the permuted problem is task perm[a] of the original.
        assert adjusted_rand_score(base.labels[perm], g.labels) == 1.0, seed
        assert g.k == base.k
        assert g.rounded_objective == pytest.approx(base.rounded_objective, abs=1e-9)


@pytest.mark.parametrize("k", [None, 3])
def test_rounding_independent_of_task_order_noisy_structure(k: int | None) -> None:
    # Heavy noise: the SDP solution is fractional, so the rounding really has to decide.
    U, _ = planted_affinity([3, 4, 5], 0.9, seed=11)
    _same_partition_under_permutations(U, k, range(8))


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_rounding_independent_of_task_order_pure_noise(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 9 + seed
    E = rng.normal(size=(n, n))
    U = (E + E.T) / 2
    np.fill_diagonal(U, 0.0)
    _same_partition_under_permutations(U, None, range(4))
    _same_partition_under_permutations(U, 2, range(2))


@settings(max_examples=15, deadline=None)
@given(n=st.integers(2, 8), seed=st.integers(0, 10_000), fixed=st.booleans())
def test_every_task_assigned_once_and_relaxation_bounds_partition(n: int, seed: int, fixed: bool) -> None:
    rng = np.random.default_rng(seed)
    E = rng.normal(size=(n, n))
    U = (E + E.T) / 2
    k = int(rng.integers(1, n + 1)) if fixed else None
    g = group_tasks(U, k=k)
    assert isinstance(g, Grouping)
    assert g.labels.shape == (n,)
    assert sorted(t for grp in g.groups for t in grp) == list(range(n))
    np.testing.assert_array_equal(g.labels, canonical_labels(g.labels))
    assert 1 <= g.k <= n and len(g.groups) == g.k
    if fixed:
        assert g.k == k
    # The SDP is a relaxation: its value bounds every partition's (up to solver tolerance).
    assert g.rounded_objective <= g.objective + 1e-5 * max(1.0, abs(g.objective))
    pen = 0.0 if g.penalty is None else g.penalty
    assert g.rounded_objective == pytest.approx(partition_objective(U, g.labels, pen))


def test_scale_invariance_of_auto_mode() -> None:
    U, _ = planted_affinity([3, 4, 5], 0.6, seed=2)
    a = group_tasks(U)
    b = group_tasks(37.0 * U)
    assert adjusted_rand_score(a.labels, b.labels) == 1.0
    assert b.penalty == pytest.approx(37.0 * a.penalty)


def test_two_tasks() -> None:
    pos = np.array([[0.0, 0.7], [0.7, 0.0]])
    neg = -pos
    assert group_tasks(pos).groups == [[0, 1]]
    # Default penalty 4 * |U_01| keeps even two conflicting tasks together...
    assert group_tasks(neg).groups == [[0, 1]]
    # ...while without a price per group they are split.
    g = group_tasks(neg, penalty=0.0)
    assert g.groups == [[0], [1]] and g.solver == "clarabel"
    assert group_tasks(pos, k=2).groups == [[0], [1]]
    assert group_tasks(neg, k=1).groups == [[0, 1]]


def test_one_task_and_all_zero_affinity() -> None:
    g1 = group_tasks(np.zeros((1, 1)))
    assert g1.groups == [[0]] and g1.solver == "none"
    g = group_tasks(np.zeros((6, 6)))
    assert g.groups == [list(range(6))] and g.k == 1
    assert g.solver == "none" and g.status == "trivial" and g.penalty == 0.0
    np.testing.assert_allclose(g.X, np.full((6, 6), 1 / 6))


def test_k_equal_n_gives_singletons() -> None:
    U, _ = planted_affinity([2, 3], 0.3, seed=0)
    g = group_tasks(U, k=5)
    assert g.groups == [[0], [1], [2], [3], [4]]
    np.testing.assert_allclose(g.X, np.eye(5))


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"k": 6}, "k must be between 1 and the number of tasks n = 5; got k = 6"),
        ({"k": 0}, "k must be between 1"),
        ({"k": 2.0}, "k must be an integer"),
        ({"k": True}, "k must be an integer"),
        ({"k": 2, "penalty": 1.0}, "either k"),
        ({"penalty": -1.0}, "penalty must be a finite number >= 0"),
        ({"penalty_scale": float("nan")}, "penalty_scale must be"),
        ({"solver": "mosek"}, "solver must be one of"),
    ],
)
def test_invalid_arguments(kwargs: dict, needle: str) -> None:
    U, _ = planted_affinity([2, 3], 0.3, seed=0)
    with pytest.raises(ValueError, match=needle) as info:
        group_tasks(U, **kwargs)
    assert isinstance(info.value, UserError)


@pytest.mark.parametrize(
    ("U", "needle"),
    [
        (np.zeros((2, 3)), "U must be a square"),
        (np.array([[0.0, 1.0], [0.0, 0.0]]), "U must be symmetric"),
        (np.array([[0.0, np.nan], [np.nan, 0.0]]), "U must be finite"),
        (np.zeros((0, 0)), "at least one task"),
    ],
)
def test_invalid_affinity(U: np.ndarray, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        group_tasks(U)


def test_partition_matrix_and_objective() -> None:
    labels = np.array([2, 0, 2, 1, 0, 2])
    X = partition_matrix(labels)
    np.testing.assert_allclose(X.sum(axis=1), 1.0)
    assert np.trace(X) == pytest.approx(3.0)
    assert np.linalg.eigvalsh(X).min() > -1e-12
    assert X[0, 2] == pytest.approx(1 / 3) and X[1, 4] == pytest.approx(1 / 2) and X[0, 1] == 0.0
    rng = np.random.default_rng(0)
    E = rng.normal(size=(6, 6))
    U = E + E.T
    assert partition_objective(U, labels, 0.5) == pytest.approx(np.sum(U * X) - 0.5 * 3)


def test_canonical_labels_and_groups() -> None:
    np.testing.assert_array_equal(canonical_labels([7, 3, 7, 5, 3]), [0, 1, 0, 2, 1])
    assert groups_from_labels([7, 3, 7, 5, 3]) == [[0, 2], [1, 4], [3]]


def test_random_grouping_keeps_sizes() -> None:
    a = random_grouping([3, 5, 2], 10, seed=1)
    assert sorted(np.bincount(a).tolist()) == [2, 3, 5]
    np.testing.assert_array_equal(a, canonical_labels(a))
    np.testing.assert_array_equal(a, random_grouping([3, 5, 2], 10, seed=1))
    assert any(
        not np.array_equal(a, random_grouping([3, 5, 2], 10, seed=s)) for s in range(2, 6)
    )
    with pytest.raises(ValueError, match="sizes must sum to n = 9"):
        random_grouping([3, 5, 2], 9)
    with pytest.raises(ValueError, match="positive integers"):
        random_grouping([3, 0, 7], 10)


@pytest.mark.parametrize("allow_merge", [True, False])
def test_local_search_reaches_a_single_move_optimum(allow_merge: bool) -> None:
    from policygradex.group.sdp import _local_search

    rng = np.random.default_rng(3)
    n, pen = 9, 0.4
    E = rng.normal(size=(n, n))
    U = (E + E.T) / 2
    start = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2])
    out = _local_search(U, start, pen, allow_merge=allow_merge, max_moves=100)
    best = partition_objective(U, out, pen)
    assert best >= partition_objective(U, start, pen)
    if not allow_merge:
        assert np.bincount(out).min() >= 1 and out.max() + 1 == 3
    # No single move to an existing group improves (brute force over all moves).
    for i in range(n):
        for c in range(int(out.max()) + 1):
            if c == out[i]:
                continue
            moved = out.copy()
            moved[i] = c
            if not allow_merge and np.sum(out == out[i]) == 1:
                continue
            assert partition_objective(U, moved, pen) <= best + 1e-9
