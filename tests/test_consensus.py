"""Consensus of replicate affinities and its calibrated test, on synthetic affinities (no training).

The calibration tests draw replicates that each have structure of their own, at random, so that
they are exchangeable in the task labels by construction: at the 5% level a calibrated test is significant in about 1 run of 20.  Their
bounds leave room for float differences between CPUs (a borderline p may move by one draw)."""

from __future__ import annotations

import numpy as np
import pytest

from policygradex.group.consensus import co_association, consensus, consensus_affinity, standardize_offdiagonal
from policygradex.group.sdp import GroupingInputError

PLANTED = np.array([0, 0, 0, 0, 1, 1, 1, 1])


def _noise(rng, n=8):
    a = rng.normal(size=(n, n))
    return (a + a.T) / 2


def _planted(rng, signal=0.6, labels=PLANTED):
    block = np.where(labels[:, None] == labels[None, :], 1.0, -1.0)
    return signal * block + _noise(rng, labels.size)


def test_consensus_of_identical_replicates_equals_each_replicate():
    U = _planted(np.random.default_rng(0))
    one = consensus([U], k=None, n_perm=5, seed=0)
    three = consensus([U, U.copy(), U.copy()], k=None, n_perm=19, seed=0)
    np.testing.assert_allclose(three.U, standardize_offdiagonal(U))
    np.testing.assert_array_equal(three.grouping.labels, one.grouping.labels)
    assert all(np.array_equal(g.labels, one.grouping.labels) for g in three.replicate_groupings)
    same = one.grouping.labels[:, None] == one.grouping.labels[None, :]
    np.testing.assert_array_equal(three.co_association, same.astype(float))  # 0/1: every replicate agrees
    np.testing.assert_array_equal(three.stability, np.ones(8))


def test_one_replicate_has_no_calibrated_p_value():
    c = consensus([_planted(np.random.default_rng(1))], n_perm=10)
    assert c.p_value is None and c.n_perm == 0


def test_co_association_of_a_planted_family_is_block_diagonal():
    rng = np.random.default_rng(2)
    c = consensus([_planted(rng) for _ in range(5)], k=2, n_perm=39, seed=0)
    same = PLANTED[:, None] == PLANTED[None, :]
    off = ~np.eye(8, dtype=bool)
    assert c.co_association[same & off].min() > c.co_association[~same].max()
    assert sorted(map(sorted, c.grouping.groups)) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert c.p_value < 0.05


def test_standardization_gives_every_replicate_the_same_weight():
    rng = np.random.default_rng(3)
    U = _planted(rng)
    np.testing.assert_allclose(consensus_affinity([U, 1000.0 * U]), standardize_offdiagonal(U))
    z = standardize_offdiagonal(U)[~np.eye(8, dtype=bool)]
    assert abs(z.mean()) < 1e-12 and abs(z.std() - 1) < 1e-12
    assert not standardize_offdiagonal(np.ones((4, 4))).any()


def test_co_association_counts_pairs():
    C = co_association([[0, 0, 1], [0, 1, 1]])
    np.testing.assert_allclose(C, [[1, 0.5, 0], [0.5, 1, 0.5], [0, 0.5, 1]])


@pytest.mark.parametrize("k", [None, 2], ids=["auto-k", "k=2"])
def test_verdict_on_exchangeable_replicates_is_calibrated(k):
    """Each replicate has strong structure of its own (a random 4+4 split: what one theta*'s task
    embedding does to identical tasks), and nothing is shared between replicates.  10 runs of 3
    replicates: expect 0.5 significant at 5%; P(4 or more) = 0.1% for a calibrated test."""
    significant = 0
    for run in range(10):
        rng = np.random.default_rng(100 + run)
        c = consensus([_planted(rng, 0.8, rng.permutation(PLANTED)) for _ in range(3)], k=k, n_perm=29, seed=run)
        significant += c.p_value < 0.05
    assert significant <= 3


def test_bad_inputs_are_named():
    with pytest.raises(GroupingInputError, match="at least one"):
        consensus([])
    with pytest.raises(GroupingInputError, match="8x8"):
        consensus([np.zeros((8, 8)), np.zeros((7, 7))])
    with pytest.raises(GroupingInputError, match="n_perm"):
        consensus([np.zeros((3, 3))] * 2, n_perm=0)


# ---------------------------------------------------------------- one training's window of checkpoints

def _f_table(rng, m=24, n=8, size=4, labels=PLANTED, signal=1.0):
    """A performance table on random subsets: tasks do better beside their own cluster."""
    members = np.zeros((m, n), dtype=bool)
    for s in range(m):
        members[s, rng.choice(n, size, replace=False)] = True
    f = np.full((m, n), np.nan)
    for s in range(m):
        for i in np.flatnonzero(members[s]):
            same = (labels[members[s]] == labels[i]).sum() - 1
            f[s, i] = signal * same + rng.normal()
    return f, members


def test_a_window_of_one_table_is_the_plain_test():
    from policygradex.estimate.affinity import build_affinity, table_affinity
    from policygradex.group.null import null_test
    from policygradex.group.stability import bootstrap_stability

    f, members = _f_table(np.random.default_rng(1))
    np.testing.assert_array_equal(table_affinity([f], members), build_affinity(f, members).U)
    a, b = null_test(f, members, n_perm=15, seed=3), null_test([f], members, n_perm=15, seed=3)
    assert a.p_value == b.p_value and np.array_equal(a.null_stats, b.null_stats)
    labels = a.grouping.labels
    assert bootstrap_stability(f, members, labels, n_boot=5) == bootstrap_stability([f], members, labels, n_boot=5)


def test_a_window_averages_standardized_affinities_and_is_permuted_table_by_table():
    from policygradex.estimate.affinity import build_affinity, table_affinity
    from policygradex.group.null import null_test

    rng = np.random.default_rng(2)
    f1, members = _f_table(rng)
    f2 = np.where(members, 100.0 * f1 + 7.0, np.nan)  # another checkpoint: the same ranking on another scale
    U = table_affinity([f1, f2], members)
    np.testing.assert_allclose(U, standardize_offdiagonal(build_affinity(f1, members).U), atol=1e-12)  # scale-free
    np.testing.assert_allclose(U, consensus_affinity([build_affinity(f, members).U for f in (f1, f2)]))
    nt = null_test([f1, f2], members, n_perm=39, seed=0)
    assert nt.p_value <= 0.05 and list(nt.grouping.labels) in ([0] * 4 + [1] * 4, [1] * 4 + [0] * 4)
    with pytest.raises(ValueError, match="f must be finite exactly where members is True"):  # the same subsets
        table_affinity([f1, f1[:, ::-1]], members)


def test_stability_leaves_one_replicate_out():
    """With two replicates, leaving one out leaves the other alone: the stability is each
    replicate's own agreement with the consensus, averaged (recomputed here)."""
    rng = np.random.default_rng(5)
    Us = [_planted(rng, signal=0.4), _noise(rng)]
    c = consensus(Us, n_perm=5, seed=0)
    same = c.grouping.labels[:, None] == c.grouping.labels[None, :]
    off = ~np.eye(8, dtype=bool)
    mine = np.mean([((g.labels[:, None] == g.labels[None, :]) == same)[off].reshape(8, 7).mean(axis=1)
                    for g in c.replicate_groupings], axis=0)
    np.testing.assert_allclose(c.stability, mine)
    assert ((0 <= c.stability) & (c.stability <= 1)).all()
