"""Task affinity from per-subset performance estimates (METHOD.md, stage 4).

Input
-----
``f[s, i]`` is the estimated performance (higher is better) of the policy adapted to subset
``S_s`` when it is evaluated on task ``i``; it is defined only for ``i in S_s`` and is NaN
elsewhere.  ``members[s, i]`` is True exactly when ``i in S_s``.

Standardization
---------------
Tasks have different return scales, so every target task is standardized on its own column
before anything is averaged.  With ``M_i = {s : i in S_s}``::

    z[s, i] = (f[s, i] - mean_{s' in M_i} f[s', i]) / std_{s' in M_i} f[s', i]     (s in M_i)

(population standard deviation, ``ddof = 0``).  A task whose estimates do not vary over its
subsets (zero variance, e.g. a saturated task or a task seen in only one subset) carries no
information about which partner helps it; its ``z`` column is set to zeros rather than being
divided by zero, and it is listed in :attr:`Affinity.constant_tasks`.

Affinity
--------
``U_raw[i, j]`` (row = target task ``i``, column = partner ``j``) is the mean standardized
performance of task ``i`` over the subsets that contain both ``i`` and ``j``::

    U_raw[i, j] = (1 / c_ij) * sum_{s : i, j in S_s} z[s, i],     c_ij = #{s : i, j in S_s}

A positive entry means that task ``i`` does better than its own average when trained together
with ``j``.  The matrix is asymmetric (``j`` may help ``i`` but not the reverse); the grouping
stage needs a symmetric matrix, ``U = (U_raw + U_raw^T) / 2``.

A pair never seen together (``c_ij = 0``) has no estimate.  It is given the neutral value 0
(no evidence either way, the mean of a standardized column), its count is 0, and it is listed
in :attr:`Affinity.unseen_pairs`; the division is never attempted, so no warning is raised.

Diagonal: ``U_raw[i, i]`` follows the same formula with ``j = i``, the mean of ``z[:, i]`` over
all subsets containing ``i``.  By construction of ``z`` this is 0 (up to rounding) for every
task, so the diagonal carries no information and adds (almost) nothing to ``<U, X>`` in the
SDP; it is kept as computed rather than forced so that the formula holds for every entry.
``counts[i, i]`` is the number of subsets containing ``i``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import UserError

__all__ = ["Affinity", "AffinityInputError", "build_affinity", "consensus_affinity", "standardize_offdiagonal", "standardize_per_task",
           "table_affinity", "as_tables", "min_pair_count"]


class AffinityInputError(UserError, ValueError):
    """``f`` or ``members`` is malformed; the message names the input and what is allowed."""


#: A column whose standard deviation is below ``_ZERO_VAR_RTOL * max(1, |mean|)`` is constant.
_ZERO_VAR_RTOL = 1e-12


@dataclass(frozen=True)
class Affinity:
    """Task-affinity matrices built by :func:`build_affinity`.

    Attributes:
        U: ``[n, n]`` symmetric affinity ``(U_raw + U_raw.T) / 2``, the input of grouping.
        U_raw: ``[n, n]`` asymmetric affinity; row = target task ``i``, column = partner ``j``.
        counts: ``[n, n]`` int, number of subsets containing both ``i`` and ``j`` (symmetric;
            the diagonal is the number of subsets containing ``i``).
        z: ``[m, n]`` per-task standardized ``f`` (NaN where the task is not in the subset).
        constant_tasks: tasks whose ``f`` column has zero variance (their ``z`` is all zeros).
    """

    U: np.ndarray
    U_raw: np.ndarray
    counts: np.ndarray
    z: np.ndarray
    constant_tasks: tuple[int, ...]

    @property
    def n_tasks(self) -> int:
        """Number of tasks ``n``."""
        return int(self.U.shape[0])

    @property
    def unseen_pairs(self) -> list[tuple[int, int]]:
        """Pairs ``(i, j)``, ``i < j``, never in a subset together (affinity set to 0)."""
        i, j = np.nonzero(np.triu(self.counts == 0, k=1))
        return [(int(a), int(b)) for a, b in zip(i, j)]

    @property
    def min_pair_count(self) -> int:
        """Smallest number of subsets shared by two distinct tasks (0 if a pair is unseen)."""
        return _min_off_diagonal(self.counts)


def _validate(f: np.ndarray, members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f_arr = np.asarray(f)
    if f_arr.ndim != 2:
        raise AffinityInputError(f"f must be a 2-D array [m subsets, n tasks]; got shape {f_arr.shape}")
    if not np.issubdtype(f_arr.dtype, np.number) or np.iscomplexobj(f_arr):
        raise AffinityInputError(f"f must hold real numbers; got dtype {f_arr.dtype}")
    f_arr = f_arr.astype(np.float64, copy=False)

    m_arr = np.asarray(members)
    if m_arr.shape != f_arr.shape:
        raise AffinityInputError(
            f"members must have the shape of f {f_arr.shape}; got shape {m_arr.shape}"
        )
    if m_arr.dtype != np.bool_:
        if not np.issubdtype(m_arr.dtype, np.number) or not np.all((m_arr == 0) | (m_arr == 1)):
            raise AffinityInputError("members must be a boolean array (or hold only 0 and 1)")
        m_arr = m_arr.astype(bool)

    nan = np.isnan(f_arr)
    if np.any(nan & m_arr):
        s, i = np.argwhere(nan & m_arr)[0]
        raise AffinityInputError(
            f"f is NaN at subset {s}, task {i}, but members says task {i} is in subset {s}; "
            "f must be finite exactly where members is True"
        )
    if np.any(~nan & ~m_arr):
        s, i = np.argwhere(~nan & ~m_arr)[0]
        raise AffinityInputError(
            f"f has a value at subset {s}, task {i}, but members says task {i} is not in "
            f"subset {s}; f must be NaN exactly where members is False"
        )
    if np.any(np.isinf(f_arr)):
        s, i = np.argwhere(np.isinf(f_arr))[0]
        raise AffinityInputError(f"f is infinite at subset {s}, task {i}; f must be finite")
    return f_arr, m_arr


def standardize_per_task(f: np.ndarray, members: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """Z-score every column of ``f`` over the subsets that contain that task.

    Returns ``(z, constant_tasks)``: ``z`` has NaN where ``members`` is False, and zeros in the
    columns of zero-variance tasks (listed in ``constant_tasks``).  Inputs are validated as in
    :func:`build_affinity`.
    """
    f_arr, m_arr = _validate(f, members)
    count = m_arr.sum(axis=0)
    filled = np.where(m_arr, f_arr, 0.0)
    safe = np.maximum(count, 1)
    mean = filled.sum(axis=0) / safe
    dev = np.where(m_arr, f_arr - mean, 0.0)
    std = np.sqrt((dev**2).sum(axis=0) / safe)
    constant = (count == 0) | (std <= _ZERO_VAR_RTOL * np.maximum(1.0, np.abs(mean)))
    scale = np.where(constant, 1.0, std)
    z = np.where(constant, 0.0, dev / scale)
    z = np.where(m_arr, z, np.nan)
    return z, tuple(int(i) for i in np.nonzero(constant)[0])


def build_affinity(f: np.ndarray, members: np.ndarray) -> Affinity:
    """Build the task-affinity matrices from the ``f`` table (see the module docstring).

    Args:
        f: ``[m, n]`` float, ``f[s, i]`` = performance of the subset-``s`` policy on task ``i``;
            finite where ``members`` is True and NaN elsewhere.
        members: ``[m, n]`` bool, ``members[s, i]`` = task ``i`` is in subset ``s``.

    Returns:
        An :class:`Affinity`.  Pairs never seen together get affinity 0 and count 0.

    Raises:
        AffinityInputError (a ``ValueError``): shapes disagree, ``members`` is not boolean, or
        the NaN pattern of ``f`` does not match ``members``, or ``f`` holds an infinity.
    """
    z, constant = standardize_per_task(f, members)
    m_arr = ~np.isnan(z)
    mi = m_arr.astype(np.int64)
    counts = mi.T @ mi  # counts[i, j] = #{s : i, j in S_s}
    z0 = np.where(m_arr, z, 0.0)
    sums = z0.T @ m_arr.astype(np.float64)  # sums[i, j] = sum_{s : i, j in S_s} z[s, i]
    seen = counts > 0
    U_raw = np.zeros_like(sums)
    np.divide(sums, counts, out=U_raw, where=seen)
    U = 0.5 * (U_raw + U_raw.T)
    return Affinity(U=U, U_raw=U_raw, counts=counts, z=z, constant_tasks=constant)


def standardize_offdiagonal(U: np.ndarray) -> np.ndarray:
    """``U`` shifted and scaled so that its off-diagonal entries have mean 0 and standard
    deviation 1 (diagonal set to 0); a constant off-diagonal gives all zeros."""
    U = np.asarray(U, dtype=np.float64)
    off = ~np.eye(U.shape[0], dtype=bool)
    vals = U[off]
    sd = vals.std()
    out = np.zeros_like(U)
    if sd > 1e-12 * max(1.0, float(np.abs(vals).max())):
        out[off] = (vals - vals.mean()) / sd
    return out


def consensus_affinity(Us: Sequence[np.ndarray]) -> np.ndarray:
    """The mean of the replicates' off-diagonal-standardized affinities."""
    return np.mean([standardize_offdiagonal(U) for U in Us], axis=0)


def min_pair_count(members: np.ndarray) -> int:
    """Smallest number of subsets (rows of the ``[m, n]`` boolean ``members``) shared by two distinct
    tasks: :attr:`Affinity.min_pair_count` without building the affinity."""
    mi = np.asarray(members, dtype=np.int64)
    return _min_off_diagonal(mi.T @ mi)


def _min_off_diagonal(counts: np.ndarray) -> int:
    n = counts.shape[0]
    return 0 if n < 2 else int(counts[~np.eye(n, dtype=bool)].min())


def as_tables(f: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    """One performance table, or one training's tables (theta* and its window), as a list of float arrays."""
    return [np.asarray(t, dtype=np.float64) for t in (f if isinstance(f, (list, tuple)) else [f])]


def table_affinity(tables: Sequence[np.ndarray], members: np.ndarray) -> np.ndarray:
    """The affinity of one training's performance tables on the same subsets: ``build_affinity(f).U``
    for one table; for several (theta* and the next checkpoints, ``theta_window``) the mean of
    their off-diagonal-standardized affinities, so that each checkpoint weighs the same."""
    if len(tables) == 1:
        return build_affinity(tables[0], members).U
    return consensus_affinity([build_affinity(f, members).U for f in tables])
