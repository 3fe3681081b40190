"""Rounding of the relaxed SDP solution ``X`` (:mod:`policygradex.group.sdp`) to a partition.

Rounding
--------
The relaxed ``X`` is turned into a partition in which every task is assigned exactly once:

1. Candidate numbers of groups: the given ``k`` in fixed-k mode; in auto-k mode every ``k``
   from 1 to ``k_hat + 1``, ``k_hat = round(trace X)``.  A fractional ``X`` spreads mass over
   extra directions, so its trace is an unreliable count (it tends to overestimate ``k``
   under noise); the objective decides.
2. Candidate partitions for each ``k``: hierarchical clustering (average, complete, single
   and Ward linkage, cut after ``n - k`` merges, so exactly ``k`` clusters) of two task
   embeddings: the rows of ``X`` and the rows of ``V_k Lambda_k^{1/2}`` (the top-``k``
   eigenpairs of ``X``; for a partition matrix these rows are ``e_c / sqrt(|C_c|)``).  Each is
   also refined by Lloyd (k-means) iterations started from it in the same embedding.
3. The candidate with the largest objective ``<U, X_P> - lam * k`` (``lam = 0`` in fixed-k
   mode) wins; candidates within ``1e-9`` (relative) are broken by the smallest Frobenius
   distance ``||X - X_P||``.
4. The winner is polished by best-improvement single-task moves on the same objective (in
   auto-k mode a move may empty a group; in fixed-k mode ``k`` is kept).  This only ever
   raises the objective, so ``rounded_objective`` is at least that of every candidate; on a
   tight SDP (``X`` already a partition matrix) it changes nothing.

Linkage, Lloyd iterations and the moves use only pairwise distances and objective values,
none of which depends on task order, so permuting the tasks permutes the labels and leaves the
partition unchanged.  The only exception is an exact tie (two different partitions with the
same objective and the same distance to ``X``, e.g. a ``U`` with a symmetry), where no
order-independent choice exists; the first candidate is returned.  Labels are canonical:
groups are numbered in the order of their smallest task index.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.cluster.hierarchy import linkage
from scipy.spatial.distance import pdist

from .partitions import canonical_labels, partition_matrix, partition_objective

__all__ = ["round_partition"]

_LINKAGES = ("average", "complete", "single", "ward")


def _lloyd(F: np.ndarray, labels: np.ndarray, k: int, max_iter: int = 100) -> np.ndarray:
    """k-means (Lloyd) iterations in embedding ``F`` started from ``labels``; keeps k groups."""
    lab = labels
    for _ in range(max_iter):
        centers = np.stack([F[lab == c].mean(axis=0) for c in range(k)])
        d2 = ((F[:, None, :] - centers[None, :, :]) ** 2).sum(axis=-1)
        new = np.argmin(d2, axis=1)
        if np.unique(new).size < k or np.array_equal(new, lab):
            break
        lab = new
    return lab


def _cut(Z: np.ndarray, n: int, k: int) -> np.ndarray:
    """Labels of the ``k`` clusters left after the first ``n - k`` merges of linkage ``Z``."""
    clusters: dict[int, list[int]] = {i: [i] for i in range(n)}
    for step in range(n - k):
        a, b = int(Z[step, 0]), int(Z[step, 1])
        clusters[n + step] = clusters.pop(a) + clusters.pop(b)
    labels = np.empty(n, dtype=np.int64)
    for c, members in enumerate(clusters.values()):
        labels[members] = c
    return labels


def _candidate_partitions(X: np.ndarray, ks: Sequence[int]) -> list[np.ndarray]:
    """Candidate labellings with exactly ``k`` groups for each ``k`` in ``ks`` (module docstring)."""
    n = X.shape[0]
    w, V = np.linalg.eigh(X)
    row_trees = [linkage(pdist(X), method=m) for m in _LINKAGES] if n > 2 else []
    out: list[np.ndarray] = []
    for k in ks:
        if k == 1:
            out.append(np.zeros(n, dtype=np.int64))
            continue
        if k == n:
            out.append(np.arange(n, dtype=np.int64))
            continue
        spectral = V[:, -k:] * np.sqrt(np.clip(w[-k:], 0.0, None))
        spectral_trees = [linkage(pdist(spectral), method=m) for m in _LINKAGES]
        for F, trees in ((X, row_trees), (spectral, spectral_trees)):
            for Z in trees:
                lab = _cut(Z, n, k)
                out.append(lab)
                out.append(_lloyd(F, lab, k))
    return out


def _local_search(
    U: np.ndarray, labels: np.ndarray, penalty: float, allow_merge: bool, max_moves: int
) -> np.ndarray:
    """Best-improvement single-task moves on ``<U, X_P> - penalty * k``.

    With ``S_c = sum_{i, j in C_c} U_ij`` the objective is ``sum_c S_c / |C_c| - penalty * k``;
    moving task ``i`` from group ``a`` to ``b`` changes ``S_a`` by ``-2 r_ia + U_ii`` and ``S_b``
    by ``+2 r_ib + U_ii`` (``r_ic = sum_{j in C_c} U_ij``), so every move is scored at once from
    ``R = U H``.  A move that empties a group (``k`` drops by one, the penalty is refunded) is
    allowed only when ``allow_merge`` (auto-k mode).  Ties between moves are broken by index,
    which matters only for exactly equal gains.
    """
    lab = canonical_labels(labels)
    n = lab.size
    diag = np.diag(U)
    for _ in range(max_moves):
        k = int(lab.max()) + 1
        H = np.zeros((n, k))
        H[np.arange(n), lab] = 1.0
        R = U @ H  # r_ic
        sizes = H.sum(axis=0)
        S = np.einsum("ic,ic->c", H, R)
        base = S / sizes
        a = lab
        size_a = sizes[a]
        # Source group after removing i (0 if it empties; then the penalty is refunded).
        S_a_new = S[a] - 2.0 * R[np.arange(n), a] + diag
        src_new = np.where(size_a > 1, S_a_new / np.maximum(size_a - 1, 1), 0.0)
        src_gain = src_new - base[a] + np.where(size_a > 1, 0.0, penalty)
        dst_gain = (S[None, :] + 2.0 * R + diag[:, None]) / (sizes[None, :] + 1) - base[None, :]
        gain = src_gain[:, None] + dst_gain
        gain[np.arange(n), a] = -np.inf  # not a move
        if not allow_merge:
            gain[size_a <= 1, :] = -np.inf
        i, c = np.unravel_index(int(np.argmax(gain)), gain.shape)
        if gain[i, c] <= 1e-10 * max(1.0, float(np.abs(base).sum())):
            break
        lab = lab.copy()
        lab[i] = c
        lab = canonical_labels(lab)
    return lab


def round_partition(
    U: np.ndarray, X: np.ndarray, ks: Sequence[int], penalty: float, allow_merge: bool
) -> np.ndarray:
    """Best candidate partition (largest objective, then closest to ``X``), then polished."""
    seen: dict[tuple[int, ...], tuple[float, float]] = {}
    for lab in _candidate_partitions(X, ks):
        canon = canonical_labels(lab)
        key = tuple(canon.tolist())
        if key in seen:
            continue
        obj = partition_objective(U, canon, penalty)
        dist = float(np.linalg.norm(X - partition_matrix(canon)))
        seen[key] = (obj, dist)
    best_obj = max(v[0] for v in seen.values())
    tol = 1e-9 * max(1.0, abs(best_obj), float(np.abs(U).sum()))
    finalists = [(v[1], key) for key, v in seen.items() if v[0] >= best_obj - tol]
    best_dist = min(d for d, _ in finalists)
    chosen = next(key for d, key in finalists if d <= best_dist + 1e-12)
    return _local_search(U, np.asarray(chosen, dtype=np.int64), penalty, allow_merge, 10 * len(chosen))
