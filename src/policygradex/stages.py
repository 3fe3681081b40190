"""The seven cached stages of a run, each a :class:`~policygradex.stage.StageDef`.

Each stage's ``compute(run_dir, cfg, **inputs)`` writes its artifacts (atomically) and returns
their paths; ``load(run_dir)`` reads them back as the stage's typed output.  The maths lives in
the modules named beside each stage; this module only moves data between them and the run
directory.  :mod:`policygradex.pipeline` chains the stages; ``validate`` and ``compare`` read
their outputs and reuse :func:`group_with_null` (the group stage's SDP + null test).

    train      multi-task learner on all tasks -> checkpoints               (rl.learners)
    collect    choose theta* (healthy advantage signal), roll it out, GAE  (estimate.collect)
    features   g~ = P^T grad log pi(a|s) per transition -> FeatureStore    (estimate.features)
    subsets    m subsets covering every pair >= c times                    (estimate.subsets)
    surrogate  weighted logistic regression per subset, lam for target delta (estimate.surrogate)
    evaluate   f(S, i) for every task i in every subset S                 (estimate.evaluators)
    group      affinity U, SDP grouping, null test, self-checks            (estimate.affinity, group)
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import artifacts as art
from .config import CollectConfig, EvaluateConfig, FeaturesConfig, GroupConfig, PPOConfig, SACConfig, SubsetsConfig, SurrogateConfig
from .errors import UserError
from .estimate.affinity import Affinity, min_pair_count, table_affinity
from .estimate.collect import collect as collect_rollouts
from .estimate.collect import MetaPolicy, load_rollouts, select_checkpoint
from .estimate.evaluators import EVALUATORS
from .estimate.features import FeatureStore, build_features
from .estimate.first_order import logprob_change, relative_error
from .estimate.persample import flat_params
from .estimate.projectors import build_projector, projector_from_spec
from .estimate.subsets import sample_subsets
from .estimate.surrogate import choose_lambda
from .group.consensus import Consensus, consensus
from .group.null import NullTest, null_test
from .group.sdp import Grouping, group_tasks
from .group.stability import bootstrap_stability
from .rl.checkpoint import list_checkpoints, load_checkpoint
from .rl.device import resolve_device
from .rl.collected import Collected
from .rl.learners import TrainResult, learner_for
from .stage import StageDef
from .tasks import TaskSuite
from .ui import console, progress_bar
from .backend import Resources, Unit
from .estimate.rollout_eval import rollout_return
from .report import affinity_heatmap, signal_summary

__all__ = ["TRAIN", "COLLECT", "FEATURES", "SUBSETS", "SURROGATE", "EVALUATE", "GROUP", "ThetaStar", "Subsets", "SurrogateFit",
           "Groups", "Estimate", "group_with_null", "train_meta_policy", "verdict"]


# ============================================================================ 1. train


def train_meta_policy(suite: TaskSuite, cfg: PPOConfig | SACConfig, out_dir: str | Path,
                      tensorboard: str | Path | None = None) -> TrainResult:
    """The learner of ``cfg`` (:mod:`policygradex.rl.learners`) on all tasks, with a progress bar
    (steps/s, mean return, ETA)."""
    learner = learner_for(cfg)
    learner.check_suite(suite)
    with progress_bar(learner.progress_total(cfg, suite.n), f"train {suite.name} ({learner.title})") as bar:
        def on_progress(steps: int, info: dict) -> None:
            finite = [r for r in info["returns"].values() if r is not None]
            bar.advance(steps, f"return mean {sum(finite) / len(finite):.1f} min {min(finite):.1f}" if finite else "")

        return learner.train(suite, cfg, out_dir, tensorboard, on_progress)


def _train(run_dir: Path, cfg: PPOConfig | SACConfig, suite: TaskSuite, tensorboard: str | Path | None = None) -> list[str]:
    res = train_meta_policy(suite, cfg, run_dir / "train", tensorboard)
    return [str(p.relative_to(run_dir)) for p in res.checkpoints] + ["train/train_history.json"]


TRAIN = StageDef("train", ("suite",), _train, lambda run_dir: list_checkpoints(run_dir / "train" / "checkpoints"))


# ============================================================================ 2. collect


@dataclass
class ThetaStar:
    """The collect stage's output: the chosen checkpoint's record (``collect/meta_policy.json``)
    and its model; the rollouts (``collect/rollouts.pt``) are read on demand."""

    run_dir: Path
    meta: MetaPolicy
    model: torch.nn.Module

    def rollouts(self) -> Collected:
        return load_rollouts(self.run_dir)


def _collect(run_dir: Path, cfg: CollectConfig, checkpoints: list[Path]) -> list[str]:
    if not checkpoints:
        raise UserError(f"no checkpoints under {run_dir / 'train'}; rerun to train")
    if cfg.checkpoint is not None and not any(int(p.stem.split("_")[1]) == cfg.checkpoint for p in checkpoints):
        steps = ", ".join(str(int(p.stem.split("_")[1])) for p in checkpoints)
        raise UserError(f"--checkpoint {cfg.checkpoint}: no such checkpoint; available steps: {steps}")
    with console.status("choosing theta*: probing checkpoints' advantage signal"):
        sel = select_checkpoint(checkpoints, cfg.probe_transitions, cfg.min_adv_scale, cfg.min_label_frac,
                                cfg.min_healthy_frac, cfg.seed, cfg.checkpoint, cfg.signal_keep, cfg.progress_cap,
                                cfg.signal_reference)
    model, suite, learner_cfg, _ = load_checkpoint(sel.checkpoint)
    steps = math.ceil(cfg.transitions_per_task / cfg.collect_envs_per_task) * cfg.collect_envs_per_task * suite.n
    with progress_bar(steps, f"collect with theta* (step {sel.step:,})") as bar:
        c = collect_rollouts(model, suite, learner_cfg, cfg.transitions_per_task, cfg.collect_envs_per_task, cfg.heldout_frac,
                             cfg.seed + 1, on_step=bar.advance)
    health = c.per_task_health(suite.n, cfg.min_adv_scale, cfg.min_label_frac)
    ep = {name: (float(np.mean(r)) if r else None) for name, r in zip(suite.names, c.episode_returns)}
    finite = [v for v in ep.values() if v is not None]
    art.save_torch(run_dir / "collect" / "rollouts.pt", c.to_dict())
    art.write_json(run_dir / "collect" / "meta_policy.json", MetaPolicy(
        checkpoint=sel.checkpoint.name, step=sel.step, healthy=sel.healthy and not all(h.collapsed for h in health),
        probe_met_rule=sel.healthy, per_task_return=ep, mean_return=float(np.mean(finite)) if finite else float("nan"),
        training_returns=sel.returns, signal={name: h.to_dict() for name, h in zip(suite.names, health)}, probes=sel.probes,
    ).to_dict())
    return ["collect/rollouts.pt", "collect/meta_policy.json"]


def train_dir(run_dir: Path) -> Path:
    """Where a run directory's checkpoints are: its own ``train/``, or, for a replicate that shares
    the first replicate's training (``<run>/replicates/r<i>/``), the run's; for a member of a
    replicate's window (``<replicate>/window/c<j>/``), the replicate's."""
    own = run_dir / "train"
    if own.is_dir() or run_dir.parent.name not in ("replicates", "window"):
        return own
    return train_dir(run_dir.parent.parent)


def _load_theta_star(run_dir: Path) -> ThetaStar:
    meta = MetaPolicy.read(run_dir)
    model = load_checkpoint(train_dir(run_dir) / "checkpoints" / meta.checkpoint)[0]
    return ThetaStar(run_dir, meta, model)


COLLECT = StageDef("collect", ("train",), _collect, _load_theta_star)


def check_min_return(meta: MetaPolicy, min_return: float) -> None:
    """Refuse a meta-policy too weak to trust (``--min-return``): the mean per-task return of
    theta*'s collection episodes, or of its last training episodes when collection finished none."""
    ret, source = meta.mean_return, "collection"
    if ret is None or not math.isfinite(ret):
        finite = [v for v in (meta.training_returns or {}).values() if v is not None]
        ret, source = (float(np.mean(finite)), "training") if finite else (None, None)
    if ret is None:
        raise UserError(f"--min-return {min_return}: no episode of theta* finished, so its return is unknown; "
                        "raise --transitions or drop --min-return")
    if ret < min_return:
        raise UserError(f"meta-policy too weak: mean per-task return {ret:.1f} ({source} episodes of theta*) < --min-return "
                        f"{min_return}; train longer (--steps) or lower --min-return")


# ============================================================================ 3. features


def _features_setup(shared: dict) -> dict:
    """Once per worker process: the actor and the projector (rebuilt from its spec, not shipped)."""
    torch.set_num_threads(shared["threads"])
    return {**shared, "projector": projector_from_spec(shared["projector"])}


def _features_unit(ctx: dict, payload: tuple) -> dict:
    """The features of one task (``build_features`` works task by task: the same numbers as in one call)."""
    torch.set_num_threads(ctx["threads"])
    x, a, adv, held = payload
    return build_features(ctx["actor"], [x], [a], [adv], [held], ctx["projector"], ctx["chunk_size"])[0]


def _features_by_task(actor, xs, as_, advs, helds, projector, chunk_size: int, threads: int, backend, names) -> list[dict]:
    """The features stage as one unit per task on ``backend`` (the projector travels as its spec)."""

    units = [Unit(f"task-{i}", (xs[i], as_[i], advs[i], helds[i]), (names[i],), f"features of {names[i]}", float(len(xs[i])))
             for i in range(len(xs))]
    shared = {"actor": actor, "projector": projector.spec(), "chunk_size": chunk_size, "threads": threads}
    out: dict[str, dict] = {}
    with progress_bar(sum(u.cost for u in units), f"features ({backend.name}, {len(units)} tasks)", unit="transitions") as bar:
        for unit, res in backend.map(_features_unit, units, shared=shared, setup=_features_setup, resources=Resources(cpus=threads)):
            out[unit.key] = res
            bar.advance(unit.cost, unit.label)
    return [out[u.key] for u in units]


def _features(run_dir: Path, cfg: FeaturesConfig, theta: ThetaStar, suite: TaskSuite, threads: int, device: str,
              backend=None) -> list[str]:
    """``threads`` and ``device`` (the learner's execution options) change how, not what."""
    model, c = theta.model, theta.rollouts()
    xs, as_, advs, helds = [], [], [], []
    for i in range(suite.n):
        m = c.task == i
        adv = c.adv[m]
        if cfg.adv_scaling == "task":
            adv = adv / adv.abs().mean().clamp_min(1e-12)
        xs.append(c.x[m]); as_.append(c.actions[m]); advs.append(adv); helds.append(c.heldout[m])
    with warnings.catch_warnings(record=True):  # a dense fallback is printed below and recorded in the manifest
        warnings.simplefilter("always")
        projector = build_projector(cfg.projector, model.actor, torch.cat(xs), torch.cat(as_), cfg.d, cfg.projector_seed)
    for name, why in getattr(projector, "fallback", {}).items():
        console.print(f"[yellow]note:[/] structured projector: dense fallback for {name} ({why})")
    dev = resolve_device(device)  # per-sample gradients on the GPU when there is one; stored on the CPU
    if backend is not None and backend.parallelism > 1 and dev.type == "cpu":  # one unit per task, same numbers
        per_task = _features_by_task(model.actor, xs, as_, advs, helds, projector, cfg.chunk_size, threads, backend, suite.names)
    else:
        with progress_bar(sum(len(x) for x in xs), "features", unit="transitions") as bar:
            model.actor.to(dev)
            try:
                per_task = build_features(model.actor, [x.to(dev) for x in xs], [a.to(dev) for a in as_], advs, helds, projector,
                                          cfg.chunk_size, progress=bar.advance)
            finally:
                model.actor.cpu()
    per_task = [{k: v.cpu() for k, v in d.items()} for d in per_task]
    FeatureStore.write(run_dir / "features", suite.names, per_task, projector, float(flat_params(model.actor).norm()),
                       extra={"adv_scaling": cfg.adv_scaling, "projector": cfg.projector})
    return [str(p.relative_to(run_dir)) for p in (run_dir / "features").iterdir() if not p.name.startswith(".")]


FEATURES = StageDef("features", ("collect",), _features, lambda run_dir: FeatureStore.load(run_dir / "features"))


# ============================================================================ 4. subsets


@dataclass
class Subsets:
    """``subsets.json``: the task names, the subset size and the ``[m, n]`` membership matrix."""

    names: list[str]
    size: int
    members: np.ndarray


def _subsets(run_dir: Path, cfg: SubsetsConfig, names: list[str]) -> list[str]:
    """``cfg.subset_size`` is resolved (not None) by the caller."""
    members = sample_subsets(len(names), cfg.subset_size, cfg.min_pair_coverage, cfg.subsets, cfg.subset_seed)
    art.write_json(run_dir / "subsets.json", {"tasks": names, "size": cfg.subset_size,
                                              "subsets": [[names[i] for i in np.flatnonzero(r)] for r in members]})
    return ["subsets.json"]


def load_subsets(run_dir: str | Path) -> Subsets:
    sub = art.read_json(Path(run_dir) / "subsets.json")
    members = np.array([[name in s for name in sub["tasks"]] for s in sub["subsets"]], dtype=bool)
    return Subsets(list(sub["tasks"]), int(sub["size"]), members)


SUBSETS = StageDef("subsets", ("suite",), _subsets, load_subsets)


# ============================================================================ 5. surrogate


@dataclass
class SurrogateFit:
    """``surrogate.pt``: the ``[m, d]`` surrogate solutions ``u`` (one per subset), the shared
    ridge ``lam`` and each solution's relative distance ``deltas`` = ||P u|| / ||theta*||."""

    u: torch.Tensor
    lam: float
    deltas: torch.Tensor
    converged: torch.Tensor
    iterations: int

    @classmethod
    def load(cls, run_dir: str | Path) -> SurrogateFit:
        d = torch.load(Path(run_dir) / "surrogate.pt", weights_only=False)
        return cls(d["u"], float(d["lam"]), d["deltas"], d["converged"], d["iterations"])


def _surrogate(run_dir: Path, cfg: SurrogateConfig, store: FeatureStore, subsets: Subsets) -> list[str]:
    members = subsets.members
    with console.status(f"fitting {members.shape[0]} surrogates (target delta {cfg.target_delta:.2%})"):
        lam, fit, deltas = choose_lambda(store.G, store.y, store.w, store.task, torch.as_tensor(members), ~store.heldout,
                                         store.projector.gram(), store.theta_norm, cfg.target_delta)
    art.save_torch(run_dir / "surrogate.pt", {"u": fit.u, "lam": lam, "deltas": deltas, "converged": fit.converged,
                                              "iterations": fit.iterations})
    return ["surrogate.pt"]


SURROGATE = StageDef("surrogate", ("features", "subsets"), _surrogate, SurrogateFit.load)


# ============================================================================ 6. evaluate


def _evaluate(run_dir: Path, cfg: EvaluateConfig, theta: ThetaStar, suite: TaskSuite, store: FeatureStore, subsets: Subsets,
              fit: SurrogateFit, seed: int) -> list[str]:
    """``seed``: the collection's seed (keyed by the collect stage), for the rollout evaluator."""
    members = subsets.members
    if cfg.evaluator == "rollout_return":

        f = rollout_return(theta.model, suite, store.projector, fit.u, members, cfg.rollout_episodes, seed)
    else:
        with console.status(f"evaluating {members.shape[0]} subsets ({cfg.evaluator})"):
            f = EVALUATORS[cfg.evaluator](store.G, store.y, store.w, store.task, store.heldout, torch.as_tensor(members), fit.u)
    art.write_table(run_dir / "f_table.csv", np.asarray(f, dtype=float), suite.names)
    return ["f_table.csv"]


EVALUATE = StageDef("evaluate", ("collect", "features", "subsets", "surrogate"), _evaluate, lambda run_dir: art.read_table(run_dir / "f_table.csv"))


# ============================================================================ 7. group


def group_with_null(f: np.ndarray | list[np.ndarray], members: np.ndarray, cfg: GroupConfig,
                    backend=None) -> tuple[Affinity, Grouping, NullTest]:
    """Affinity (of the first table), grouping and null test of a performance table, or of one
    training's tables (theta* and its window: :func:`table_affinity`), as the group stage makes
    them (also used on validate's ground truth)."""
    nt = null_test(f, members, k=cfg.k, penalty_scale=cfg.penalty_scale, n_perm=cfg.null_permutations,
                   seed=cfg.null_seed, solver=cfg.solver, backend=backend)
    g = nt.grouping
    if cfg.penalty is not None and cfg.k is None:  # an explicit price per group overrides the rule
        g = group_tasks(nt.U, penalty=cfg.penalty, solver=cfg.solver)
    return nt.affinity, g, nt


@dataclass
class Estimate:
    """Stages 1-6 of one replicate: its run directory, outputs, stage digests and what it computed."""

    run_dir: Path
    checkpoints: list[Path]
    theta: ThetaStar
    store: FeatureStore
    subsets: Subsets
    fit: SurrogateFit
    f: np.ndarray
    digests: dict[str, str]
    computed: list[str]
    window: list["Estimate"] = field(default_factory=list)  # the same training's next checkpoints (theta_window)

    def tables(self) -> list[np.ndarray]:
        """The performance tables of this training: theta*'s, then its window's (same subsets)."""
        return [self.f, *(w.f for w in self.window)]


@dataclass
class Groups:
    """``groups.json`` and ``affinity.csv``."""

    groups: dict
    U: np.ndarray


def _approx_error_at_surrogate(theta: ThetaStar, store: FeatureStore, members: np.ndarray, U: torch.Tensor,
                               max_subsets: int = 5) -> dict:
    """First-order error ||dlogp_true - g^T Delta|| / ||dlogp_true|| along the surrogate's own steps
    Delta = P u_S (held-out rows of each subset's tasks), for the first ``max_subsets`` subsets."""
    c, model = theta.rollouts(), theta.model
    theta_vec = flat_params(model.actor).double()
    errors, deltas = [], []
    for s in range(min(max_subsets, members.shape[0])):
        rows = c.heldout & torch.as_tensor(members[s])[c.task]
        step = store.projector.map_back(U[s].to(store.projector.dtype)).double()
        d_true, d_lin = logprob_change(model.actor, theta_vec, theta_vec + step, c.x[rows], c.actions[rows])
        errors.append(relative_error(d_true, d_lin))
        deltas.append(float(step.norm() / theta_vec.norm()))
    return {"median": float(np.median(errors)), "max": float(np.max(errors)), "subsets": len(errors),
            "delta_median": float(np.median(deltas))}


def _group(run_dir: Path, cfg: GroupConfig, suite: TaskSuite, estimates: list[Estimate], target_delta: float,
           min_healthy_frac: float, backend=None) -> list[str]:
    """``estimates``: stages 1-6 of every replicate (the first is the run's own).  ``target_delta``
    and ``min_healthy_frac`` are upstream options (keyed by their stages), recorded in groups.json."""

    first, names = estimates[0], suite.names
    members = first.subsets.members
    is_imported = getattr(first.theta.model, "algo", None) == "imported"
    imported = imported_source(first.run_dir) if is_imported else None
    if len(estimates) == 1:
        tables = first.tables()  # theta*'s table, and its window's
        with console.status(f"grouping: SDP + null test ({cfg.null_permutations} permutations)"):
            aff, g, nt = group_with_null(tables, members, cfg, backend)
        with console.status(f"self-check: bootstrap stability ({cfg.bootstrap} resamples)"):
            stab = bootstrap_stability(tables, members, g.labels, cfg.k, cfg.penalty_scale, cfg.solver, cfg.bootstrap, cfg.null_seed)
        U = nt.U  # theta*'s affinity, or its window's mean
        p, observed, null_stats = nt.p_value, nt.observed, nt.null_stats
        stability = {"per_task": dict(zip(names, stab["per_task"])), "mean_ari": stab["mean_ari"], "resamples": stab["n_boot"],
                     "source": "bootstrap over the subsets"}
        min_pairs = aff.min_pair_count
    else:
        Us = [table_affinity(e.tables(), e.subsets.members) for e in estimates]  # a training's window averaged first
        with console.status(f"grouping: consensus of {len(estimates)} replicates, SDP + {cfg.null_permutations} relabelled draws"):
            cons = consensus(Us, k=cfg.k, penalty=cfg.penalty, penalty_scale=cfg.penalty_scale,
                             n_perm=cfg.null_permutations, seed=cfg.null_seed, solver=cfg.solver, backend=backend)
        U, g, p, observed, null_stats = cons.U, cons.grouping, cons.p_value, cons.observed, cons.null_stats
        stability = {"per_task": dict(zip(names, map(float, cons.stability))), "source": "the consensus without each replicate in turn"}
        min_pairs = min(min_pair_count(e.subsets.members) for e in estimates)
        art.write_table(run_dir / "coassociation.csv", cons.co_association, names, index=names)
        art.write_json(run_dir / "replicates.json", _replicates_summary(estimates, cons, names))
    with console.status("self-check: first-order error at the surrogate's delta"):
        approx = _approx_error_at_surrogate(first.theta, first.store, members, first.fit.u)
    deltas = first.fit.deltas.numpy()
    signal = signal_summary(first.theta.meta, min_healthy_frac)
    meta = first.theta.meta
    groups = {
        "tasks": names,
        "groups": [[names[i] for i in grp_] for grp_ in g.groups],
        "k": int(g.k),
        "labels": [int(x) for x in g.labels],
        "penalty": g.penalty,
        "objective": float(g.objective),
        "rounded_objective": float(g.rounded_objective),
        "solver": g.solver,
        "delta": {"target": target_delta, "lam": float(first.fit.lam), "median": float(np.median(deltas)),
                  "min": float(deltas.min()), "max": float(deltas.max()), "mean": float(deltas.mean())},
        "null_p": float(p),
        "null_statistic": {"name": "within_minus_between", "observed": float(observed), "null_mean": float(null_stats.mean()),
                           "null_q95": float(np.quantile(null_stats, 0.95)), "permutations": int(null_stats.size)},
        "distinguishable_from_noise": bool(p < cfg.alpha),
        "verdict": verdict(cfg, len(estimates), p, is_imported),
        "signal_collapsed": signal["run_level_collapsed"],
        "signal": signal,
        "meta_policy": {"checkpoint": meta.checkpoint, "step": meta.step, "mean_return": meta.mean_return,
                        "window_steps": [int(w.theta.meta.step) for w in first.window],
                        **({"imported": imported} if imported is not None else {})},
        "subsets": {"m": int(members.shape[0]), "size": first.subsets.size, "min_pair_count": int(min_pairs)},
        "stability": stability,
        "approx_error_at_delta": approx,
    }
    if suite.true_labels() is not None:
        groups["nmi_vs_true_partition"] = suite.nmi_vs_truth(g.labels)
    art.write_table(run_dir / "affinity.csv", U, names, index=names)
    affinity_heatmap(U, names, g.labels, run_dir / "affinity.png")
    art.write_json(run_dir / "groups.json", groups)
    extra = ["coassociation.csv", "replicates.json"] if len(estimates) > 1 else []
    return ["groups.json", "affinity.csv", "affinity.png", *extra]


def imported_source(run_dir: Path) -> dict | None:
    """Where an imported theta* came from (``train/train_history.json["imported"]``, written at import)."""
    path = train_dir(run_dir) / "train_history.json"
    return art.read_json(path).get("imported") if path.is_file() else None


def verdict(cfg: GroupConfig, n_replicates: int, p: float, imported: bool = False) -> dict:
    """What the p-value means: calibrated only for a consensus of independently trained replicates
    (``imported``: theta* is a policy trained elsewhere, so more replicates mean more policies)."""
    if n_replicates == 1:
        test, calibrated = "single_theta_star_permutation", False
        more = ("give three or more independently trained policies (--policy A --policy B --policy C)" if imported else
                "use --replicates 3 or more")
        why = ("one replicate: the permutation test asks whether f depends on subset composition for this theta*, "
               f"not whether another training would give the same groups; {more} for a calibrated verdict")
    elif cfg.replicate_over != "seeds":
        test, calibrated = "replicate_consensus", False
        why = (f"the replicates share one training (--replicate-over {cfg.replicate_over}), so their agreement is not "
               "evidence that another training would agree; use --replicate-over seeds for a calibrated verdict")
    else:
        test, calibrated, why = "replicate_consensus", True, None
    return {"test": test, "calibrated": calibrated, "p": float(p), "alpha": cfg.alpha, "distinguishable_from_noise": bool(p < cfg.alpha),
            "replicates": n_replicates, "replicate_over": cfg.replicate_over, "not_calibrated_because": why}


def _replicates_summary(estimates: list[Estimate], cons: Consensus, names: list[str]) -> dict:
    """replicates.json: every replicate's own grouping and theta*, next to the consensus."""
    out = []
    for i, (e, g) in enumerate(zip(estimates, cons.replicate_groupings)):
        out.append({"replicate": i, "dir": "." if i == 0 else f"replicates/r{i}", "groups": [[names[j] for j in grp] for grp in g.groups],
                    "k": int(g.k), "labels": [int(x) for x in g.labels], "checkpoint": e.theta.meta.checkpoint,
                    "step": e.theta.meta.step, "mean_return": e.theta.meta.mean_return, "min_pair_count": min_pair_count(e.subsets.members),
                    "window_steps": [int(w.theta.meta.step) for w in e.window]})
    return {"tasks": names, "replicates": out, "consensus_labels": [int(x) for x in cons.grouping.labels],
            "null_k": [int(k) for k in cons.null_k]}


def _load_groups(run_dir: Path) -> Groups:
    return Groups(art.read_json(run_dir / "groups.json"), art.read_table(run_dir / "affinity.csv", index=True))


# version 3: "verdict", and the consensus of replicates ("replicates" upstream: every replicate's digests)
GROUP = StageDef("group", ("collect", "features", "subsets", "surrogate", "evaluate", "replicates"), _group, _load_groups, version=3)
