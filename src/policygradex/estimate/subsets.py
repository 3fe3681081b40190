"""Sampling task subsets that cover every pair of tasks a guaranteed number of times.

The affinity of stage 4 is ``U_ij = mean of f(S, i) over the sampled subsets S that contain
both i and j``.  It is only defined when every pair (i, j), i != j, appears together in at
least one subset, and it is only *estimated* (rather than read off one noisy fit) when every
pair appears several times.  Drawing m = O(n^2) subsets uniformly at random covers every
pair only with high probability; :func:`sample_subsets` *guarantees* it.

Algorithm
---------
1. **Random phase.**  Draw ``m`` distinct subsets of ``size`` tasks uniformly at random
   (distinct as long as there are enough of them: when all ``C(n, size)`` subsets have been
   used, a new round of distinct subsets starts).  When ``m`` is not given it defaults to the
   counting lower bound ``ceil(c * C(n, 2) / C(size, 2))``: each subset covers ``C(size, 2)``
   pairs and ``c * C(n, 2)`` pair-coverings are needed, so no design can be shorter.
2. **Repair phase.**  While some pair is covered fewer than ``c = min_pair_coverage`` times,
   append a subset built around the least-covered pair (ties broken at random).  It is filled,
   one task at a time, with the task whose addition covers the most still-missing pair
   occurrences (the sum over the members already chosen of ``max(c - count, 0)``); ties are
   broken at random.  If the result duplicates an existing row, the fill is retried with the
   remaining slots chosen at random; a duplicate is kept only when no distinct subset with
   the chosen pair is found (for instance ``size == n``, where only one subset exists).

Every repair row raises the count of an under-covered pair by one, so the total deficit
``sum over pairs of max(c - count, 0)`` strictly decreases: the loop ends, and the coverage
is guaranteed.  **When ``m`` is given and too small to reach the coverage, rows are added
beyond ``m``** (the coverage is what the affinity needs, so it wins over the row budget): the
result has ``m`` rows or more; read the actual number from ``members.shape[0]``.

The result is deterministic for a given ``seed``.
"""

from __future__ import annotations

import math
import numbers
from itertools import combinations

import numpy as np

__all__ = ["default_subset_size", "pair_counts", "sample_subsets"]

# Up to this many possible subsets, the random phase enumerates them and samples without
# replacement; above it, rejection sampling (collisions are then rare).
_ENUMERATE_LIMIT = 20_000
# Retries of the random fill of a repair row that came out as a duplicate.
_DISTINCT_RETRIES = 32


def _check_int(name: str, value: object, low: int, high: int | None = None, high_name: str | None = None) -> int:
    """Validate an integer parameter; the message names it and the allowed range."""
    if high is None:
        allowed = f"an int in the range [{low}, inf)"
    else:
        upper = f"{high_name}={high}" if high_name else str(high)
        allowed = f"an int in the range [{low}, {upper}]"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"The '{name}' parameter must be {allowed}. Got {value!r} instead.")
    value = int(value)
    if value < low or (high is not None and value > high):
        raise ValueError(f"The '{name}' parameter must be {allowed}. Got {value!r} instead.")
    return value


def default_subset_size(n: int) -> int:
    """Default number of tasks per subset: ``max(2, ceil(n / 2))`` (never more than ``n``).

    Half the tasks is the size that maximises the number of distinct subsets ``C(n, size)``
    and makes, for a target task ``i``, each other task ``j`` present in about half of the
    subsets that contain ``i``: the contrast between "with j" and "without j" that the
    affinity measures is then the best balanced.  It matches the prototype (n = 8, size 4).
    """
    n = _check_int("n", n, 2)
    return min(n, max(2, math.ceil(n / 2)))


def pair_counts(members: np.ndarray) -> np.ndarray:
    """How many rows of ``members`` contain each pair of tasks.

    Parameters
    ----------
    members : bool array of shape (m, n)
        One row per subset, ``True`` where the task belongs to the subset.

    Returns
    -------
    counts : int64 array of shape (n, n)
        ``counts[i, j]`` is the number of subsets containing both ``i`` and ``j``; the diagonal
        ``counts[i, i]`` is the number of subsets containing ``i``.  Symmetric.
    """
    members = np.asarray(members)
    if members.ndim != 2:
        raise ValueError(f"The 'members' parameter must be a 2-D array of shape (m, n). Got shape {members.shape}.")
    x = members.astype(np.int64)
    return x.T @ x


def _lower_bound_rows(n: int, size: int, c: int) -> int:
    """Fewest subsets that can cover every pair ``c`` times (counting bound)."""
    return max(1, math.ceil(c * math.comb(n, 2) / math.comb(size, 2)))


def _random_phase(n: int, size: int, m: int, rng: np.random.Generator) -> list[tuple[int, ...]]:
    """``m`` random subsets (sorted tuples), distinct within each round of C(n, size)."""
    total = math.comb(n, size)
    rows: list[tuple[int, ...]] = []
    if total <= _ENUMERATE_LIMIT:
        all_subsets = list(combinations(range(n), size))
        while len(rows) < m:
            take = min(m - len(rows), total)
            pick = rng.choice(total, size=take, replace=False)
            rows.extend(all_subsets[k] for k in pick)
        return rows
    seen: set[tuple[int, ...]] = set()
    while len(rows) < m:
        row = tuple(sorted(rng.choice(n, size=size, replace=False).tolist()))
        if row in seen:  # rare when total > _ENUMERATE_LIMIT and m is O(n^2)
            continue
        if len(seen) == total - 1:  # this round used every subset: start a new one
            seen.clear()
        seen.add(row)
        rows.append(row)
    return rows


def _greedy_fill(
    pair: tuple[int, int], deficit: np.ndarray, size: int, rng: np.random.Generator, randomize: bool
) -> tuple[int, ...]:
    """A subset around ``pair``: add the task covering the most missing pair occurrences."""
    n = deficit.shape[0]
    chosen = [pair[0], pair[1]]
    gain = deficit[pair[0]] + deficit[pair[1]]  # missing coverage each candidate would add
    available = np.ones(n, dtype=bool)
    available[list(pair)] = False
    for _ in range(size - 2):
        cand = np.flatnonzero(available)
        if randomize:
            k = int(rng.choice(cand))
        else:
            g = gain[cand]
            best = cand[g == g.max()]
            k = int(rng.choice(best))
        chosen.append(k)
        available[k] = False
        gain = gain + deficit[k]
    return tuple(sorted(chosen))


def sample_subsets(
    n: int,
    size: int,
    min_pair_coverage: int = 3,
    m: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Random task subsets in which every pair of tasks appears together at least ``c`` times.

    Parameters
    ----------
    n : int, >= 2
        Number of tasks.
    size : int, in [2, n]
        Number of tasks in every subset (see :func:`default_subset_size`).
    min_pair_coverage : int, >= 1
        ``c``: every pair (i, j), i != j, is in at least this many subsets.  Guaranteed.
    m : int >= 1 or None
        Number of subsets drawn at random before the repair phase.  ``None`` uses the counting
        lower bound ``ceil(c * C(n, 2) / C(size, 2))``.  If ``m`` rows do not reach the
        coverage, **rows are added beyond m** until they do (see the module docstring), so the
        result can have more than ``m`` rows, never fewer.
    seed : int
        Seed of the random generator; the result is a deterministic function of all arguments.

    Returns
    -------
    members : bool array of shape (m_out, n), m_out >= m
        One row per subset with exactly ``size`` entries ``True``.  Rows are distinct whenever
        enough distinct subsets exist.

    Raises
    ------
    ValueError
        If a parameter is out of range; the message names it and the allowed range.
    """
    n = _check_int("n", n, 2)
    size = _check_int("size", size, 2, n, high_name="n")
    c = _check_int("min_pair_coverage", min_pair_coverage, 1)
    if m is not None:
        m = _check_int("m", m, 1)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"The 'seed' parameter must be an int in the range [0, inf). Got {seed!r} instead.")
    rng = np.random.default_rng(int(seed))

    m_random = _lower_bound_rows(n, size, c) if m is None else m
    rows = _random_phase(n, size, m_random, rng)
    existing = set(rows)

    counts = np.zeros((n, n), dtype=np.int64)
    for row in rows:
        idx = np.asarray(row)
        counts[np.ix_(idx, idx)] += 1

    iu, ju = np.triu_indices(n, k=1)
    while True:
        pair_cov = counts[iu, ju]
        low = pair_cov.min()
        if low >= c:
            break
        ties = np.flatnonzero(pair_cov == low)
        p = int(rng.choice(ties))
        pair = (int(iu[p]), int(ju[p]))
        deficit = np.maximum(c - counts, 0)
        np.fill_diagonal(deficit, 0)
        row = _greedy_fill(pair, deficit, size, rng, randomize=False)
        if row in existing and size > 2:
            for _ in range(_DISTINCT_RETRIES):
                alt = _greedy_fill(pair, deficit, size, rng, randomize=True)
                if alt not in existing:
                    row = alt
                    break
        rows.append(row)
        existing.add(row)
        idx = np.asarray(row)
        counts[np.ix_(idx, idx)] += 1

    members = np.zeros((len(rows), n), dtype=bool)
    for r, row in enumerate(rows):
        members[r, list(row)] = True
    return members
