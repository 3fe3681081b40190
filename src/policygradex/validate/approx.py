"""First-order approximation error along the real adaptation paths (step 2 of the validation).

Along each subset's fine-tuning path (the actor after PPO iterations, thinned by
:func:`_thin`) and at points rescaled along it to hit target relative distances ``delta``,
``Delta_true = log pi_theta(a|s) - log pi_theta*(a|s)`` is compared on the subset's held-out
transitions with the exact first-order prediction ``Delta_lin = g^T (theta - theta*)``:
``err = ||Delta_true - Delta_lin||_2 / ||Delta_true||_2``; a random direction at the same
distance is the control.  The errors are summarized per target distance (bucket).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from ..estimate.first_order import float64_copy, functional_logprob, functional_logprob_change, relative_error
from ..rl.collected import Collected

__all__ = ["BUCKET_FACTOR", "bucket_label", "approx_error"]


def bucket_label(delta: float) -> str:
    """``0.001 -> "0.1%"``, ``0.05 -> "5%"``."""
    return f"{100 * delta:g}%"


#: A point belongs to the bucket of target delta_b when delta_b / sqrt(2) <= delta < delta_b * sqrt(2).
BUCKET_FACTOR = math.sqrt(2.0)


def _thin(k: int, keep: int) -> list[int]:
    """At most ``keep`` snapshot indices out of ``k``: iterations 1, 2, 4, 8, ... and the last one
    (the error changes smoothly with the distance; early iterations move the most)."""
    if k <= keep:
        return list(range(k))
    idx = sorted({min(k - 1, 2**j - 1) for j in range(keep - 1)} | {k - 1})
    return idx[:keep - 1] + [k - 1] if len(idx) > keep else idx


def _path_points(theta_star: torch.Tensor, path: torch.Tensor, targets: Sequence[float],
                 random_dir: torch.Tensor | None = None, max_real: int = 8) -> list[dict]:
    """The real snapshots of one adaptation path (at most ``max_real``, see :func:`_thin`), and
    for every target delta the point
    ``theta* + t (theta_k - theta*)`` with ``t = target / delta_k``, ``theta_k`` the first snapshot
    at or beyond the target (the last one if the path stays below it)."""
    norm = float(theta_star.norm())
    deltas = [float((p - theta_star).norm()) / norm for p in path]
    pts = [{"kind": "real", "snapshot": k, "t": 1.0, "theta": path[k]} for k in _thin(len(path), max_real)]
    for target in targets:
        k = next((j for j, d in enumerate(deltas) if d >= target), len(deltas) - 1)
        if deltas[k] <= 0:
            continue
        t = target / deltas[k]
        pts.append({"kind": "scaled", "snapshot": k, "t": t, "target": target,
                    "theta": theta_star + t * (path[k] - theta_star)})
        if random_dir is not None:  # control: the same distance in a random direction
            pts.append({"kind": "random", "snapshot": 0, "t": float("nan"), "target": target,
                        "theta": theta_star + target * norm * random_dir / random_dir.norm()})
    return pts


def _bucket_stats(points: list[dict], targets: Sequence[float]) -> dict[str, dict]:
    """Per target delta (labelled by :func:`bucket_label`): the number of points within a factor
    :data:`BUCKET_FACTOR` of it and the statistics of their errors (None where there are none)."""
    out = {}
    for target in targets:
        near = [p for p in points if target / BUCKET_FACTOR <= p["delta"] < target * BUCKET_FACTOR and math.isfinite(p["error"])]
        inb = [p for p in near if p["kind"] != "random"]
        rnd = np.array([p["error"] for p in near if p["kind"] == "random"])
        errs = np.array([p["error"] for p in inb])
        real = np.array([p["error"] for p in inb if p["kind"] == "real"])
        vs_logp = np.array([p["error_vs_logp"] for p in inb])
        out[bucket_label(target)] = {
            "delta": target, "n": int(errs.size), "n_real": int(real.size),
            "median": float(np.median(errs)) if errs.size else None,
            "mean": float(errs.mean()) if errs.size else None,
            "max": float(errs.max()) if errs.size else None,
            "median_real": float(np.median(real)) if real.size else None,
            "median_vs_logp": float(np.median(vs_logp)) if vs_logp.size else None,
            "median_random_direction": float(np.median(rnd)) if rnd.size else None,
        }
    return out


def approx_error(model, theta_star: torch.Tensor, ro: Collected, members: np.ndarray, paths: list[torch.Tensor],
                 steps: list[list[int]], targets: Sequence[float], seed: int = 0,
                 max_real: int = 8) -> tuple[dict, list[dict]]:
    """``(buckets, points)``: the error at every point of every subset's path (real snapshots,
    rescaled and random-direction points, see :func:`_path_points`) on the subset's held-out
    rows in float64, and its summary per target distance (:func:`_bucket_stats`).  ``seed``
    seeds the random directions, one per subset."""
    norm = float(theta_star.norm())
    act64 = float64_copy(model.actor)
    gen = torch.Generator().manual_seed(seed)
    points = []
    for s, path in enumerate(paths):
        random_dir = torch.randn(theta_star.shape, generator=gen, dtype=torch.float64)
        tasks = torch.as_tensor(np.flatnonzero(members[s]))
        rows = torch.isin(ro.task, tasks) & ro.heldout
        f = functional_logprob(act64, ro.x[rows], ro.actions[rows])
        for p in _path_points(theta_star, path.to(theta_star.dtype), targets, random_dir, max_real):
            d_true, d_lin, logp = functional_logprob_change(f, theta_star, p["theta"])
            delta = float((p["theta"].double() - theta_star.double()).norm()) / norm
            points.append({"subset": s, "kind": p["kind"], "steps": steps[s][p["snapshot"]], "t": p["t"], "delta": delta,
                           "error": relative_error(d_true, d_lin), "error_vs_logp": relative_error(logp, logp - d_true + d_lin),
                           "rows": int(rows.sum()), "rms_delta_logp": float(d_true.pow(2).mean().sqrt())})
    return _bucket_stats(points, targets), points
