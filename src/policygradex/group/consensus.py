"""Consensus of replicate affinities, and a verdict calibrated where tasks are exchangeable.

Why
---
The permutation null test (:mod:`policygradex.group.null`) asks whether ``f`` depends on subset
composition *for one theta**.  It does not ask whether another theta* would give the same groups,
and on suites of identical tasks it finds "structure" that comes from one theta*'s particular
task embedding.  Replicates answer the second question: ``R`` independent estimates of the
affinity (by default independent meta-training seeds, each with its own rollouts, projector and
subsets).

Consensus
---------
Each replicate's affinity ``U_r`` is standardized over its off-diagonal entries (mean 0, standard
deviation 1, so no replicate weighs more because its scale is larger); the consensus affinity is
their mean, and the consensus groups are the SDP grouping of it with the run's ``k`` mode and
penalty rule.  The co-association matrix ``C[i, j]`` is the fraction of replicates whose own
grouping puts ``i`` and ``j`` together.

Calibrated verdict
------------------
H0: the replicates' affinities are exchangeable in the task labels, jointly over independent
replicates (true for identical tasks, whatever each theta* happens to embed).  One null draw
relabels every replicate's affinity by its own random permutation of the tasks, independently
(``P_r U_r P_r^T``), and takes the consensus of the relabelled replicates; agreement between
replicates is destroyed, each replicate's own structure is kept.  Every null consensus goes
through the same grouping and statistic as the data (the within-minus-between contrast of
:func:`~policygradex.group.null.within_between_contrast` under the grouping found; in auto-k mode
``k`` is re-chosen on every draw).  The p-value ``(1 + #{null >= observed}) / (1 + n_perm)`` is
valid under H0 for any ``R >= 2``.  The first replicate is never relabelled: the statistic does not
depend on the labels' names, so relabelling all or all but one gives the same distribution.

It needs independent replicates: replicates that share one theta* (other checkpoints of one
training, other projections of one theta*) share that theta*'s embedding, and their agreement is
not evidence that another training would agree.  With one replicate the relabelled consensus is
the data itself up to names (p = 1 always), so a run with one replicate uses the per-theta*
test instead, and says that its verdict is not calibrated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..estimate.affinity import consensus_affinity, standardize_offdiagonal
from .null import solve_null_affinities, within_between_contrast
from .partitions import side_agreement
from .sdp import DEFAULT_PENALTY_SCALE, Grouping, GroupingInputError, group_tasks

__all__ = ["Consensus", "co_association", "consensus", "consensus_affinity", "standardize_offdiagonal"]


def co_association(labels: Sequence[Sequence[int]]) -> np.ndarray:
    """``[n, n]``: the fraction of the groupings (one label vector each) that put ``i`` and ``j``
    in one group (1 on the diagonal)."""
    L = np.asarray(labels)
    return np.mean(L[:, :, None] == L[:, None, :], axis=0).astype(np.float64)


@dataclass(frozen=True)
class Consensus:
    """Result of :func:`consensus`.

    Attributes:
        U: ``[n, n]`` consensus affinity.
        co_association: ``[n, n]`` fraction of replicates grouping each pair together.
        grouping: the consensus grouping (SDP on ``U``).
        replicate_groupings: each replicate's own grouping of its affinity.
        stability: ``[n]`` per task, leave one replicate out: the mean over replicates ``r`` of
            the fraction of other tasks on whose side (same group or not) the consensus of the
            other replicates agrees with the full consensus (with two replicates, each one alone;
            with one, 1).  Low for a task whose place hinges on a single training.
        p_value, observed, null_stats, null_k, n_perm: the calibrated test (``p_value`` is None
            with one replicate: no such test exists).
    """

    U: np.ndarray
    co_association: np.ndarray
    grouping: Grouping
    replicate_groupings: list[Grouping]
    stability: np.ndarray
    p_value: float | None
    observed: float
    null_stats: np.ndarray
    null_k: np.ndarray
    n_perm: int
    statistic: str = "within_minus_between"


def _relabelled(Us: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """One null draw: the consensus of the replicates, each but the first relabelled by its own permutation."""
    out = [Us[0]]
    for U in Us[1:]:
        p = rng.permutation(U.shape[0])
        out.append(U[np.ix_(p, p)])
    return np.mean(out, axis=0)


def _leave_one_out(Z: list[np.ndarray], labels: np.ndarray, k, penalty, penalty_scale, solver) -> np.ndarray:
    """Per task, how often the consensus without one replicate keeps its side of every other task
    (see :attr:`Consensus.stability`)."""
    n = labels.size
    if len(Z) < 2 or n < 2:
        return np.ones(n)
    agree = []
    for r in range(len(Z)):
        U_r = np.mean([z for i, z in enumerate(Z) if i != r], axis=0)
        g_r = group_tasks(U_r, penalty=penalty, solver=solver) if penalty is not None and k is None else \
            group_tasks(U_r, k=k, penalty_scale=penalty_scale, solver=solver)
        agree.append(side_agreement(labels, g_r.labels))
    return np.mean(agree, axis=0)


def consensus(Us: Sequence[np.ndarray], k: int | None = None, penalty: float | None = None,
              penalty_scale: float = DEFAULT_PENALTY_SCALE, n_perm: int = 200, seed: int | None = 0, solver: str = "auto",
              backend=None) -> Consensus:
    """Consensus grouping of the replicate affinities ``Us`` and its calibrated test.

    ``k``/``penalty``/``penalty_scale``/``solver`` as in :func:`~policygradex.group.sdp.group_tasks`
    (an explicit ``penalty`` is used for the consensus grouping; the null draws use the penalty
    rule, as the per-theta* null test does).  ``backend`` runs the null draws' SDP solves (the
    draws are made here, in order: the result does not depend on it)."""
    Us = [np.asarray(U, dtype=np.float64) for U in Us]
    if not Us:
        raise GroupingInputError("consensus needs at least one replicate affinity")
    n = Us[0].shape[0]
    if any(U.shape != (n, n) for U in Us):
        raise GroupingInputError(f"replicate affinities must all be {n}x{n}; got {[U.shape for U in Us]}")
    if isinstance(n_perm, bool) or not isinstance(n_perm, (int, np.integer)) or n_perm < 1:
        raise GroupingInputError(f"n_perm must be an integer >= 1; got {n_perm!r}")
    Z = [standardize_offdiagonal(U) for U in Us]
    U_c = np.mean(Z, axis=0)
    reps = [group_tasks(U, k=k, penalty_scale=penalty_scale, solver=solver) for U in Z]
    g_rule = group_tasks(U_c, k=k, penalty_scale=penalty_scale, solver=solver)  # the grouping the null draws also get
    g = group_tasks(U_c, penalty=penalty, solver=solver) if penalty is not None and k is None else g_rule
    C = co_association([r.labels for r in reps])
    stability = _leave_one_out(Z, g.labels, k, penalty, penalty_scale, solver)
    observed = within_between_contrast(U_c, g_rule.labels)
    if len(Us) < 2:
        return Consensus(U_c, C, g, reps, stability, None, observed, np.empty(0), np.empty(0, dtype=np.int64), 0)
    rng = np.random.default_rng(seed)
    null_Us = [_relabelled(Z, rng) for _ in range(int(n_perm))]
    null_stats, null_k = solve_null_affinities(null_Us, k, penalty_scale, solver, backend, what="consensus null draws")
    tol = 1e-12 * max(1.0, abs(observed))  # ties count against the data: conservative
    p = (1.0 + int(np.sum(null_stats >= observed - tol))) / (1.0 + n_perm)
    return Consensus(U_c, C, g, reps, stability, p, observed, null_stats, null_k, int(n_perm))
