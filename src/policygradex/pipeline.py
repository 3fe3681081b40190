"""The paper's algorithm, top to bottom, as calls of the stages (no maths here).

    train      multi-task PPO on all tasks -> checkpoints                   (rl.ppo)
    collect    choose theta* (healthy advantage signal), roll it out, GAE  (estimate.collect)
    features   g~ = P^T grad log pi(a|s) per transition -> FeatureStore    (estimate.features)
    subsets    m subsets covering every pair >= c times                    (estimate.subsets)
    surrogate  weighted logistic regression per subset, lam for target delta (estimate.surrogate)
    evaluate   f(S, i) for every task i in every subset S                 (estimate.evaluators)
    group      affinity U, SDP grouping, null test                         (estimate.affinity, group)
    report     report.md, affinity.png                                    (report)

Each stage writes its artifacts under the run directory with a manifest holding the hash of
everything it depends on; a stage whose manifest matches is skipped, so a killed run resumes
and a changed option recomputes only what depends on it.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import artifacts as art
from . import outdir
from .config import PPOConfig, RunConfig
from .errors import UserError
from .estimate.collect import load_rollouts
from .estimate.first_order import logprob_change, relative_error
from .estimate.persample import flat_params
from .rl.checkpoint import list_checkpoints, load_checkpoint
from .rl.ppo import TrainResult, train
from .tasks import TaskSuite
from .ui import console, progress_bar


def train_meta_policy(suite: TaskSuite, cfg: PPOConfig, out_dir: str | Path, tensorboard: str | Path | None = None) -> TrainResult:
    """Stage 1: multi-task PPO on all tasks (multi-task SAC for a ``SACConfig``: rl.sac), with a
    progress bar (steps/s, mean return, ETA)."""
    from .config import SACConfig

    if isinstance(cfg, SACConfig):
        from .rl import sac

        sac.check_action_space(suite.action_space, suite.name)
        E = suite.n * cfg.envs_per_task
        with progress_bar(max(1, math.ceil(cfg.total_steps / E)) * E, f"train {suite.name} (SAC)") as bar:
            def on_step(steps: int, info: dict) -> None:
                finite = [r for r in info["returns"].values() if r is not None]
                bar.advance(steps, f"return mean {sum(finite) / len(finite):.1f} min {min(finite):.1f}" if finite else "")

            return sac.train(suite, cfg, out_dir, tensorboard, on_step)
    total = cfg.num_updates(suite.n) * cfg.batch_size(suite.n)
    with progress_bar(total, f"train {suite.name}") as bar:
        def on_update(steps: int, info: dict) -> None:
            finite = [r for r in info["returns"].values() if r is not None]
            text = f"return mean {sum(finite) / len(finite):.1f} min {min(finite):.1f}" if finite else ""
            bar.advance(steps, text)

        return train(suite, cfg, out_dir, tensorboard, on_update)


# Part of the group stage's key: a run directory whose groups.json predates a change of its fields
# (2: "signal", with "signal_collapsed" meaning the run-level rule on the collection's table) is regrouped.
GROUPS_FORMAT = 2


@dataclass
class RunResult:
    out_dir: Path
    groups: dict
    affinity: np.ndarray
    task_names: list[str]


def _key(*parts) -> str:
    return art.config_hash([p.model_dump(mode="json") if hasattr(p, "model_dump") else p for p in parts])


def run(suite: TaskSuite, cfg: RunConfig, out_dir: str | Path, tensorboard: str | Path | None = None,
        backend=None) -> RunResult:
    """The whole PolicyGradEx pipeline on ``suite``; artifacts under ``out_dir``.

    ``backend`` (:mod:`policygradex.backend`; default this process) runs the stages' independent
    units (the features of each task); the results do not depend on it."""
    from .estimate.affinity import build_affinity
    from .estimate.evaluators import EVALUATORS
    from .estimate.subsets import default_subset_size, sample_subsets
    from .group.null import null_test
    from .report import affinity_heatmap, signal_summary, write_report

    if suite.n < 2:
        raise UserError(f"suite {suite.name!r} has {suite.n} task; grouping needs at least 2")
    est, grp = cfg.estimate, cfg.group
    size = est.subset_size or default_subset_size(suite.n)
    if size > suite.n or (size == suite.n and suite.n > 2):  # the CLI names the source of an equal size itself
        raise UserError(f"--subset-size {size} {'exceeds' if size > suite.n else 'equals'} the number of tasks ({suite.n}); "
                        f"allowed: 2 to {suite.n - 1}")
    if grp.k is not None and grp.k > suite.n:
        raise UserError(f"--k {grp.k} exceeds the number of tasks ({suite.n})")
    run_dir = Path(out_dir)
    torch.set_num_threads(cfg.learner().threads)
    outdir.lock_run_dir(run_dir)  # one process per run directory; removes temporary files of killed runs
    art.write_json(run_dir / "config.json", {"suite": suite.to_dict(), "config": cfg.model_dump(mode="json"), "versions": art.versions(),
                                             "seeds": _seeds(suite, cfg), "command": list(sys.argv)})

    # 1. meta-policy
    k_train = _key(suite.to_dict(), cfg.ppo) if cfg.algo == "ppo" else _key(suite.to_dict(), "sac", cfg.sac)
    st = art.Stage(run_dir, "train", k_train)
    if not st.current:
        res = train_meta_policy(suite, cfg.learner(), run_dir / "train", tensorboard)
        st.done([str(p.relative_to(run_dir)) for p in res.checkpoints] + ["train/train_history.json"])
    checkpoints = list_checkpoints(run_dir / "train" / "checkpoints")

    # 2. theta* and its rollouts
    collect_fields = est.model_dump(include={"checkpoint", "probe_transitions", "min_adv_scale", "min_label_frac",
                                             "min_healthy_frac", "signal_keep", "transitions_per_task", "collect_envs_per_task",
                                             "heldout_frac", "seed"})
    k_collect = _key(st.digest, collect_fields)
    st = art.Stage(run_dir, "collect", k_collect)
    if not st.current:
        _collect_stage(run_dir, checkpoints, cfg)
        st.done(["collect/rollouts.pt", "collect/meta_policy.json"])
    meta = art.read_json(run_dir / "collect" / "meta_policy.json")
    if est.min_return is not None:
        _check_min_return(meta, est.min_return)
    model, _, _, _ = load_checkpoint(run_dir / "train" / "checkpoints" / meta["checkpoint"])

    # 3. projected gradient features
    k_feat = _key(st.digest, est.model_dump(include={"adv_scaling", "projector", "d", "projector_seed"}))
    st = art.Stage(run_dir, "features", k_feat)
    if not st.current:
        _features_stage(run_dir, model, suite, cfg, backend)
        st.done(sorted(str(p.relative_to(run_dir)) for p in (run_dir / "features").iterdir() if not p.name.startswith(".")))
    from .estimate.features import FeatureStore

    store = FeatureStore.load(run_dir / "features")

    # 4. subsets
    d_feat = st.digest
    k_sub = _key(suite.n, size, est.model_dump(include={"min_pair_coverage", "subsets", "subset_seed"}))
    st = art.Stage(run_dir, "subsets", k_sub)
    if not st.current:
        members = sample_subsets(suite.n, size, est.min_pair_coverage, est.subsets, est.subset_seed)
        art.write_json(run_dir / "subsets.json", {"tasks": suite.names, "size": size,
                                                  "subsets": [[suite.names[i] for i in np.flatnonzero(r)] for r in members]})
        st.done(["subsets.json"])
    sub = art.read_json(run_dir / "subsets.json")
    members = np.array([[name in s for name in suite.names] for s in sub["subsets"]], dtype=bool)

    # 5. surrogate per subset
    k_sur = _key(d_feat, st.digest, est.target_delta)
    st = art.Stage(run_dir, "surrogate", k_sur)
    if not st.current:
        _surrogate_stage(run_dir, store, members, est.target_delta)
        st.done(["surrogate.pt"])
    sur = torch.load(run_dir / "surrogate.pt", weights_only=False)

    # 6. f(S, i)
    k_eval = _key(st.digest, est.evaluator, est.rollout_episodes if est.evaluator == "rollout_return" else None)
    st = art.Stage(run_dir, "evaluate", k_eval)
    if not st.current:
        if est.evaluator == "rollout_return":
            from .estimate.rollout_eval import rollout_return

            f = rollout_return(model, suite, store.projector, sur["u"], members, est.rollout_episodes, est.seed)
        else:
            with console.status(f"evaluating {members.shape[0]} subsets ({est.evaluator})"):
                f = EVALUATORS[est.evaluator](store.G, store.y, store.w, store.task, store.heldout, torch.as_tensor(members), sur["u"])
        art.write_table(run_dir / "f_table.csv", np.asarray(f, dtype=float), suite.names)
        st.done(["f_table.csv"])
    f = art.read_table(run_dir / "f_table.csv")

    # 7. affinity, grouping, null test
    k_grp = _key(st.digest, grp, GROUPS_FORMAT)
    st = art.Stage(run_dir, "group", k_grp)
    if not st.current:
        aff = build_affinity(f, members)
        with console.status(f"grouping: SDP + null test ({grp.null_permutations} permutations)"):
            nt = null_test(f, members, k=grp.k, penalty_scale=grp.penalty_scale, n_perm=grp.null_permutations,
                           seed=grp.null_seed, solver=grp.solver, backend=backend)
        g = nt.grouping
        if grp.penalty is not None and grp.k is None:  # an explicit price per group overrides the rule
            from .group.sdp import group_tasks

            g = group_tasks(aff.U, penalty=grp.penalty, solver=grp.solver)
        from .group.stability import bootstrap_stability

        with console.status(f"self-check: bootstrap stability ({grp.bootstrap} resamples), first-order error at the surrogate's delta"):
            stab = bootstrap_stability(f, members, g.labels, grp.k, grp.penalty_scale, grp.solver, grp.bootstrap, grp.null_seed)
            approx = _approx_error_at_surrogate(run_dir, model, store, members, sur["u"])
        deltas = sur["deltas"].numpy()
        signal = signal_summary(meta, est.min_healthy_frac)
        groups = {
            "tasks": suite.names,
            "groups": [[suite.names[i] for i in grp_] for grp_ in g.groups],
            "k": int(g.k),
            "labels": [int(x) for x in g.labels],
            "penalty": g.penalty,
            "objective": float(g.objective),
            "rounded_objective": float(g.rounded_objective),
            "solver": g.solver,
            "delta": {"target": est.target_delta, "lam": float(sur["lam"]), "median": float(np.median(deltas)),
                      "min": float(deltas.min()), "max": float(deltas.max()), "mean": float(deltas.mean())},
            "null_p": float(nt.p_value),
            "null_statistic": {"name": nt.statistic, "observed": float(nt.observed),
                               "null_mean": float(nt.null_stats.mean()), "null_q95": float(np.quantile(nt.null_stats, 0.95)),
                               "permutations": int(nt.n_perm)},
            "distinguishable_from_noise": bool(nt.p_value < grp.alpha),
            "signal_collapsed": signal["run_level_collapsed"],
            "signal": signal,
            "meta_policy": {"checkpoint": meta["checkpoint"], "step": meta["step"], "mean_return": meta["mean_return"]},
            "subsets": {"m": int(members.shape[0]), "size": size, "min_pair_count": int(aff.min_pair_count)},
            "stability": {"per_task": dict(zip(suite.names, stab["per_task"])), "mean_ari": stab["mean_ari"],
                          "resamples": stab["n_boot"]},
            "approx_error_at_delta": approx,
        }
        if suite.true_labels() is not None:
            from sklearn.metrics import normalized_mutual_info_score

            groups["nmi_vs_true_partition"] = float(normalized_mutual_info_score(suite.true_labels(), g.labels))
        art.write_table(run_dir / "affinity.csv", aff.U, suite.names, index=suite.names)
        affinity_heatmap(aff.U, suite.names, g.labels, run_dir / "affinity.png")
        art.write_json(run_dir / "groups.json", groups)
        st.done(["groups.json", "affinity.csv", "affinity.png"])
    groups = art.read_json(run_dir / "groups.json")
    U = art.read_table(run_dir / "affinity.csv", index=True)
    write_report(run_dir, suite, cfg, meta, groups, sur)
    return RunResult(run_dir, groups, U, suite.names)


def _seeds(suite: TaskSuite, cfg: RunConfig) -> dict:
    """Every seed of a run in one place (config.json); all of them are also in the config."""
    est = cfg.estimate
    return {"suite": getattr(suite, "source", None), "train": cfg.learner().seed, "collect": est.seed, "projector": est.projector_seed,
            "subsets": est.subset_seed, "null_test": cfg.group.null_seed}


def _check_min_return(meta: dict, min_return: float) -> None:
    """Refuse a meta-policy too weak to trust (``--min-return``): the mean per-task return of
    theta*'s collection episodes, or of its last training episodes when collection finished none."""
    ret, source = meta["mean_return"], "collection"
    if ret is None or not math.isfinite(ret):
        finite = [v for v in (meta.get("training_returns") or {}).values() if v is not None]
        ret, source = (float(np.mean(finite)), "training") if finite else (None, None)
    if ret is None:
        raise UserError(f"--min-return {min_return}: no episode of theta* finished, so its return is unknown; "
                        "raise --transitions or drop --min-return")
    if ret < min_return:
        raise UserError(f"meta-policy too weak: mean per-task return {ret:.1f} ({source} episodes of theta*) < --min-return "
                        f"{min_return}; train longer (--steps) or lower --min-return")


def _approx_error_at_surrogate(run_dir: Path, model, store, members: np.ndarray, U: torch.Tensor, max_subsets: int = 5) -> dict:
    """First-order error ||dlogp_true - g^T Delta|| / ||dlogp_true|| along the surrogate's own steps
    Delta = P u_S (held-out rows of each subset's tasks), for the first ``max_subsets`` subsets."""
    c = load_rollouts(run_dir)
    theta = flat_params(model.actor).double()
    errors, deltas = [], []
    for s in range(min(max_subsets, members.shape[0])):
        rows = c["heldout"] & torch.as_tensor(members[s])[c["task"]]
        step = store.projector.map_back(U[s].to(store.projector.dtype)).double()
        d_true, d_lin = logprob_change(model.actor, theta, theta + step, c["x"][rows], c["actions"][rows])
        errors.append(relative_error(d_true, d_lin))
        deltas.append(float(step.norm() / theta.norm()))
    return {"median": float(np.median(errors)), "max": float(np.max(errors)), "subsets": len(errors),
            "delta_median": float(np.median(deltas))}


def _collect_stage(run_dir: Path, checkpoints: list[Path], cfg: RunConfig) -> None:
    from .estimate.collect import collect, select_checkpoint

    est = cfg.estimate
    if not checkpoints:
        raise UserError(f"no checkpoints under {run_dir / 'train'}; rerun to train")
    if est.checkpoint is not None and not any(int(p.stem.split("_")[1]) == est.checkpoint for p in checkpoints):
        steps = ", ".join(str(int(p.stem.split("_")[1])) for p in checkpoints)
        raise UserError(f"--checkpoint {est.checkpoint}: no such checkpoint; available steps: {steps}")
    with console.status("choosing theta*: probing checkpoints' advantage signal"):
        sel = select_checkpoint(checkpoints, est.probe_transitions, est.min_adv_scale, est.min_label_frac,
                                est.min_healthy_frac, est.seed, est.checkpoint, est.signal_keep)
    model, suite, ppo, _ = load_checkpoint(sel.checkpoint)
    steps = math.ceil(est.transitions_per_task / est.collect_envs_per_task) * est.collect_envs_per_task * suite.n
    with progress_bar(steps, f"collect with theta* (step {sel.step:,})") as bar:
        c = collect(model, suite, ppo, est.transitions_per_task, est.collect_envs_per_task, est.heldout_frac, est.seed + 1,
                    on_step=bar.advance)
    health = c.per_task_health(suite.n, est.min_adv_scale, est.min_label_frac)
    ep = {name: (float(np.mean(r)) if r else None) for name, r in zip(suite.names, c.episode_returns)}
    finite = [v for v in ep.values() if v is not None]
    art.save_torch(run_dir / "collect" / "rollouts.pt", c.to_dict())
    art.write_json(run_dir / "collect" / "meta_policy.json", {
        "checkpoint": sel.checkpoint.name, "step": sel.step, "healthy": sel.healthy and not all(h.collapsed for h in health),
        "probe_met_rule": sel.healthy,
        "per_task_return": ep, "mean_return": float(np.mean(finite)) if finite else float("nan"),
        "training_returns": sel.returns,
        "signal": {name: h.to_dict() for name, h in zip(suite.names, health)},
        "probes": sel.probes,
    })


def _features_setup(shared: dict) -> dict:
    """Once per worker process: the actor and the projector (rebuilt from its spec, not shipped)."""
    from .estimate.projectors import projector_from_spec

    torch.set_num_threads(shared["threads"])
    return {**shared, "projector": projector_from_spec(shared["projector"])}


def _features_unit(ctx: dict, payload: tuple) -> dict:
    """The features of one task (``build_features`` works task by task: the same numbers as in one call)."""
    from .estimate.features import build_features

    torch.set_num_threads(ctx["threads"])
    x, a, adv, held = payload
    return build_features(ctx["actor"], [x], [a], [adv], [held], ctx["projector"], ctx["chunk_size"])[0]


def _features_by_task(actor, xs, as_, advs, helds, projector, chunk_size: int, threads: int, backend, names) -> list[dict]:
    """The features stage as one unit per task on ``backend`` (the projector travels as its spec)."""
    from .backend import Resources, Unit

    units = [Unit(f"task-{i}", (xs[i], as_[i], advs[i], helds[i]), (names[i],), f"features of {names[i]}", float(len(xs[i])))
             for i in range(len(xs))]
    shared = {"actor": actor, "projector": projector.spec(), "chunk_size": chunk_size, "threads": threads}
    out: dict[str, dict] = {}
    with progress_bar(sum(u.cost for u in units), f"features ({backend.name}, {len(units)} tasks)", unit="transitions") as bar:
        for unit, res in backend.map(_features_unit, units, shared=shared, setup=_features_setup, resources=Resources(cpus=threads)):
            out[unit.key] = res
            bar.advance(unit.cost, unit.label)
    return [out[u.key] for u in units]


def _features_stage(run_dir: Path, model, suite: TaskSuite, cfg: RunConfig, backend=None) -> None:
    import warnings

    from .estimate.features import FeatureStore, build_features
    from .estimate.projectors import build_projector

    est = cfg.estimate
    c = load_rollouts(run_dir)
    theta = flat_params(model.actor)
    xs, as_, advs, helds = [], [], [], []
    for i in range(suite.n):
        m = c["task"] == i
        adv = c["adv"][m]
        if est.adv_scaling == "task":
            adv = adv / adv.abs().mean().clamp_min(1e-12)
        xs.append(c["x"][m]); as_.append(c["actions"][m]); advs.append(adv); helds.append(c["heldout"][m])
    with warnings.catch_warnings(record=True):  # a dense fallback is printed below and recorded in the manifest
        warnings.simplefilter("always")
        projector = build_projector(est.projector, model.actor, torch.cat(xs), torch.cat(as_), est.d, est.projector_seed)
    for name, why in getattr(projector, "fallback", {}).items():
        console.print(f"[yellow]note:[/] structured projector: dense fallback for {name} ({why})")
    total = sum(len(x) for x in xs)
    from .rl.device import resolve_device

    dev = resolve_device(cfg.learner().device)  # per-sample gradients on the GPU when there is one; stored on the CPU
    if backend is not None and backend.parallelism > 1 and dev.type == "cpu":  # one unit per task, same numbers
        per_task = _features_by_task(model.actor, xs, as_, advs, helds, projector, est.chunk_size, cfg.learner().threads, backend,
                                     suite.names)
    else:
        with progress_bar(total, "features", unit="transitions") as bar:
            model.actor.to(dev)
            try:
                per_task = build_features(model.actor, [x.to(dev) for x in xs], [a.to(dev) for a in as_], advs, helds, projector,
                                          est.chunk_size, progress=bar.advance)
            finally:
                model.actor.cpu()
    per_task = [{k: v.cpu() for k, v in d.items()} for d in per_task]
    FeatureStore.write(run_dir / "features", suite.names, per_task, projector, float(theta.norm()),
                       extra={"adv_scaling": est.adv_scaling, "projector": est.projector})


def _surrogate_stage(run_dir: Path, store, members: np.ndarray, target_delta: float) -> None:
    from .estimate.surrogate import choose_lambda

    with console.status(f"fitting {members.shape[0]} surrogates (target delta {target_delta:.2%})"):
        lam, fit, deltas = choose_lambda(store.G, store.y, store.w, store.task, torch.as_tensor(members), ~store.heldout,
                                         store.projector.gram(), store.theta_norm, target_delta)
    art.save_torch(run_dir / "surrogate.pt", {"u": fit.u, "lam": lam, "deltas": deltas, "converged": fit.converged,
                                              "iterations": fit.iterations})
