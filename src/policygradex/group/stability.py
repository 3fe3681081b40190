"""Bootstrap stability of a grouping: how often each task keeps its partners.

The subsets are resampled with replacement ``n_boot`` times; each resample goes through the
same affinity and grouping code (same k mode and penalty rule).  For task i and resample b,
agreement_b(i) is the fraction of other tasks j whose relation to i (same group or not) is
the same as in the reported grouping.  A task's stability is the mean agreement over
resamples (1.0: its group never changes; ~0.5 for a task that moves at random between two
groups).  ``mean_ari`` is the mean adjusted Rand index of the resampled groupings against the
reported one.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import adjusted_rand_score

from ..estimate.affinity import as_tables, table_affinity
from .partitions import side_agreement
from .sdp import group_tasks


def bootstrap_stability(f: np.ndarray, members: np.ndarray, labels: np.ndarray, k: int | None = None,
                        penalty_scale: float = 4.0, solver: str = "auto", n_boot: int = 50, seed: int = 0) -> dict:
    tables = as_tables(f)  # several: one training's checkpoints
    labels = np.asarray(labels)
    n = labels.size
    rng = np.random.default_rng(seed)
    agree = np.zeros(n)
    co = np.zeros((n, n))
    aris = []
    for _ in range(n_boot):
        rows = rng.integers(0, members.shape[0], members.shape[0])
        lab = group_tasks(table_affinity([t[rows] for t in tables], members[rows]), k=k, penalty_scale=penalty_scale, solver=solver).labels
        co += lab[:, None] == lab[None, :]
        agree += side_agreement(labels, lab)
        aris.append(adjusted_rand_score(labels, lab))
    return {"per_task": (agree / n_boot).tolist(), "co_assignment": (co / n_boot).tolist(),
            "mean_ari": float(np.mean(aris)), "n_boot": n_boot}
