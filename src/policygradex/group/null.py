"""Permutation null test: are the groups distinguishable from what noise produces?

Why
---
Standardizing ``f`` per task (stage 4) gives affinity entries of about +-0.5 whether or not the
tasks interact, and the SDP always returns *some* partition, so a grouping on its own is no
evidence of structure (METHOD.md prototype notes: on a physics-only family the groups changed
completely between two seeds).  This test compares the grouping found on the data with the
groupings found on data in which any link between a subset's composition and a task's
performance has been destroyed.

Null hypothesis and permutations
--------------------------------
H0: the performance of task ``i`` does not depend on which other tasks share its subset.
Under H0 the values ``{f[s, i] : s contains i}`` are exchangeable among those subsets.  One
permutation draws, independently for every target task ``i``, a random permutation of
``f[s, i]`` among the subsets ``s`` that contain ``i``.  The membership pattern, every task's
marginal distribution of ``f`` (hence its standardization) and the pair counts are unchanged;
only the composition-performance link is broken.  Each permuted table goes through exactly the
same pipeline as the data: :func:`~policygradex.estimate.affinity.build_affinity`, then
:func:`~policygradex.group.sdp.group_tasks` with the same ``k`` mode, penalty-scale rule and
solver (in auto-k mode the number of groups is re-chosen on every permutation), then the
statistic.  The p-value is ``(1 + #{null >= observed}) / (1 + n_perm)``, which is valid (never
anti-conservative) for any statistic computed the same way on every table.

Statistic: within-minus-between contrast
----------------------------------------
``T = mean_{i<j, same group} U_ij - mean_{i<j, different groups} U_ij`` for the partition the
grouping procedure returns; ``T = 0`` when the partition has one group or only singletons
(no pair on one side, no contrast).  Chosen over the SDP optimal value because

* it is in the units of ``U``, standard deviations of a task's own performance, and those
  units are identical for the data and for every permutation (each permuted column is a
  reordering of the observed one, so its mean and standard deviation are unchanged); no
  further normalization is needed to compare them;
* it does not contain the auto-k penalty ``4 * mean |U|``, which is itself data dependent: the
  SDP value ``<U, X> - lam * trace X`` *falls* as noise inflates ``mean |U|``, mixing
  structure with noise level;
* it scores the partition that is actually reported, and it reads as an effect size: "tasks
  gain ``T`` standard deviations more from a partner in their own group than from one in
  another group".

Cost: one SDP per permutation; with Clarabel at ``n = 10`` that is a few hundredths of a
second, so ``n_perm = 100`` takes a few seconds on one core.

Parallel solves.  Given an execution backend (:mod:`policygradex.backend`) that runs more than
one unit at a time, the driver still draws every permuted table in order from the one seeded
generator and builds its affinity, exactly as the serial loop does; only the SDP solves (and
the statistic) run as units, ``chunk`` permutations per unit.  The tables, hence the null
statistics and the p-value, are the same as without a backend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..backend import Resources, Unit
from ..estimate.affinity import Affinity, as_tables, build_affinity, table_affinity
from .sdp import DEFAULT_PENALTY_SCALE, Grouping, GroupingInputError, canonical_labels, group_tasks

__all__ = ["NullTest", "null_test", "solve_null_affinities", "within_between_contrast"]


@dataclass(frozen=True)
class NullTest:
    """Result of :func:`null_test`.

    Attributes:
        p_value: ``(1 + #{null_stats >= observed}) / (1 + n_perm)``.
        observed: the statistic on the data (within-minus-between mean affinity).
        null_stats: ``[n_perm]`` the statistic on each permuted table.
        n_perm: number of permutations.
        grouping: the grouping of the observed data.
        U: ``[n, n]`` the affinity that ``grouping`` was made on (:func:`table_affinity` of the tables).
        affinity: the :class:`Affinity` of the first table (theta*'s), built once to check the inputs.
        null_k: ``[n_perm]`` number of groups chosen on each permuted table.
        statistic: name of the statistic (``"within_minus_between"``).
    """

    p_value: float
    observed: float
    null_stats: np.ndarray
    n_perm: int
    grouping: Grouping
    null_k: np.ndarray
    U: np.ndarray
    affinity: Affinity
    statistic: str = "within_minus_between"


def within_between_contrast(U: np.ndarray, labels: np.ndarray) -> float:
    """Mean affinity over same-group pairs minus mean over different-group pairs (``i < j``).

    Returns 0 when either side has no pair (one group, or all singletons).
    """
    lab = canonical_labels(labels)
    U = np.asarray(U, dtype=np.float64)
    iu, ju = np.triu_indices(lab.size, k=1)
    same = lab[iu] == lab[ju]
    if not same.any() or same.all():
        return 0.0
    vals = U[iu, ju]
    return float(vals[same].mean() - vals[~same].mean())


def _permute_within_tasks(f: np.ndarray, members: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Permute each column of ``f`` among the subsets that contain that task."""
    out = f.copy()
    for i in range(f.shape[1]):
        rows = np.flatnonzero(members[:, i])
        out[rows, i] = f[rng.permutation(rows), i]
    return out


def _null_chunk(ctx: dict, payload: tuple) -> tuple[list[float], list[int]]:
    """One unit of the parallel null test: the grouping and statistic of each affinity in ``payload``."""
    _, Us = payload
    solved = [_solve_one(U_b, ctx["k"], ctx["penalty_scale"], ctx["solver"]) for U_b in Us]
    return [st for st, _ in solved], [k for _, k in solved]


def _solve_one(U_b: np.ndarray, k, penalty_scale, solver) -> tuple[float, int]:
    """The statistic and the number of groups of one permuted affinity."""
    g_b = group_tasks(U_b, k=k, penalty_scale=penalty_scale, solver=solver)
    return within_between_contrast(U_b, g_b.labels), int(g_b.k)


def _chunk_size(n_perm: int, parallelism: int) -> int:
    """Permutations per unit: 20 to 50, fewer units than about 2 per parallel slot only when that is needed."""
    return int(min(50, max(20, math.ceil(n_perm / (2 * max(1, parallelism))))))


def null_test(
    f: np.ndarray,
    members: np.ndarray,
    k: int | None = None,
    penalty_scale: float = DEFAULT_PENALTY_SCALE,
    n_perm: int = 100,
    seed: int | None = 0,
    solver: str = "auto",
    backend=None,
    chunk: int | None = None,
) -> NullTest:
    """Permutation test of the grouping found on ``f`` against groupings of permuted ``f``.

    Args:
        f: ``[m, n]`` performance table (see :func:`~policygradex.estimate.affinity.build_affinity`),
            or a list of such tables on the same subsets (one training's checkpoints,
            :func:`~policygradex.estimate.affinity.table_affinity`); each is permuted on its own.
        members: ``[m, n]`` bool subset membership.
        k: fixed number of groups, or None for auto-k (penalty ``penalty_scale * mean |U|``,
            recomputed on every permuted affinity).
        penalty_scale: multiplier of the auto-k penalty rule.
        n_perm: number of permutations (>= 1); the smallest attainable p is ``1 / (1 + n_perm)``.
        seed: seed of the permutations (the result is deterministic given it).
        solver: SDP solver, as in :func:`~policygradex.group.sdp.group_tasks`.
        backend: an execution backend (:mod:`policygradex.backend`); with ``parallelism > 1``
            the permutations' SDP solves run on it as units (the tables are still drawn here,
            in order: the result is the same as without it).
        chunk: permutations per unit on ``backend`` (default: 20 to 50, see :func:`_chunk_size`);
            when all permutations fit in one chunk they are solved here.

    Returns:
        A :class:`NullTest`.

    Raises:
        ValueError: invalid ``f``/``members`` (named) or grouping arguments, or ``n_perm < 1``.
    """
    if isinstance(n_perm, (bool, np.bool_)) or not isinstance(n_perm, (int, np.integer)) or n_perm < 1:
        raise GroupingInputError(f"n_perm must be an integer >= 1; got {n_perm!r}")
    tables = as_tables(f)
    aff = build_affinity(tables[0], members)  # validates f and members
    m_arr = ~np.isnan(aff.z)
    U = aff.U if len(tables) == 1 else table_affinity(tables, m_arr)  # validates the other tables

    observed_grouping = group_tasks(U, k=k, penalty_scale=penalty_scale, solver=solver)
    observed = within_between_contrast(U, observed_grouping.labels)

    rng = np.random.default_rng(seed)
    null_stats = np.empty(int(n_perm))
    null_k = np.empty(int(n_perm), dtype=np.int64)
    if chunk is None and backend is not None:
        chunk = _chunk_size(int(n_perm), backend.parallelism)
    if chunk is not None and (isinstance(chunk, (bool, np.bool_)) or not isinstance(chunk, (int, np.integer)) or chunk < 1):
        raise GroupingInputError(f"chunk must be an integer >= 1; got {chunk!r}")
    if backend is not None and backend.parallelism > 1 and n_perm > chunk:  # one chunk: not worth starting workers
        _null_on_backend(backend, tables, m_arr, rng, int(n_perm), k, penalty_scale, solver, int(chunk), null_stats, null_k)
    else:
        for b in range(int(n_perm)):
            null_stats[b], null_k[b] = _solve_one(_permuted_affinity(tables, m_arr, rng), k, penalty_scale, solver)
    # Statistics equal up to rounding count as ties (>=), keeping the test conservative.
    tol = 1e-12 * max(1.0, abs(observed))
    exceed = int(np.sum(null_stats >= observed - tol))
    return NullTest(
        p_value=(1.0 + exceed) / (1.0 + n_perm),
        observed=observed,
        null_stats=null_stats,
        n_perm=int(n_perm),
        grouping=observed_grouping,
        null_k=null_k,
        U=U,
        affinity=aff,
    )


def _permuted_affinity(tables: list[np.ndarray], m_arr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One null draw: every table permuted within tasks on its own, their affinity rebuilt as observed."""
    return table_affinity([_permute_within_tasks(t, m_arr, rng) for t in tables], m_arr)


def _null_on_backend(backend, tables, m_arr, rng, n_perm, k, penalty_scale, solver, chunk, null_stats, null_k) -> None:
    """The permutations of :func:`null_test` as units of ``backend``: every table drawn here, in
    order (the serial sequence of the generator), the solves ``chunk`` at a time in the units."""
    Us = [_permuted_affinity(tables, m_arr, rng) for _ in range(n_perm)]
    null_stats[:], null_k[:] = solve_null_affinities(Us, k, penalty_scale, solver, backend, chunk)


def solve_null_affinities(Us: list[np.ndarray], k, penalty_scale, solver, backend=None, chunk: int | None = None,
                          what: str = "null-test permutations") -> tuple[np.ndarray, np.ndarray]:
    """The within-minus-between statistic and the number of groups of the grouping of each
    affinity in ``Us`` (the null draws of a permutation test), ``chunk`` per unit on ``backend``
    when it runs more than one unit at a time, else here; the same numbers either way."""
    n = len(Us)
    stats, ks = np.empty(n), np.empty(n, dtype=np.int64)
    if backend is None or backend.parallelism <= 1 or n <= (chunk or _chunk_size(n, backend.parallelism)):
        for b, U_b in enumerate(Us):
            stats[b], ks[b] = _solve_one(U_b, k, penalty_scale, solver)
        return stats, ks
    chunk = chunk or _chunk_size(n, backend.parallelism)
    units = [Unit(f"perm{lo}", (lo, Us[lo:lo + chunk]), (), f"{what} {lo + 1}-{min(lo + chunk, n)} of {n}",
                  float(min(chunk, n - lo))) for lo in range(0, n, chunk)]
    shared = {"k": k, "penalty_scale": penalty_scale, "solver": solver}
    for unit, (st, kk) in backend.map(_null_chunk, units, shared=shared, resources=Resources(cpus=1)):
        lo = unit.payload[0]
        stats[lo:lo + len(st)] = st
        ks[lo:lo + len(kk)] = kk
    return stats, ks
