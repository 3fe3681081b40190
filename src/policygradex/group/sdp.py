"""Task grouping by the Peng–Wei SDP relaxation of partition clustering (METHOD.md, stage 5).

The problem
-----------
A partition of the ``n`` tasks into groups ``C_1..C_k`` is encoded by its *partition matrix*

    X_P = sum_c 1_c 1_c^T / |C_c|,

which is symmetric PSD, elementwise nonnegative, has ``X_P 1 = 1`` and ``trace(X_P) = k``.
Its inner product with a symmetric affinity ``U`` is the total within-group affinity

    <U, X_P> = sum_c (1 / |C_c|) sum_{i, j in C_c} U_ij,

so "find groups of tasks that help each other" is ``max_P <U, X_P> - lam * k``: ``lam`` is the
price of one more group, on the scale of ``U``.  Dropping the integrality of ``X_P`` gives the
convex relaxation solved here with cvxpy::

    maximize   <U, X> - lam * trace(X)
    subject to X PSD,  X >= 0 elementwise,  X 1 = 1           (auto-k mode)

and, when the number of groups is given, the fixed-k relaxation (no penalty)::

    maximize   <U, X>    subject to  X PSD,  X >= 0,  X 1 = 1,  trace(X) = k.

Every partition matrix is feasible, so the SDP value is an upper bound on the objective of any
partition; :attr:`Grouping.gap` (SDP value minus rounded-partition value, up to solver
tolerance) is therefore a certificate: a gap of ~0 means the returned partition is optimal
among *all* partitions for this objective.  When the groups are well separated, the SDP
solution is exactly a partition matrix and the rounding below returns it.

Default penalty (auto-k mode)
-----------------------------
``lam = penalty_scale * mean_{i != j} |U_ij|`` with ``penalty_scale = 4``.  Measured on a
planted CartPole family (METHOD.md prototype notes): 4x recovered the planted k in 81 of 82
cases, 2x in 57, 1x in 28 (small penalties over-split).  Because it is relative to ``U``'s
scale, the rule is unchanged by rescaling ``U``.

Its limits, measured on planted blocks (``benchmarks/bench_sdp.py``: within-block affinity
``a = 1``, between ``-b = -0.3``, Gaussian noise per entry): it merges blocks of only 2-3
tasks (two blocks of 2 are merged as soon as ``lam > a + 2b``, here 1.6, which ``4 x mean|U|``
reaches at n = 10), and for large blocks under strong noise it over-splits (n = 100, blocks
of ~25, noise SD 0.6: 6-7 groups instead of 4), because the gain of fitting noise by a split
grows with block size while ``lam`` does not.  Fixed-k mode recovered all of those cases;
check auto-k groups with :mod:`policygradex.group.null`.

If every off-diagonal entry of ``U`` is 0 there is no evidence of any pairwise structure;
auto-k mode then returns one group without calling a solver (``solver = "none"``).

A price per group at or above ``lam_one = lambda_max(P U P)`` (``P = I - 1 1^T / n``, the projection
orthogonal to the all-ones vector) makes one group the exact answer, and auto-k mode returns it
in closed form (``solver = "none"``).  Every feasible ``X`` has ``X 1 = 1`` and is PSD, so
``X = J / n + Y`` with ``Y`` PSD, ``Y 1 = 0`` and ``trace Y = trace X - 1``; then ``<U, Y> <=
lam_one trace Y`` and ``X = J / n`` is optimal for the SDP, and (as every partition matrix is
feasible) one group is optimal among all partitions.  Huge penalties (``1e300``) therefore never
reach a solver, where they would overflow its arithmetic.

The relaxation is solved by :mod:`policygradex.group.solve` (Clarabel or SCS, one falling back
to the other) and its solution turned into a partition by :mod:`policygradex.group.rounding`;
the partition helpers and the random-grouping baseline are in
:mod:`policygradex.group.partitions`.  Every public name of the three is importable from here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from .partitions import (
    GroupingInputError,
    canonical_labels,
    groups_from_labels,
    partition_matrix,
    partition_objective,
    random_grouping,
)
from .rounding import _local_search  # noqa: F401 - importable from here, as before the split
from .rounding import round_partition
from .solve import CLARABEL_MAX_N, SOLVERS, solve_sdp  # noqa: F401 - CLARABEL_MAX_N: importable from here

#: The SDP solve under its name from before the split (tests call it directly).
_solve_sdp = solve_sdp

__all__ = [
    "DEFAULT_PENALTY_SCALE",
    "Grouping",
    "GroupingInputError",
    "GroupingSolverError",
    "canonical_labels",
    "default_penalty",
    "one_group_penalty",
    "group_tasks",
    "groups_from_labels",
    "partition_matrix",
    "partition_objective",
    "random_grouping",
]

#: ``lam = DEFAULT_PENALTY_SCALE * mean |off-diagonal U|`` in auto-k mode (see module docstring).
DEFAULT_PENALTY_SCALE = 4.0


class GroupingSolverError(UserError, RuntimeError):
    """Neither SDP solver could solve the grouping problem; the message names the options to change."""

    transient = False


@dataclass(frozen=True)
class Grouping:
    """A partition of the tasks found by :func:`group_tasks`.

    Attributes:
        labels: ``[n]`` int, canonical group label of each task (groups numbered in the order of
            their smallest task index).
        groups: the groups as sorted lists of task indices, in label order.
        k: number of groups.
        penalty: the price per group ``lam`` used (auto-k mode); None in fixed-k mode.
        objective: SDP value ``<U, X*> - lam * trace(X*)`` (``<U, X*>`` in fixed-k mode).
        rounded_objective: the same objective at the rounded partition's matrix,
            ``<U, X_P> - lam * k``.
        X: ``[n, n]`` relaxed SDP solution (``X_P`` itself when no solver was needed).
        solver: ``"clarabel"``, ``"scs"`` or ``"none"`` (trivial cases solved in closed form).
        status: the solver's status (``"optimal"``, ``"optimal_inaccurate"``) or ``"trivial"``.
        solve_seconds: wall time of building and solving the SDP and of the rounding.
    """

    labels: np.ndarray
    groups: list[list[int]]
    k: int
    penalty: float | None
    objective: float
    rounded_objective: float
    X: np.ndarray
    solver: str
    status: str
    solve_seconds: float

    @property
    def trace(self) -> float:
        """``trace(X*)``, the relaxation's fractional number of groups."""
        return float(np.trace(self.X))

    @property
    def gap(self) -> float:
        """SDP value minus rounded value: >= 0 up to solver tolerance; ~0 certifies optimality."""
        return float(self.objective - self.rounded_objective)


# ----------------------------------------------------------------------------- validation


def _off_diagonal(U: np.ndarray) -> np.ndarray:
    return U[~np.eye(U.shape[0], dtype=bool)]


def default_penalty(U: np.ndarray, penalty_scale: float = DEFAULT_PENALTY_SCALE) -> float:
    """``penalty_scale * mean_{i != j} |U_ij|`` (0 for ``n < 2``)."""
    U = np.asarray(U, dtype=np.float64)
    if U.shape[0] < 2:
        return 0.0
    with np.errstate(over="ignore"):  # an overflow (inf) is reported by group_tasks
        return float(penalty_scale * np.mean(np.abs(_off_diagonal(U))))


def _validate_U(U: np.ndarray) -> np.ndarray:
    arr = np.asarray(U)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise GroupingInputError(f"U must be a square 2-D array [n, n]; got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise GroupingInputError("U must have at least one task; got shape (0, 0)")
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise GroupingInputError(f"U must hold real numbers; got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise GroupingInputError("U must be finite; it holds NaN or infinity")
    scale = max(1.0, float(np.max(np.abs(arr))))
    if np.max(np.abs(arr - arr.T)) > 1e-9 * scale:
        raise GroupingInputError(
            "U must be symmetric (pass Affinity.U, the symmetrized affinity, not U_raw)"
        )
    return 0.5 * (arr + arr.T)


def _validate_k(k: object, n: int) -> int:
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
        raise GroupingInputError(f"k must be an integer between 1 and n = {n}, or None; got {k!r}")
    if not 1 <= int(k) <= n:
        raise GroupingInputError(f"k must be between 1 and the number of tasks n = {n}; got k = {k}")
    return int(k)


def _validate_nonneg(name: str, value: object) -> float:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise GroupingInputError(f"{name} must be a finite number >= 0; got {value!r}") from None
    if not np.isfinite(v) or v < 0:
        raise GroupingInputError(f"{name} must be a finite number >= 0; got {value!r}")
    return v


# ----------------------------------------------------------------------------- SDP


def one_group_penalty(U: np.ndarray) -> float:
    """``lambda_max(P U P)``: every price per group at or above it makes one group the exact
    optimum of the SDP and of the partition problem (module docstring)."""
    U = np.asarray(U, dtype=np.float64)
    n = U.shape[0]
    if n < 2:
        return 0.0
    P = np.eye(n) - 1.0 / n
    return max(0.0, float(np.linalg.eigvalsh(P @ U @ P)[-1]))


def _checked_arguments(U: np.ndarray, k: object, penalty: object, penalty_scale: object,
                       solver: object) -> tuple[np.ndarray, int | None, float, str]:
    """``group_tasks``'s arguments checked: ``(U symmetrized in float64, k, lam, solver)``,
    ``lam`` the price per group (0 in fixed-k mode).  Raises :class:`GroupingInputError`."""
    Us = _validate_U(U)
    n = Us.shape[0]
    if not isinstance(solver, str) or solver.lower() not in SOLVERS:
        raise GroupingInputError(f"solver must be one of {', '.join(SOLVERS)}; got {solver!r}")
    if k is not None:
        k = _validate_k(k, n)
        if penalty is not None:
            raise GroupingInputError(
                "pass either k (fixed number of groups) or penalty (price per group), not both"
            )
        return Us, k, 0.0, solver.lower()
    scale = _validate_nonneg("penalty_scale", penalty_scale)
    lam = default_penalty(Us, scale) if penalty is None else _validate_nonneg("penalty", penalty)
    if not np.isfinite(lam):
        raise GroupingInputError(
            f"penalty_scale {scale:g} x mean |off-diagonal U| overflows a float; any penalty_scale of "
            f"{one_group_penalty(Us) / max(default_penalty(Us, 1.0), 1e-300):.3g} or more already puts every task in one group"
        )
    return Us, None, lam, solver.lower()


def _trivial_labels(Us: np.ndarray, k: int | None, penalty: float | None, lam: float) -> np.ndarray | None:
    """The partition in closed form where no solver is needed, else None."""
    n = Us.shape[0]
    if n == 1:
        return np.zeros(1, dtype=np.int64)
    if k is None and penalty is None and not np.any(_off_diagonal(Us)):
        return np.zeros(n, dtype=np.int64)  # no pairwise evidence at all: one group
    if k is not None and k in (1, n):
        return np.zeros(n, dtype=np.int64) if k == 1 else np.arange(n, dtype=np.int64)
    if k is None and lam >= one_group_penalty(Us):
        return np.zeros(n, dtype=np.int64)  # a price per group this high makes one group optimal (module docstring)
    return None


def _solver_error(Us: np.ndarray, k: int | None, penalty: float | None, penalty_scale: float, lam: float,
                  exc: RuntimeError) -> GroupingSolverError:
    """The user error for an SDP neither solver could solve, naming the option to change."""
    if k is not None:
        what, advice = f"k = {k}", "try another k (--k) or [group] solver"
    else:
        src = f"[group] penalty {lam:.3g}" if penalty is not None else \
            f"penalty_scale (--penalty-scale) {penalty_scale:g} x mean |U| = {lam:.3g}"
        what = f"price per group {src}"
        advice = (f"change the price per group: 0 lets the affinity alone decide, {one_group_penalty(Us):.3g} or "
                  "more puts every task in one group; or set [group] solver")
    return GroupingSolverError(f"the grouping SDP (n = {Us.shape[0]}, {what}) could not be solved ({exc}); {advice}")


# ----------------------------------------------------------------------------- public API


def group_tasks(
    U: np.ndarray,
    k: int | None = None,
    penalty: float | None = None,
    penalty_scale: float = DEFAULT_PENALTY_SCALE,
    solver: str = "auto",
) -> Grouping:
    """Partition the tasks by the SDP relaxation of ``max <U, X_P> - lam * k``.

    Args:
        U: ``[n, n]`` symmetric affinity (``Affinity.U``); larger = better trained together.
        k: number of groups (fixed-k mode, ``trace X = k``), or None to choose it (auto-k mode).
        penalty: the price per group ``lam`` in auto-k mode; None for
            ``penalty_scale * mean |off-diagonal U|``.  Not allowed together with ``k``.
        penalty_scale: multiplier of the default penalty rule (ignored if ``penalty`` is given
            or ``k`` is fixed).
        solver: ``"auto"`` (Clarabel for n <= 40, SCS above), ``"clarabel"`` or ``"scs"``.

    Returns:
        A :class:`Grouping`; every task is in exactly one group.

    Raises:
        GroupingInputError (a ``ValueError``): ``U`` not square/finite/symmetric, ``k`` outside
        ``1..n``, a negative or non-finite ``penalty``/``penalty_scale`` (or a ``penalty_scale``
        whose penalty overflows), an unknown ``solver``, or both ``k`` and ``penalty`` given.
        GroupingSolverError (a ``RuntimeError``; a user error): neither solver could solve the SDP.
    """
    Us, k, lam, solver = _checked_arguments(U, k, penalty, penalty_scale, solver)
    n = Us.shape[0]
    trivial = _trivial_labels(Us, k, penalty, lam)

    t0 = time.perf_counter()
    if trivial is not None:
        # The feasible set holds a single point (n = 1, k = 1 or k = n) or, for an all-zero U
        # in auto mode, nothing distinguishes one partition from another.
        labels = canonical_labels(trivial)
        X = partition_matrix(labels)
        used, status = "none", "trivial"
    else:
        try:
            X, used, status = solve_sdp(Us, k, lam, solver)
        except RuntimeError as exc:
            raise _solver_error(Us, k, penalty, penalty_scale, lam, exc) from None
        if k is None:
            k_hat = int(np.clip(np.rint(np.trace(X)), 1, n))
            ks = list(range(1, min(n, k_hat + 1) + 1))
        else:
            ks = [k]
        labels = round_partition(Us, X, ks, lam, allow_merge=k is None)
    seconds = time.perf_counter() - t0

    k_out = int(labels.max()) + 1
    rounded = partition_objective(Us, labels, lam)
    # closed form: X is the partition's own matrix, and the same formula keeps the gap exactly 0 at any scale
    sdp_value = rounded if trivial is not None else float(np.sum(Us * X) - lam * np.trace(X))
    return Grouping(
        labels=labels,
        groups=groups_from_labels(labels),
        k=k_out,
        penalty=None if k is not None else lam,
        objective=sdp_value,
        rounded_objective=rounded,
        X=X,
        solver=used,
        status=status,
        solve_seconds=seconds,
    )
