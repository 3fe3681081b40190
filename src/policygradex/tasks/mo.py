"""Multi-objective task families on MO-Gymnasium: one task per preference vector.

A task of a preference family is an MO-Gymnasium environment whose vector reward ``r`` is
scalarized with the task's preference ``w`` (reward ``w·r``, MO-Gymnasium's ``LinearReward``;
the vector reward stays in ``info["vector_reward"]``).  ``--suite mo:<id>`` draws the
preferences; a suite file lists them (``weights = [[...], ...]``, or ``weights`` on a
``[[tasks]]`` entry).

**The truth.** Where the environment publishes its Pareto front (``pareto_front(gamma)``:
deep-sea-treasure, fruit-tree, resource-gathering, minecart), a preference's optimal policy is
the one that reaches the front point ``v`` maximizing ``w·v`` (linear scalarization), so tasks
whose preferences share that point share an optimal policy and belong together:
``true_partition`` groups the tasks by it.  This assumes the learner can reach the front (it
is the optimum, not what a short training attains) and that a policy optimal for a point is
the same policy for every preference that selects it (true for deterministic environments
with one policy per front point, as these four).  A listed preference whose best and
second-best points are within ``tie_tolerance`` (relative to the larger of their values) is a
*near-tie*: it is named in the suite's description and left out of the truth (the NMI is taken
over the other tasks) instead of being assigned to one side.

**Drawn preferences** (``--tasks n --anchors k``, seeded).  With a front: a pool of preferences
drawn uniformly from the simplex is split by the point each selects; a point's *region* is
the pool's preferences that select it by a margin (best minus second best at least ``margin``
= 5% of the larger value, so that a small error in the learned values cannot change the
answer), and its *centre* the mean of its region.  The first anchor is a random point whose
centre selects it by the margin, each next one the point whose centre is farthest from the
anchors chosen so far.  Task ``i`` belongs to anchor ``j = i mod k``; its preference is
``0.9 c_j + 0.1 u`` (``c_j`` the anchor's centre, ``u`` uniform on the simplex), redrawn until
it selects the anchor's point by the margin.  Without a front (mo-lunar-lander): the anchors
are directions spread the same way over the simplex, preferences are drawn around them the same
way, and there is no truth.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np

from ..errors import UserError
from .base import Task, TaskSuite
from .mo_env import FloatObservation, check_weights, import_mo, scalarize  # noqa: F401  (the env side, used by tasks.base)

#: Default relative margin of a drawn preference over its second-best front point.
MARGIN = 0.05
#: Listed preferences closer than this (relative) to a second front point are near-ties.
TIE_TOLERANCE = 0.01
#: Preferences in the pool the regions are estimated from.
POOL = 50_000
#: Default discount of the front (the preference suites' PPO gamma).
GAMMA = 0.99
#: Share of the anchor direction in a drawn preference when the env publishes no front.
ANCHOR_SHARE = 0.9


def env_facts(env_id: str, gamma: float, what: str) -> tuple[int, np.ndarray | None]:
    """The number of objectives of ``env_id`` and its published Pareto front at ``gamma``
    (an array of points, one per row) or None."""
    mo = import_mo(what)
    try:
        env = mo.make(env_id)
    except gym.error.Error as exc:
        known = sorted(k for k, spec in gym.registry.items() if str(spec.entry_point).startswith("mo_gymnasium"))
        raise UserError(f"{what}: {env_id!r} is not an MO-Gymnasium environment ({exc}); allowed: {', '.join(known)}") from None
    try:
        space = getattr(env.unwrapped, "reward_space", None)
        if space is None or len(space.shape) != 1:
            raise UserError(f"{what}: {env_id!r} has no vector reward (reward_space); preferences need a multi-objective env")
        front = None
        if hasattr(env.unwrapped, "pareto_front"):
            front = np.asarray(env.unwrapped.pareto_front(gamma=gamma), dtype=np.float64)
        return int(space.shape[0]), front
    finally:
        env.close()


def best_points(weights: np.ndarray, front: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each preference (row of ``weights``) the index of the front point maximizing w·v and
    its relative gap to the second best, (best - second) / max(|best|, |second|)."""
    values = np.atleast_2d(weights) @ front.T
    order = np.argsort(-values, axis=1, kind="stable")
    best = order[:, 0]
    if front.shape[0] < 2:
        return best, np.full(len(best), np.inf)
    rows = np.arange(len(values))
    v1, v2 = values[rows, best], values[rows, order[:, 1]]
    scale = np.maximum(np.maximum(np.abs(v1), np.abs(v2)), 1e-12)
    return best, (v1 - v2) / scale


def truth(weights: np.ndarray, front: np.ndarray, names: list[str], tie_tolerance: float = TIE_TOLERANCE
          ) -> tuple[list[list[str]], list[str], list[int]]:
    """The partition of ``names`` by the front point each preference selects, the near-ties left
    out of it, and each task's point (-1 for a near-tie)."""
    best, gap = best_points(weights, front)
    point = [int(b) if g >= tie_tolerance else -1 for b, g in zip(best, gap)]
    groups: dict[int, list[str]] = {}
    for name, p in zip(names, point):
        if p >= 0:
            groups.setdefault(p, []).append(name)
    ties = [name for name, p in zip(names, point) if p < 0]
    return [groups[p] for p in sorted(groups)], ties, point


def _spread(centres: np.ndarray, first: int, k: int) -> list[int]:
    """Farthest-point choice of ``k`` rows of ``centres`` starting from row ``first``."""
    chosen = [first]
    dist = np.linalg.norm(centres - centres[first], axis=1)
    while len(chosen) < k:
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(centres - centres[nxt], axis=1))
    return chosen


def _around(anchor: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """Preferences around ``anchor``: ANCHOR_SHARE of it plus the rest of a uniform draw."""
    return ANCHOR_SHARE * anchor + (1 - ANCHOR_SHARE) * rng.dirichlet(np.ones(len(anchor)), size)


def draw_preferences(m: int, front: np.ndarray | None, n: int, k: int, seed: int, margin: float = MARGIN
                     ) -> tuple[np.ndarray, np.ndarray, list[int], np.ndarray]:
    """``n`` preferences over ``m`` objectives around ``k`` anchors (module docstring): the
    preferences, the anchor of each task, the anchors' front points (empty without a front) and
    the anchors' directions."""
    rng = np.random.default_rng(seed)
    pool = rng.dirichlet(np.ones(m), POOL)
    anchor_of = np.arange(n) % k
    if front is None:
        directions = pool[_spread(pool, int(rng.integers(POOL)), k)]
        return _around_each(directions, anchor_of, rng), anchor_of, [], directions
    best, gap = best_points(pool, front)
    regions = {int(p): np.flatnonzero((best == p) & (gap >= margin)) for p in np.unique(best)}
    viable = []
    for p in sorted(regions):  # a point whose region's centre is itself a clear choice of that point
        if len(regions[p]) >= 20:
            centre = pool[regions[p]].mean(axis=0)
            b, g = best_points(centre, front)
            if b[0] == p and g[0] >= margin:
                viable.append((p, centre))
    if len(viable) < k:
        raise UserError(f"--anchors {k}: only {len(viable)} points of this front are the clear optimum (by a margin of "
                        f"{margin:.0%}) of a region of preferences; allowed: --anchors between 1 and {len(viable)}")
    centres = np.stack([c for _, c in viable])
    picked = _spread(centres, int(rng.integers(len(viable))), k)
    points = [viable[i][0] for i in picked]
    w = np.empty((n, m))
    for j, p in enumerate(points):
        rows = np.flatnonzero(anchor_of == j)
        got: list[np.ndarray] = []
        for _ in range(1000):  # rejection: keep the draws inside the anchor's region, by the margin
            cand = _around(centres[picked[j]], rng, 4 * len(rows))
            b, g = best_points(cand, front)
            got.extend(cand[(b == p) & (g >= margin)])
            if len(got) >= len(rows):
                break
        if len(got) < len(rows):
            raise UserError(f"--anchors {k}: the region of front point {p} is too narrow to draw {len(rows)} preferences "
                            f"with a margin of {margin:.0%}; try fewer anchors")
        w[rows] = np.stack(got[:len(rows)])
    return w, anchor_of, points, centres[picked]


def _around_each(directions: np.ndarray, anchor_of: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    w = np.stack([_around(directions[a], rng, 1)[0] for a in anchor_of])
    return w / w.sum(axis=1, keepdims=True)


def preference_suite(env_id: str, n: int | None = None, anchors: int | None = None, seed: int = 0,
                     weights: list[list[float]] | None = None, per_objective: bool = False, name: str | None = None,
                     gamma: float = GAMMA, margin: float = MARGIN, tie_tolerance: float = TIE_TOLERANCE,
                     ppo_preset: dict | None = None, description: str = "", kwargs: dict[str, Any] | None = None,
                     tasks: list | None = None, true_partition: list[list[str]] | None = None,
                     success_key: str | None = None):
    """A :class:`TaskSuite` of preference tasks on ``env_id``: the given ``tasks`` (a suite file's
    ``[[tasks]]``, each with weights), the listed ``weights``, one task per objective
    (``per_objective``), or ``n`` drawn around ``anchors`` (default 3 anchors and 3 tasks per
    anchor); ``true_partition`` from the front where one is published, unless one is given (a
    suite file's own)."""
    what = f"--suite mo:{env_id}" if name is None else f"suite {name!r}"
    m, front = env_facts(env_id, gamma, what)
    anchor_of, points = None, []
    if tasks is not None:
        for t in tasks:
            if len(t.weights) != m:
                raise UserError(f"{what}: task {t.name!r} has {len(t.weights)} weights but {env_id!r} has {m} objectives")
        w, prefix = np.asarray([t.weights for t in tasks], dtype=np.float64), "given"
    elif weights is not None:
        for i, wv in enumerate(weights):
            try:
                check_weights(list(wv))
            except ValueError as exc:
                raise UserError(f"{what}: weights[{i}]: {exc}") from None
            if len(wv) != m:
                raise UserError(f"{what}: weights[{i}] has {len(wv)} numbers but {env_id!r} has {m} objectives")
        w = np.asarray(weights, dtype=np.float64)
        prefix = "pref"
    elif per_objective:
        w = np.eye(m)
        prefix = "obj"
    else:
        k = 3 if anchors is None else anchors
        n = 3 * k if n is None else n
        if not 1 <= k <= n:
            raise UserError(f"--anchors must be between 1 and the number of tasks ({n}), got {k}")
        w, anchor_of, points, _ = draw_preferences(m, front, n, k, seed, margin)
        prefix = None
    if tasks is None:
        names = [f"anchor{anchor_of[i]}-{i:02d}" if prefix is None else f"{prefix}-{i:02d}" for i in range(len(w))]
        tasks = [Task(name=nm, env_id=env_id, kwargs=dict(kwargs or {}), weights=[float(round(x, 6)) for x in wv])
                 for nm, wv in zip(names, w)]
    names = [t.name for t in tasks]
    partition, ties, point = None, [], [-1] * len(w)
    if front is not None:
        partition, ties, point = truth(np.asarray([t.weights for t in tasks]), front, names, tie_tolerance)
    if true_partition is not None:  # the suite file's own partition wins over the front's
        partition, ties = true_partition, []
    lines = [description or f"{env_id}: one task per preference w over its {m} objectives, reward w·r"]
    if true_partition is not None:
        lines.append(f"truth: the suite file's true_partition ({len(partition)} groups)")
    elif front is not None:
        lines.append(f"truth: tasks grouped by the point of the published Pareto front (gamma {gamma}) maximizing w·v "
                     f"({len(partition)} groups)")
        if ties:
            lines.append(f"near-ties left out of the truth (best and second-best points within {tie_tolerance:.0%}): "
                         + ", ".join(ties))
    else:
        lines.append("no published Pareto front: no truth to check the groups against")
    params = [{"weights": t.weights, **({"front_point": p} if front is not None else {}),
               **({"anchor": int(anchor_of[i])} if anchor_of is not None else {})}
              for i, (t, p) in enumerate(zip(tasks, point))]
    import importlib.metadata as md

    metadata = {"mo_env": env_id, "objectives": m, "front_gamma": gamma if front is not None else None,
                "margin": margin if anchor_of is not None and front is not None else None, "tie_tolerance": tie_tolerance,
                "anchor_points": [int(p) for p in points], "near_ties": ties,
                "front": front.round(6).tolist() if front is not None else None,
                "mo_gymnasium": md.version("mo-gymnasium")}
    preset = {"gamma": gamma, **(ppo_preset or {})}
    return TaskSuite(name or f"mo:{env_id}", tasks, true_partition=partition, description="; ".join(lines),
                     ppo_preset=preset, params=params, metadata=metadata, truth_excluded=ties, success_key=success_key)
