"""Multi-objective indicators of a set of trained policies: hypervolume, expected utility, and a
plot against the published Pareto front.

*Hypervolume*: the volume dominated by the policies' (discounted) vector returns and bounded by
a reference point, computed by pymoo (``pymoo.indicators.hv.HV``, which minimizes: returns and
reference point are negated).  The reference points (:data:`REF_POINTS`) are worse than any
policy's return in every objective; docs/morl.md lists them with the reason for each
(deep-sea-treasure's (0, -25) is the one MORL-Baselines' deep-sea-treasure examples use).

*Expected utility* (EU), as MORL-Baselines defines it: the mean over a set of preferences ``w``
of the best ``w·v`` any of the policies attains, here over the suite's own preferences.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import UserError
from .report import save_png

#: Hypervolume reference points per MO-Gymnasium id (docs/morl.md).
REF_POINTS: dict[str, tuple[float, ...]] = {
    "deep-sea-treasure-v0": (0.0, -25.0),
    "fruit-tree-v0": (0.0,) * 6,
    "resource-gathering-v0": (-1.0, -1.0, -2.0),
    "minecart-v0": (-1.0, -1.0, -200.0),
    "mo-lunar-lander-v3": (-101.0, -1001.0, -1001.0, -1001.0),
}


#: Objective names for plots (MO-Gymnasium's documentation of each env).
OBJECTIVES: dict[str, tuple[str, ...]] = {
    "deep-sea-treasure-v0": ("treasure", "time"),
    "fruit-tree-v0": ("protein", "carbs", "fats", "vitamins", "minerals", "water"),
    "resource-gathering-v0": ("death", "gold", "gems"),
    "minecart-v0": ("ore 1", "ore 2", "fuel"),
    "mo-lunar-lander-v3": ("landing", "shaping", "main engine fuel", "side engine fuel"),
}


def hypervolume(points, ref_point) -> float:
    """The hypervolume of ``points`` (one vector return per row; larger is better in every
    objective) above ``ref_point``; points not above it in every objective add nothing."""
    from pymoo.indicators.hv import HV

    pts = np.atleast_2d(np.asarray(points, dtype=np.float64))
    ref = np.asarray(ref_point, dtype=np.float64)
    if pts.shape[1] != ref.shape[0]:
        raise ValueError(f"points have {pts.shape[1]} objectives but the reference point has {ref.shape[0]}")
    pts = pts[np.all(pts > ref, axis=1)]
    if len(pts) == 0:
        return 0.0
    return float(HV(ref_point=-ref)(-pts))


def expected_utility(points, weights) -> float:
    """Mean over the preferences ``weights`` (rows) of max over ``points`` (rows) of w·v."""
    pts = np.atleast_2d(np.asarray(points, dtype=np.float64))
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    return float((w @ pts.T).max(axis=1).mean())


def ref_point_for(env_id: str) -> tuple[float, ...]:
    if env_id not in REF_POINTS:
        raise UserError(f"no hypervolume reference point for {env_id!r}; known: {', '.join(REF_POINTS)}")
    return REF_POINTS[env_id]


def indicators(suite, vector_returns: dict[str, list[float]]) -> dict:
    """Hypervolume (at the env's reference point) and expected utility over the suite's
    preferences of the policies whose discounted vector returns are ``vector_returns``
    (task name -> vector); plus, where the env publishes a front, the front's own values."""
    env_id = suite.metadata["mo_env"]
    pts = np.asarray(list(vector_returns.values()), dtype=np.float64)
    weights = np.asarray([t.weights for t in suite.tasks], dtype=np.float64)
    out = {"env": env_id, "policies": len(pts), "expected_utility": expected_utility(pts, weights)}
    if env_id in REF_POINTS:
        out["ref_point"] = list(REF_POINTS[env_id])
        out["hypervolume"] = hypervolume(pts, REF_POINTS[env_id])
    front = suite.metadata.get("front")
    if front is not None:
        out["front_expected_utility"] = expected_utility(front, weights)
        if env_id in REF_POINTS:
            out["front_hypervolume"] = hypervolume(front, REF_POINTS[env_id])
    return out


def indicator_line(ind: dict) -> str:
    """One line of :func:`indicators` for the console."""
    eu = f"expected utility over the suite's preferences {ind['expected_utility']:.3f}"
    if "front_expected_utility" in ind:
        eu += f" (published front: {ind['front_expected_utility']:.3f})"
    if "hypervolume" not in ind:
        return eu
    hv = f"hypervolume {ind['hypervolume']:.4g} at reference {tuple(ind['ref_point'])}"
    if "front_hypervolume" in ind:
        hv += f" (published front: {ind['front_hypervolume']:.4g})"
    return f"{hv}; {eu}"


def front_plot(suite, vector_returns: dict[str, list[float]], path: Path) -> Path:
    """A PNG of the policies' discounted vector returns against the published front: a scatter
    for two objectives, parallel coordinates for more."""
    import matplotlib.pyplot as plt

    pts = np.asarray(list(vector_returns.values()), dtype=np.float64)
    front = suite.metadata.get("front")
    m = pts.shape[1]
    names = list(OBJECTIVES.get(suite.metadata.get("mo_env"), [f"objective {i}" for i in range(m)]))
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    if m == 2:
        if front is not None:
            f = np.asarray(front)
            ax.scatter(f[:, 0], f[:, 1], marker="x", color="grey", label="published Pareto front")
        ax.scatter(pts[:, 0], pts[:, 1], color="C0", label="trained policies")
        at: dict[tuple, list[str]] = {}  # policies at the same point share one label
        for name, p in vector_returns.items():
            at.setdefault(tuple(np.round(p, 3)), []).append(name)
        for p, who in at.items():
            ax.annotate(", ".join(who), p, fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(names[0])
        ax.set_ylabel(names[1])
    else:
        xs = np.arange(m)
        if front is not None:
            for i, f in enumerate(np.asarray(front)):
                ax.plot(xs, f, color="grey", alpha=0.3, lw=0.8, label="published Pareto front" if i == 0 else None)
        for i, (name, p) in enumerate(vector_returns.items()):
            ax.plot(xs, p, marker="o", lw=1.5, color=f"C{i % 10}", label=name)
        ax.set_xticks(xs, names, rotation=30, ha="right")
        ax.set_ylabel("discounted return")
    ax.set_title(f"{suite.name}: vector returns (gamma {suite.metadata.get('front_gamma') or 'see config'})")
    ax.legend(fontsize=7)
    save_png(fig, Path(path))
    return Path(path)
