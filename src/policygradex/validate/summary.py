"""The sections of ``validation.json``: the estimate next to the ground truth (steps 3 and 4 of
the validation), one small function per section.

A *ground truth* (:class:`Truth`) is a performance table from real fine-tuning (``f_true``, the
mean return, or ``f_sur``, the real surrogate improvement) grouped by the same code and settings
as the run; the run's side is :class:`RunEstimate`.  The comparisons: NMI / ARI of the groups
against a random-grouping floor, Spearman correlations of the standardized tables and of the
affinities, the reproducibility of a ground truth across fine-tuning seeds, and the speedup.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from scipy.stats import ConstantInputWarning, spearmanr
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from .. import artifacts as art
from ..tasks.base import truth_nmi
from ..estimate.affinity import Affinity, standardize_per_task
from ..group.null import NullTest
from ..group.sdp import Grouping, random_grouping
from ..stage import stage_seconds

__all__ = [
    "agreement",
    "speedup_breakdown",
    "standardized",
    "Truth",
    "RunEstimate",
    "random_groupings",
    "subsets_section",
    "approx_error_section",
    "agreement_section",
    "spearman_section",
    "reliability_section",
    "speedup_section",
    "ground_truth_section",
    "surrogate_section",
    "estimated_section",
    "finetune_section",
    "timings_section",
]

APPROX_ERROR_DEFINITION = "||dlogp_true - g^T(theta - theta*)|| / ||dlogp_true|| over the subset's held-out rows"
SURROGATE_DEFINITION = ("f_sur(S, i) = mean over task i's held-out rows of A_t (pi_theta_S(a|s) / pi_theta*(a|s) - 1), "
                        "theta_S really fine-tuned on S (mean over the fine-tuning seeds)")


# ============================================================================ statistics


def agreement(labels_a: Sequence[int], labels_b: Sequence[int]) -> dict[str, float]:
    """NMI and ARI (sklearn) of two partitions given as label vectors; invariant to relabeling."""
    a, b = np.asarray(labels_a), np.asarray(labels_b)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"label vectors must have the same length, got {a.shape} and {b.shape}")
    return {"nmi": float(normalized_mutual_info_score(a, b)), "ari": float(adjusted_rand_score(a, b))}


def speedup_breakdown(policygradex_s: dict[str, float], finetune_s: Sequence[float], eval_s: Sequence[float],
                      shared_s: dict[str, float | None] | None = None) -> tuple[float | None, dict]:
    """``(speedup, breakdown)``: the real route (fine-tuning + evaluation of every subset) over the
    PolicyGradEx route (the sum of its timed stages); stages both routes share (training θ*,
    sampling subsets, grouping) are listed but counted in neither."""
    pgx = {k: float(v) for k, v in policygradex_s.items()}
    pgx_total = float(sum(pgx.values()))
    ft_total, ev_total = float(sum(finetune_s)), float(sum(eval_s))
    real_total = ft_total + ev_total
    breakdown = {
        "policygradex_s": {**pgx, "total": pgx_total},
        "real_s": {"finetune": ft_total, "evaluate": ev_total, "total": real_total,
                   "finetune_per_subset_mean": ft_total / max(len(finetune_s), 1),
                   "evaluate_per_subset_mean": ev_total / max(len(eval_s), 1)},
        "shared_not_counted_s": dict(shared_s or {}),
    }
    return (real_total / pgx_total if pgx_total > 0 else None), breakdown


def _rho(a, b) -> float | None:
    """Spearman's rank correlation (scipy), or None where it is undefined (a constant input)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantInputWarning)
        r = float(spearmanr(a, b).statistic)
    return r if np.isfinite(r) else None


def _finite_or_none(x: float | None) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


def _mean(xs: list) -> float | None:
    """Mean of the defined values, None if there are none."""
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def standardized(f: np.ndarray, members: np.ndarray) -> np.ndarray:
    """``f`` standardized per task over the subsets that hold it (as the affinity does)."""
    return standardize_per_task(f, members)[0]


def _seed_pairs(reps: np.ndarray, members: np.ndarray) -> tuple[list[np.ndarray], list[float | None]]:
    """Every repeat's f standardized per task (the in-subset entries), and the Spearman
    correlation of every pair of repeats: how reproducible a ground truth is across seeds."""
    z = [standardized(r_, members)[members] for r_ in reps]
    return z, [_rho(z[a], z[b]) for a in range(len(z)) for b in range(a + 1, len(z))]


def _grouping_summary(g, nt, names: Sequence[str], alpha: float) -> dict:
    """The JSON fields of a ground-truth grouping and its null test."""
    return {"groups": [[names[i] for i in grp] for grp in g.groups], "labels": [int(x) for x in g.labels],
            "k": int(g.k), "null_p": float(nt.p_value), "distinguishable_from_noise": bool(nt.p_value < alpha)}


def _upper(U: np.ndarray) -> np.ndarray:
    """The entries above the diagonal."""
    return U[np.triu_indices(U.shape[0], k=1)]


# ============================================================================ the two sides


@dataclass(frozen=True)
class Truth:
    """A ground truth: a table ``f`` [m, n] from real fine-tuning, with the affinity, grouping and
    null test that :func:`policygradex.stages.group_with_null` makes of it."""

    f: np.ndarray
    affinity: Affinity
    grouping: Grouping
    null: NullTest


@dataclass(frozen=True)
class RunEstimate:
    """The run's estimate as the validation reads it back."""

    groups: dict  #: groups.json
    labels: np.ndarray  #: the estimated groups' labels
    f: np.ndarray  #: f_table.csv, [m, n]
    z: np.ndarray  #: f standardized per task
    U: np.ndarray  #: affinity.csv, [n, n]

    @classmethod
    def load(cls, run_dir: Path, members: np.ndarray) -> RunEstimate:
        groups = art.read_json(run_dir / "groups.json")
        f = art.read_table(run_dir / "f_table.csv")
        return cls(groups, np.asarray(groups["labels"]), f, standardized(f, members),
                   art.read_table(run_dir / "affinity.csv", index=True))


def random_groupings(labels: np.ndarray, n: int, draws: int, seed: int) -> list[np.ndarray]:
    """``draws`` uniformly random partitions with the group sizes of ``labels`` (seeds
    ``seed``, ``seed + 1``, ...): the floor of the agreement scores."""
    sizes = np.bincount(labels).tolist()
    return [random_grouping(sizes, n, seed=seed + d) for d in range(draws)]


# ============================================================================ the sections


def subsets_section(members: np.ndarray) -> dict:
    return {"m": int(members.shape[0]), "size": int(members[0].sum())}


def approx_error_section(buckets: dict, points: list[dict]) -> dict:
    """The top-level keys of the first-order approximation error."""
    return {"approx_error": buckets, "approx_error_definition": APPROX_ERROR_DEFINITION, "approx_error_points": points}


def agreement_section(truth: Truth, est: RunEstimate, rnd: list[np.ndarray]) -> dict:
    """The top-level keys of the estimated groups' agreement with the return ground truth's, and
    the same scores of random groupings."""
    labels = truth.grouping.labels
    agree = agreement(labels, est.labels)
    rnd_nmi = np.array([normalized_mutual_info_score(labels, r) for r in rnd])
    rnd_ari = np.array([adjusted_rand_score(labels, r) for r in rnd])
    return {"nmi": agree["nmi"], "ari": agree["ari"], "random_nmi": float(rnd_nmi.mean()),
            "random_nmi_q95": float(np.quantile(rnd_nmi, 0.95)), "random_ari": float(rnd_ari.mean()),
            "random_draws": len(rnd)}


def spearman_section(truth: Truth, est: RunEstimate, members: np.ndarray, names: Sequence[str]) -> dict:
    """The top-level keys of the rank correlations of the estimate with the return ground truth:
    of the standardized tables, per task (raw f, tasks in at least 3 subsets) and of the affinities."""
    z_true = standardized(truth.f, members)
    per_task = {}
    for i, name in enumerate(names):
        col = members[:, i]
        per_task[name] = _rho(est.f[col, i], truth.f[col, i]) if col.sum() > 2 else None
    rho_aff = _rho(_upper(est.U), _upper(truth.affinity.U)) if len(names) > 2 else None
    return {"spearman": _finite_or_none(_rho(est.z[members], z_true[members])), "spearman_per_task": per_task,
            "affinity_spearman": _finite_or_none(rho_aff)}


def reliability_section(f_repeats: np.ndarray, est: RunEstimate, members: np.ndarray) -> dict:
    """``f_true_reliability``: how well the fine-tuning seeds agree with each other, the
    Spearman-Brown reliability of their mean, and the estimate against each seed."""
    z_reps, pair = _seed_pairs(f_repeats, members)
    r, rel1 = len(z_reps), _mean(pair)
    rel_mean = (r * rel1 / (1 + (r - 1) * rel1)) if rel1 is not None and rel1 > -1 / max(r - 1, 1) else None
    return {"seeds": r, "spearman_between_seeds": pair, "mean_between_seeds": rel1,
            "spearman_brown_of_mean": rel_mean, "spearman_estimate_vs_each_seed": [_rho(est.z[members], z) for z in z_reps]}


def speedup_section(run_dir: Path, ft: dict) -> dict:
    """The top-level keys of the speedup: the real route's wall time over the run's stages'."""
    st = stage_seconds(run_dir)
    pgx_stages = {k: st.get(k, float("nan")) for k in ("collect", "features", "surrogate", "evaluate")}
    speedup, breakdown = speedup_breakdown(pgx_stages, ft["finetune_s"], ft["eval_s"],
                                           {k: st.get(k) for k in ("train", "subsets", "group")})
    return {"speedup": speedup, "speedup_breakdown": breakdown}


def ground_truth_section(truth: Truth, names: Sequence[str], alpha: float, true_labels: Sequence[int] | None) -> dict:
    """``ground_truth``: the return ground truth's groups and null test (and their NMI with the
    suite's planted partition, where it has one)."""
    g = truth.grouping
    out = {**_grouping_summary(g, truth.null, names, alpha), "penalty": g.penalty,
           "constant_tasks": [names[i] for i in truth.affinity.constant_tasks]}
    if true_labels is not None:
        out["nmi_vs_true_partition"] = truth_nmi(true_labels, g.labels)
    return out


def surrogate_section(sur: Truth, sur_repeats: np.ndarray, est: RunEstimate, members: np.ndarray, rnd: list[np.ndarray],
                      names: Sequence[str], alpha: float, true_labels: Sequence[int] | None) -> dict:
    """``surrogate_truth``: the estimate against the surrogate ground truth (no rollout noise),
    its reproducibility across seeds, and its groups and null test."""
    g = sur.grouping
    z_sur = standardized(sur.f, members)
    _, pair = _seed_pairs(sur_repeats, members)
    rnd_nmi = np.array([normalized_mutual_info_score(g.labels, r) for r in rnd])
    out = {"definition": SURROGATE_DEFINITION,
           **agreement(g.labels, est.labels),
           "random_nmi": float(rnd_nmi.mean()),
           "spearman": _rho(est.z[members], z_sur[members]),
           "affinity_spearman": _rho(_upper(est.U), _upper(sur.affinity.U)) if len(names) > 2 else None,
           "spearman_between_seeds": pair, "mean_between_seeds": _mean(pair),
           **_grouping_summary(g, sur.null, names, alpha)}
    if true_labels is not None:
        out["nmi_vs_true_partition"] = truth_nmi(true_labels, g.labels)
    return out


def estimated_section(est: RunEstimate, true_labels: Sequence[int] | None) -> dict:
    """``estimated``: the run's groups as groups.json has them."""
    out = {"groups": est.groups["groups"], "labels": est.groups["labels"], "k": est.groups["k"],
           "null_p": est.groups["null_p"]}
    if true_labels is not None:
        out["nmi_vs_true_partition"] = truth_nmi(true_labels, est.labels)
    return out


def finetune_section(ft: dict, theta_star: torch.Tensor, f_true: np.ndarray) -> dict:
    """``finetune``: how far the fine-tuning went (steps, iterations, relative distance of theta_S
    from theta*) and the mean returns before and after."""
    final_delta = [float((p[-1].double() - theta_star).norm() / theta_star.norm()) for p in ft["paths"]]
    return {"env_steps_per_subset": [s[-1] for s in ft["steps"]], "iterations_per_subset": [len(s) for s in ft["steps"]],
            "final_delta": final_delta, "final_delta_median": float(np.median(final_delta)),
            "theta_star_mean_return": {k: float(np.mean(v)) for k, v in ft["theta_star_returns"].items()},
            "f_true_mean_return": float(np.nanmean(f_true))}


def timings_section(ft: dict, approx_error: float, ground_truth: float, hessian: float) -> dict:
    """``timings_s``: the real route's wall time per subset and the analysis steps' (seconds)."""
    return {"finetune": ft["finetune_s"], "evaluate": ft["eval_s"], "approx_error": approx_error,
            "ground_truth": ground_truth, "hessian": hessian}
