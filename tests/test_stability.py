import numpy as np

from policygradex.estimate.subsets import sample_subsets
from policygradex.group.stability import bootstrap_stability


def planted_f(members, clusters, noise, rng):
    f = np.full(members.shape, np.nan)
    for s, row in enumerate(members):
        idx = np.flatnonzero(row)
        for i in idx:
            f[s, i] = np.mean(clusters[idx] == clusters[i]) + noise * rng.standard_normal()
    return f


def test_planted_structure_is_stable_and_noise_is_not():
    rng = np.random.default_rng(0)
    clusters = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    members = sample_subsets(8, 4, 5, seed=0)
    planted = bootstrap_stability(planted_f(members, clusters, 0.05, rng), members, clusters, k=2, n_boot=20, seed=1)
    assert planted["mean_ari"] > 0.9 and min(planted["per_task"]) > 0.9
    co = np.array(planted["co_assignment"])
    assert co.shape == (8, 8) and np.allclose(np.diag(co), 1.0)
    noise = np.where(members, rng.standard_normal(members.shape), np.nan)
    shaky = bootstrap_stability(noise, members, clusters, k=2, n_boot=20, seed=1)
    assert shaky["mean_ari"] < 0.5 and np.mean(shaky["per_task"]) < np.mean(planted["per_task"])


def test_side_agreement_counts_the_partners_a_task_keeps():
    """The measure shared by the bootstrap and the replicates' leave-one-out stability."""
    from policygradex.group.partitions import side_agreement

    ref = [0, 0, 1, 1]
    np.testing.assert_allclose(side_agreement(ref, [5, 5, 7, 7]), 1.0)  # same partition, other label names
    # task 1 moves to the other group: it changes its relation to all 3 others; each other task to 1 of 3
    np.testing.assert_allclose(side_agreement(ref, [0, 1, 1, 1]), [2 / 3, 0, 2 / 3, 2 / 3])
    np.testing.assert_allclose(side_agreement(ref, [0, 1, 2, 3]), [2 / 3] * 4)  # all apart: each loses its one partner
