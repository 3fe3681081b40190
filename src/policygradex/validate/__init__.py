"""Validation of a PolicyGradEx run against real fine-tuning (METHOD.md, "Validation").

``policygradex run`` estimates, for every sampled subset S, how theta* would move if it were
trained on S (theta_S = theta* + P u_S) and how well every task of S would then do (f(S, i)),
all from first-order gradient features.  This package does the expensive thing the estimate
replaces, on the *same* subsets, and measures how far the estimate is from it:

1. **Real adaptation.**  theta* is fine-tuned with PPO on each subset's tasks
   (:func:`policygradex.rl.ppo.finetune`, ``finetune_steps`` environment steps, one fixed seed
   for every subset) and evaluated by rollouts with sampled actions and common random numbers
   (the same environment seeds and action noise for every subset):
   ``f_true(S, i)`` = mean return of theta_S on task i.
2. **First-order approximation error.**  Along each real adaptation path (the actor after
   every PPO iteration) and at points rescaled along it to hit target relative distances,
   ``Delta_true = log pi_theta(a|s) - log pi_theta*(a|s)`` is compared on the subset's
   held-out transitions with the exact first-order prediction ``Delta_lin = g^T (theta -
   theta*)`` (a forward-mode ``torch.func.jvp``, no projection):
   ``err = ||Delta_true - Delta_lin||_2 / ||Delta_true||_2``.
3. **Ground truth.**  The affinity of ``f_true`` on the same subsets, grouped by the same code
   and settings as the run; NMI / ARI of the run's groups against it, a random-grouping
   floor, Spearman correlation of the standardized f against the standardized f_true.
4. **Speedup.**  Wall time of the real route (fine-tuning + evaluation of every subset) over
   the PolicyGradEx route (collect + features + surrogate + evaluate stages).
5. **Generalization measure.**  A Hutchinson estimate of the trace of the Hessian of the
   policy loss ``L(theta) = -mean_t A_t log pi_theta(a_t|s_t)`` at theta* and at a few
   theta_S (Hessian-vector products by forward-over-reverse ``torch.func``), next to the
   measured gap between held-out and training rows.

The real route runs as independent units (theta*'s evaluation, one fine-tuning per subset and
seed) on an execution backend (:mod:`policygradex.backend`: in-process, a process pool or
Ray; the results do not depend on it).  Every finished unit is cached in
``DIR/validate/units/`` at once, so an interrupted validation resumes from them; the assembled
results in ``DIR/validate/finetune.pt`` with a manifest keyed by the run's artifacts and the
validation options; the analysis in ``DIR/validation.json`` with
a manifest keyed by the fine-tuning digest, the run's estimates and the analysis options.
The formulas are in ``docs/validation.md``.

The package, by job: :mod:`.finetune` (the real route as cached units: ``f_true``, and
``f_sur`` from the same fine-tuned actors), :mod:`.approx` (the first-order approximation
error along the paths), :mod:`.hessian` (the Hutchinson trace), :mod:`.summary` (the sections
of ``validation.json``); :func:`validate` here runs them in order.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from .. import artifacts as art
from ..config import RunConfig, ValidateConfig
from ..errors import UserError
from ..estimate.collect import load_meta_policy, load_rollouts
# logprob_change and relative_error are re-exported (their home: estimate.first_order)
from ..estimate.first_order import logprob_change, relative_error
from ..estimate.persample import flat_params
from ..report import add_validation, approx_error_plot, estimated_vs_true_plot
from ..stages import group_with_null
from ..tasks import TaskSuite
from ..ui import console
from ..rl.collected import Collected
# BUCKET_FACTOR, _thin, _finetune_setup, _finetune_unit and finetune_units: importable from here (tests, benchmarks)
from .approx import BUCKET_FACTOR, _thin, approx_error, bucket_label  # noqa: F401
from .finetune import _finetune_setup, _finetune_unit, finetune_units  # noqa: F401
from .finetune import finetune_stage, finetune_subsets, run_digest, surrogate_truth
from .hessian import exact_hessian_trace, hessian_traces, hutchinson_trace, hvp_fn, policy_loss_fn
from .summary import (
    RunEstimate,
    Truth,
    agreement,
    agreement_section,
    approx_error_section,
    estimated_section,
    finetune_section,
    ground_truth_section,
    random_groupings,
    reliability_section,
    spearman_section,
    speedup_breakdown,
    speedup_section,
    standardized,
    subsets_section,
    surrogate_section,
    timings_section,
)

__all__ = [
    "logprob_change",
    "relative_error",
    "policy_loss_fn",
    "hvp_fn",
    "hutchinson_trace",
    "exact_hessian_trace",
    "finetune_subsets",
    "bucket_label",
    "agreement",
    "speedup_breakdown",
    "validate",
]


def _check_run(run_dir: Path, suite: TaskSuite, cfg: RunConfig) -> None:
    needed = ["config.json", "subsets.json", "collect/meta_policy.json", "collect/rollouts.pt", "f_table.csv", "groups.json"]
    missing = [p for p in needed if not (run_dir / p).is_file()]
    if missing:
        raise UserError(f"{run_dir} is not a finished run (missing {missing[0]}); run `policygradex run --out {run_dir}` first")
    conf = art.read_json(run_dir / "config.json")
    if conf.get("suite") != suite.to_dict() or conf.get("config") != cfg.model_dump(mode="json"):
        raise UserError(f"{run_dir} holds a run of another suite or config; validate with the same options as the run")


def _analysis_key(run_dir: Path, cfg: RunConfig, vcfg: ValidateConfig, ft_digest: str) -> str:
    """The analysis' cache key: the fine-tuning's digest, the run's estimate (its collect,
    evaluate and group stages), the grouping settings and the options of the analysis."""
    an_fields = vcfg.model_dump(mode="json", exclude={"finetune_steps", "finetune_seed", "finetune_seeds", "episodes", "eval_seed"})
    return art.config_hash([ft_digest, run_digest(run_dir, ("collect", "evaluate", "group")), cfg.group.model_dump(mode="json"),
                            an_fields])


def _ground_truths(vdir: Path, model, theta_star: torch.Tensor, ro: Collected, members: np.ndarray, ft: dict, f_true: np.ndarray,
                   suite: TaskSuite, cfg: RunConfig, backend) -> tuple[Truth, Truth, np.ndarray]:
    """``(truth, surrogate, surrogate repeats)``: the return ground truth ``f_true`` and the
    surrogate one ``f_sur`` (the real improvement of the surrogate objective, no rollout noise),
    each grouped by the run's code and settings (SDP + null test)."""
    with console.status(f"ground-truth grouping: SDP + null test ({cfg.group.null_permutations} permutations)"):
        truth = Truth(f_true, *group_with_null(f_true, members, cfg.group, backend))
    with console.status("ground truth from the real surrogate improvement: SDP + null test"):
        sur_reps = surrogate_truth(model, theta_star, ro, members, ft["finals"])
        f_sur = sur_reps.mean(axis=0)
        sur = Truth(f_sur, *group_with_null(f_sur, members, cfg.group, backend))
    art.write_table(vdir / "f_true_surrogate.csv", f_sur, suite.names)
    return truth, sur, sur_reps


def _analysis(run_dir: Path, suite: TaskSuite, cfg: RunConfig, vcfg: ValidateConfig, members: np.ndarray, model, ft: dict,
              backend) -> dict:
    """Steps 2-5 on the fine-tuning ``ft``: the content of ``validation.json`` (less
    ``timings_s.validate_call``); writes the two plots and the ground-truth tables."""
    vdir = run_dir / "validate"
    t0 = time.perf_counter()
    f_true = np.asarray(ft["f_true"], dtype=float)
    art.write_table(vdir / "f_true.csv", f_true, suite.names)
    theta_star = flat_params(model.actor).to(torch.float64)
    ro = load_rollouts(run_dir)

    # 2. first-order approximation error along the real paths
    with console.status("first-order approximation error along the fine-tuning paths"):
        buckets, points = approx_error(model, theta_star, ro, members, ft["paths"], ft["steps"], vcfg.buckets,
                                       vcfg.hessian_seed, vcfg.approx_snapshots)
    t_approx = time.perf_counter() - t0

    # 3. the ground truths, grouped as the run groups
    t1 = time.perf_counter()
    truth, sur, sur_reps = _ground_truths(vdir, model, theta_star, ro, members, ft, f_true, suite, cfg, backend)
    t_truth = time.perf_counter() - t1

    # 5. Hessian trace and generalization gap
    t2 = time.perf_counter()
    with console.status(f"Hessian trace (Hutchinson, {vcfg.hessian_probes} probes) at theta* and {vcfg.hessian_subsets} theta_S"):
        hess = hessian_traces(model, theta_star, ro, members, ft["paths"], vcfg, suite.names)
    t_hess = time.perf_counter() - t2

    # 3 and 4. the estimate against the ground truths, and the speedup
    est = RunEstimate.load(run_dir, members)
    rnd = random_groupings(est.labels, suite.n, vcfg.random_draws, vcfg.random_seed)
    names, alpha, true_labels = suite.names, cfg.group.alpha, suite.true_labels()
    result = {
        "suite": suite.name,
        "tasks": names,
        "options": vcfg.model_dump(mode="json"),
        "subsets": subsets_section(members),
        **approx_error_section(buckets, points),
        **agreement_section(truth, est, rnd),
        **spearman_section(truth, est, members, names),
        "f_true_reliability": reliability_section(np.asarray(ft["f_true_repeats"]), est, members),
        **speedup_section(run_dir, ft),
        "hessian_trace": hess,
        "ground_truth": ground_truth_section(truth, names, alpha, true_labels),
        "surrogate_truth": surrogate_section(sur, sur_reps, est, members, rnd, names, alpha, true_labels),
        "estimated": estimated_section(est, true_labels),
        "finetune": finetune_section(ft, theta_star, f_true),
        "timings_s": timings_section(ft, approx_error=t_approx, ground_truth=t_truth, hessian=t_hess),
    }

    approx_error_plot(points, vcfg.buckets, run_dir / "approx_error.png")
    estimated_vs_true_plot(est.z, standardized(f_true, members), members, names, truth.grouping.labels, result["spearman"],
                           run_dir / "estimated_vs_true.png")
    result["timings_s"]["analysis_total"] = time.perf_counter() - t0
    return result


def validate(run_dir: str | Path, suite: TaskSuite, cfg: RunConfig, vcfg: ValidateConfig | None = None, backend=None) -> dict:
    """Validate the finished run in ``run_dir`` (made by :func:`policygradex.pipeline.run` with
    ``suite`` and ``cfg``) against real fine-tuning on the same subsets.

    Writes ``validation.json``, ``approx_error.png``, ``estimated_vs_true.png`` and
    ``validate/`` (``finetune.pt``, ``f_true.csv``, manifests) under ``run_dir``; returns the
    content of ``validation.json``.  Reruns reuse the cached fine-tuning and analysis.

    ``backend`` (:mod:`policygradex.backend`, default: this process, serially) runs the
    fine-tuning units; the caller closes it.  The result does not depend on it.
    """
    vcfg = vcfg or ValidateConfig()
    run_dir = Path(run_dir)
    _check_run(run_dir, suite, cfg)
    torch.set_num_threads(cfg.ppo.threads)
    t_start = time.perf_counter()

    sub = art.read_json(run_dir / "subsets.json")
    members = np.array([[name in s for name in suite.names] for s in sub["subsets"]], dtype=bool)
    model = load_meta_policy(run_dir)

    # 1. real fine-tuning (cached units)
    ft, ft_digest = finetune_stage(run_dir, run_dir / "validate", model, suite, members, cfg, vcfg, backend)
    stage = art.Stage(run_dir, "validate", _analysis_key(run_dir, cfg, vcfg, ft_digest))
    if stage.current:
        result = art.read_json(run_dir / "validation.json")
        add_validation(run_dir, result)
        return result

    result = _analysis(run_dir, suite, cfg, vcfg, members, model, ft, backend)
    result["timings_s"]["validate_call"] = time.perf_counter() - t_start
    art.write_json(run_dir / "validation.json", result)
    add_validation(run_dir, result)
    stage.done(["validation.json", "approx_error.png", "estimated_vs_true.png", "validate/f_true.csv", "validate/f_true_surrogate.csv"])
    return result
