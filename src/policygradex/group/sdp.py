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

Solvers
-------
``solver="auto"`` uses Clarabel (interior point: an accurate, clean ``X``) for ``n <= 40`` and
SCS (first-order splitting, far cheaper per iteration) above: a whole ``group_tasks`` call
takes 1-3 s at n = 100 on two shared cores, where Clarabel's solve alone takes ~40 s.
``"clarabel"`` and ``"scs"`` force one.  If the chosen solver fails, the other is tried; the
one that produced ``X`` is recorded in :attr:`Grouping.solver`.  The solvers see ``U`` and
``lam`` divided by ``max |U|`` (the problem is invariant to that scaling; it keeps the solvers'
arithmetic in range whatever the scale of ``U``).  A failure is any exception of the solver,
including the ``PanicException`` (a ``BaseException``) that Clarabel, written in Rust, raises
when it panics; what a solver prints to stdout or stderr while it runs (a Rust panic's message
and backtrace) is discarded.  When both fail, :class:`GroupingSolverError` (a user error) says
which option to change.

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

import contextlib
import io
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Sequence

import cvxpy as cp
import numpy as np
from scipy.cluster.hierarchy import linkage
from scipy.spatial.distance import pdist

from ..errors import UserError

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
#: Largest ``n`` for which ``solver="auto"`` picks Clarabel; SCS above.
CLARABEL_MAX_N = 40
_SOLVERS = ("auto", "clarabel", "scs")
_LINKAGES = ("average", "complete", "single", "ward")
_ACCEPTED_STATUS = (cp.OPTIMAL, cp.OPTIMAL_INACCURATE)
_SCS_OPTIONS = {"eps_abs": 1e-6, "eps_rel": 1e-6, "max_iters": 20_000}


class GroupingInputError(UserError, ValueError):
    """An argument of the grouping functions is invalid; the message names it."""

    transient = False


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


# ----------------------------------------------------------------------------- partitions


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


def _solver_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a solver's failure rather than Ctrl-C or an exit: any ``Exception``, or
    the ``PanicException`` (a ``BaseException``) through which pyo3 reports a Rust panic."""
    return isinstance(exc, Exception) or type(exc).__name__ == "PanicException"


def _flush_c_stdio() -> None:
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except Exception:  # noqa: BLE001 - no C library to flush (best effort)
        pass


@contextlib.contextmanager
def _quiet_solver():
    """Send file descriptors 1 and 2 to a temporary file, and ``sys.stdout``/``sys.stderr`` to a
    buffer, while a solver runs (SCS prints errors to stdout; a Rust panic prints its message and
    backtrace to stderr before Python sees the exception); restored afterwards, the text dropped."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed or replaced stream
            pass
    try:
        tmp = tempfile.TemporaryFile()
        saved = [os.dup(1), os.dup(2)]
    except OSError:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
        return
    try:
        os.dup2(tmp.fileno(), 1)
        os.dup2(tmp.fileno(), 2)
        sink = io.StringIO()  # and Python-level writes (PySys_WriteStdout), wherever sys.stdout points
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield
    finally:
        _flush_c_stdio()  # what a C solver left in stdio's buffers belongs to the temporary file too
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        tmp.close()


def _solve_sdp(U: np.ndarray, k: int | None, penalty: float, solver: str) -> tuple[np.ndarray, str, str]:
    """Solve the relaxation; return ``(X, solver_used, status)``.  Raises ``RuntimeError`` naming
    both solvers' failures when neither produced ``X``."""
    n = U.shape[0]
    first = solver if solver != "auto" else ("clarabel" if n <= CLARABEL_MAX_N else "scs")
    order = [first, "scs" if first == "clarabel" else "clarabel"]
    scale = float(np.max(np.abs(U)))
    if scale > 0:  # the same problem in units of max |U|: the solvers' arithmetic stays in range
        U, penalty = U / scale, penalty / scale
    X = cp.Variable((n, n), PSD=True)
    constraints = [X >= 0, cp.sum(X, axis=1) == 1]
    if k is None:
        objective = cp.Maximize(cp.sum(cp.multiply(U, X)) - penalty * cp.trace(X))
    else:
        objective = cp.Maximize(cp.sum(cp.multiply(U, X)))
        constraints.append(cp.trace(X) == k)
    problem = cp.Problem(objective, constraints)
    failures: list[str] = []
    for name in order:
        try:
            with warnings.catch_warnings(), _quiet_solver():
                # An inaccurate solution is reported in Grouping.status; rounding copes with it.
                warnings.simplefilter("ignore", UserWarning)
                if name == "clarabel":
                    problem.solve(solver=cp.CLARABEL)
                else:
                    problem.solve(solver=cp.SCS, **_SCS_OPTIONS)
        except BaseException as exc:  # noqa: BLE001 - Clarabel's Rust panics are BaseExceptions
            if not _solver_failure(exc):
                raise
            text = " ".join(str(exc).split()) or type(exc).__name__
            failures.append(f"{name}: {text[:200]}")
            continue
        if problem.status in _ACCEPTED_STATUS and X.value is not None and np.all(np.isfinite(X.value)):
            Xv = np.asarray(X.value, dtype=np.float64)
            return 0.5 * (Xv + Xv.T), name, str(problem.status)
        failures.append(f"{name}: status {problem.status}")
    raise RuntimeError("; ".join(failures))


# ----------------------------------------------------------------------------- rounding


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


def _round(
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
    Us = _validate_U(U)
    n = Us.shape[0]
    if not isinstance(solver, str) or solver.lower() not in _SOLVERS:
        raise GroupingInputError(f"solver must be one of {', '.join(_SOLVERS)}; got {solver!r}")
    solver = solver.lower()
    if k is not None:
        k = _validate_k(k, n)
        if penalty is not None:
            raise GroupingInputError(
                "pass either k (fixed number of groups) or penalty (price per group), not both"
            )
        lam = 0.0
    else:
        scale = _validate_nonneg("penalty_scale", penalty_scale)
        lam = default_penalty(Us, scale) if penalty is None else _validate_nonneg("penalty", penalty)
        if not np.isfinite(lam):
            raise GroupingInputError(
                f"penalty_scale {scale:g} x mean |off-diagonal U| overflows a float; any penalty_scale of "
                f"{one_group_penalty(Us) / max(default_penalty(Us, 1.0), 1e-300):.3g} or more already puts every task in one group"
            )

    trivial: np.ndarray | None = None
    if n == 1:
        trivial = np.zeros(1, dtype=np.int64)
    elif k is None and penalty is None and not np.any(_off_diagonal(Us)):
        trivial = np.zeros(n, dtype=np.int64)  # no pairwise evidence at all: one group
    elif k is not None and k in (1, n):
        trivial = np.zeros(n, dtype=np.int64) if k == 1 else np.arange(n, dtype=np.int64)
    elif k is None and lam >= one_group_penalty(Us):
        trivial = np.zeros(n, dtype=np.int64)  # a price per group this high makes one group optimal (module docstring)

    t0 = time.perf_counter()
    if trivial is not None:
        # The feasible set holds a single point (n = 1, k = 1 or k = n) or, for an all-zero U
        # in auto mode, nothing distinguishes one partition from another.
        labels = canonical_labels(trivial)
        X = partition_matrix(labels)
        used, status = "none", "trivial"
    else:
        try:
            X, used, status = _solve_sdp(Us, k, lam, solver)
        except RuntimeError as exc:
            if k is not None:
                what, advice = f"k = {k}", "try another k (--k) or [group] solver"
            else:
                src = f"[group] penalty {lam:.3g}" if penalty is not None else \
                    f"penalty_scale (--penalty-scale) {penalty_scale:g} x mean |U| = {lam:.3g}"
                what = f"price per group {src}"
                advice = (f"change the price per group: 0 lets the affinity alone decide, {one_group_penalty(Us):.3g} or "
                          "more puts every task in one group; or set [group] solver")
            raise GroupingSolverError(f"the grouping SDP (n = {n}, {what}) could not be solved ({exc}); {advice}") from None
        if k is None:
            k_hat = int(np.clip(np.rint(np.trace(X)), 1, n))
            ks = list(range(1, min(n, k_hat + 1) + 1))
        else:
            ks = [k]
        labels = _round(Us, X, ks, lam, allow_merge=k is None)
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
