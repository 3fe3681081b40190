"""Partitions of ``n`` tasks as label vectors: canonical labels, groups, the partition matrix
``X_P = sum_c 1_c 1_c^T / |C_c|`` and its objective ``<U, X_P> - penalty * k`` (see
:mod:`policygradex.group.sdp`), and the random-grouping baseline.

Labels are canonical when groups are numbered 0, 1, ... in the order of their smallest task
index; every function here accepts any integer labels and works on their canonical form.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import UserError

__all__ = [
    "GroupingInputError",
    "canonical_labels",
    "groups_from_labels",
    "partition_matrix",
    "partition_objective",
    "random_grouping",
    "side_agreement",
]


class GroupingInputError(UserError, ValueError):
    """An argument of the grouping functions is invalid; the message names it."""

    transient = False


def canonical_labels(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    """Relabel so that groups are numbered 0, 1, ... in the order of their smallest member."""
    lab = np.asarray(labels)
    if lab.ndim != 1:
        raise GroupingInputError(f"labels must be a 1-D array; got shape {lab.shape}")
    if lab.size == 0:
        return np.zeros(0, dtype=np.int64)
    _, first, inverse = np.unique(lab, return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    return rank[inverse.ravel()]


def groups_from_labels(labels: Sequence[int] | np.ndarray) -> list[list[int]]:
    """The groups of a labelling as sorted lists of task indices, in canonical order."""
    lab = canonical_labels(labels)
    k = int(lab.max()) + 1 if lab.size else 0
    return [np.nonzero(lab == c)[0].tolist() for c in range(k)]


def side_agreement(reference: Sequence[int] | np.ndarray, other: Sequence[int] | np.ndarray) -> np.ndarray:
    """Per task i, the fraction of the other tasks j whose relation to i (same group or not) is
    the same in ``other`` as in ``reference`` (1.0: i keeps exactly its partners).  The measure
    of both the bootstrap stability and the replicates' leave-one-out stability."""
    ref, oth = np.asarray(reference), np.asarray(other)
    n = ref.size
    if n < 2:
        return np.ones(n)
    same = (ref[:, None] == ref[None, :]) == (oth[:, None] == oth[None, :])
    return same[~np.eye(n, dtype=bool)].reshape(n, n - 1).mean(axis=1)


def partition_matrix(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    """``X_P = sum_c 1_c 1_c^T / |C_c|`` for a labelling (any integer labels)."""
    lab = canonical_labels(labels)
    sizes = np.bincount(lab)
    same = lab[:, None] == lab[None, :]
    return np.where(same, 1.0 / sizes[lab][:, None], 0.0)


def partition_objective(U: np.ndarray, labels: Sequence[int] | np.ndarray, penalty: float = 0.0) -> float:
    """``<U, X_P> - penalty * k`` for the partition given by ``labels``."""
    lab = canonical_labels(labels)
    k = int(lab.max()) + 1
    H = np.zeros((lab.size, k))
    H[np.arange(lab.size), lab] = 1.0
    sizes = H.sum(axis=0)
    within = np.einsum("ic,ij,jc->c", H, np.asarray(U, dtype=np.float64), H)
    return float(np.sum(within / sizes) - penalty * k)


def random_grouping(sizes: Sequence[int], n: int, seed: int | None = 0) -> np.ndarray:
    """A uniformly random partition of ``n`` tasks with the given group sizes (a baseline).

    Args:
        sizes: the group sizes, positive integers summing to ``n`` (e.g. those of a found
            grouping: ``[len(g) for g in grouping.groups]``).
        n: number of tasks.
        seed: seed of the random permutation.

    Returns:
        ``[n]`` canonical labels.
    """
    sz = [int(s) for s in sizes]
    if any(s < 1 for s in sz) or any(s != t for s, t in zip(sz, sizes)):
        raise GroupingInputError(f"sizes must be positive integers; got {list(sizes)}")
    if sum(sz) != n:
        raise GroupingInputError(f"sizes must sum to n = {n}; they sum to {sum(sz)}")
    perm = np.random.default_rng(seed).permutation(n)
    labels = np.empty(n, dtype=np.int64)
    labels[perm] = np.repeat(np.arange(len(sz)), sz)
    return canonical_labels(labels)

