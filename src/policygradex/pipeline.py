"""The paper's algorithm, top to bottom, as calls of the stages (:mod:`policygradex.stages`).

Each stage writes its artifacts under the run directory with a manifest holding its key (the
upstream stages' digests and the keyed fields of its config, :mod:`policygradex.stage`); a
stage whose manifest matches is skipped, so a killed run resumes and a changed option
recomputes only its stage and those downstream.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import artifacts as art
from . import outdir
from .config import CollectConfig, EvaluateConfig, FeaturesConfig, RunConfig, StageConfig, SubsetsConfig, SurrogateConfig
from .backend import Resources, Unit
from .errors import UserError
from .estimate.subsets import default_subset_size
from .report import write_report
from .stage import Runner
from . import replicates
from .stages import COLLECT, EVALUATE, FEATURES, GROUP, SUBSETS, SURROGATE, TRAIN, Estimate, ThetaStar, check_min_return
from .tasks import TaskSuite
from .ui import progress_bar

__all__ = ["RunResult", "estimate", "estimate_all", "run", "stage_configs"]


@dataclass
class RunResult:
    out_dir: Path
    groups: dict
    affinity: np.ndarray
    task_names: list[str]
    computed: list[str]  # the stages computed by this call, "r<i>/<stage>" for replicate i (the others were current)


def run(suite: TaskSuite, cfg: RunConfig, out_dir: str | Path, tensorboard: str | Path | None = None,
        backend=None) -> RunResult:
    """The whole PolicyGradEx pipeline on ``suite``; artifacts under ``out_dir``.

    ``backend`` (:mod:`policygradex.backend`; default this process) runs the independent units
    (the replicates, the features of each task, the null test's draws); the results do not depend on it."""
    size = check_sizes(suite, cfg)
    run_dir = Path(out_dir)
    torch.set_num_threads(cfg.learner().threads)
    outdir.lock_run_dir(run_dir)  # one process per run directory; removes temporary files of killed runs
    art.write_json(run_dir / "config.json", {"suite": suite.to_dict(), "config": cfg.model_dump(mode="json"), "versions": art.versions(),
                                             "seeds": seeds(suite, cfg), "command": list(sys.argv)})
    estimates = estimate_all(suite, cfg, run_dir, size, tensorboard, backend)  # stages 1-6, once per replicate
    first = estimates[0]
    stage = Runner(run_dir, suite_digest(suite), digests={**first.digests, "replicates": replicates.digest(estimates)})
    groups = stage(GROUP, cfg.group, suite=suite, estimates=estimates, target_delta=cfg.estimate.target_delta,  # 7. grouping
                   min_healthy_frac=cfg.estimate.min_healthy_frac, backend=backend)
    write_report(run_dir, suite, cfg, first.theta.meta, groups.groups, first.fit)
    computed = [f"r{i}/{name}" if i else name for i, e in enumerate(estimates) for name in e.computed]
    return RunResult(run_dir, groups.groups, groups.U, suite.names, computed + stage.computed)


def estimate(suite: TaskSuite, cfg: RunConfig, run_dir: Path, size: int, tensorboard: str | Path | None = None,
             backend=None, shared: Estimate | None = None, own_theta: bool | None = None, window: bool = True) -> Estimate:
    """Stages 1-6 of one replicate in ``run_dir``: the performance table f(S, i) of every subset,
    then (``window``) the same at the next checkpoints of its training (``theta_window``,
    :attr:`Estimate.window`).

    ``shared``: the first replicate, whose training (``replicate_over = checkpoints``) or whose
    theta* and rollouts (``projection``) this replicate reuses instead of computing its own;
    ``own_theta`` overrides which (a window member shares the training, with its own theta*)."""
    learner, c = cfg.learner(), stage_configs(cfg, size)
    stage = Runner(run_dir, suite_digest(suite))
    checkpoints, theta = theta_star(stage, suite, cfg, tensorboard, shared, own_theta)     # 1-2. theta* and its rollouts
    store = stage(FEATURES, c["features"], theta=theta, suite=suite,                       # 3. projected gradients
                  threads=learner.threads, device=learner.device, backend=backend)
    subsets = stage(SUBSETS, c["subsets"], names=suite.names)                              # 4. task subsets
    fit = stage(SURROGATE, c["surrogate"], store=store, subsets=subsets)                   # 5. a surrogate per subset
    f = stage(EVALUATE, c["evaluate"], theta=theta, suite=suite, store=store, subsets=subsets, fit=fit,  # 6. f(S, i)
              seed=cfg.estimate.seed)
    e = Estimate(run_dir, checkpoints, theta, store, subsets, fit, f, dict(stage.digests), list(stage.computed))
    if window:                                                                             # theta*'s neighbours
        e.window = [estimate(suite, c_j, d_j, size, backend=backend, shared=e, own_theta=True, window=False)
                    for _, c_j, d_j in window_members(cfg, e)]
        e.computed += [f"window/c{j}/{name}" for j, m in enumerate(e.window, 1) for name in m.computed]
    return e


def theta_star(stage: Runner, suite: TaskSuite, cfg: RunConfig, tensorboard=None, shared: Estimate | None = None,
               own_theta: bool | None = None) -> tuple[list[Path], ThetaStar]:
    """Stages 1-2 of one replicate (``stage``: its runner): the training's checkpoints and theta*
    with its rollouts, computed or taken from ``shared`` (see :func:`estimate`)."""
    if shared is None:
        checkpoints = stage(TRAIN, cfg.learner(), suite=suite, tensorboard=tensorboard)   # 1. meta-policy
    else:
        checkpoints = stage.reuse("train", shared.digests, shared.checkpoints)
    if own_theta is None:
        own_theta = shared is None or cfg.group.replicate_over == "checkpoints"
    if own_theta:
        theta = stage(COLLECT, cfg.estimate.stage(CollectConfig), checkpoints=checkpoints)  # 2. theta* and its rollouts
    else:
        theta = stage.reuse("collect", shared.digests, shared.theta)
    if cfg.estimate.min_return is not None:
        check_min_return(theta.meta, cfg.estimate.min_return)
    return checkpoints, theta


def window_members(cfg: RunConfig, e: Estimate) -> list[tuple[int, RunConfig, Path]]:
    """``(j, config, directory)`` of each member of replicate ``e``'s theta window (none unless
    ``theta_window > 1`` with independent trainings): theta* pinned to the next checkpoints."""
    w = cfg.group.theta_window
    if w <= 1 or cfg.group.replicate_over != "seeds":
        return []
    steps = replicates.window_steps(e.checkpoints, e.theta.meta.step, w)
    return [(j, replicates.window_config(cfg, step), replicates.window_dir(e.run_dir, j)) for j, step in enumerate(steps, 1)]


# ============================================================================ replicates


def estimate_all(suite: TaskSuite, cfg: RunConfig, run_dir: Path, size: int, tensorboard=None, backend=None) -> list[Estimate]:
    """Stages 1-6 of every replicate (``cfg.group.replicates`` of them, :mod:`policygradex.replicates`),
    replicate 0 (the run directory itself) first.

    On a backend that runs several units at once: with independent trainings (``seeds``) each
    replicate's training and theta* is a unit, and as soon as one is done its estimate and each
    member of its theta window are units of their own (a worker that finished a training starts
    another replicate's estimates while the last training runs); replicates that share replicate
    0's training wait for it and are one unit each.  Results do not depend on the backend."""
    r, over = cfg.group.replicates, cfg.group.replicate_over
    parallel = r > 1 and backend is not None and backend.parallelism > 1
    first = None
    if r == 1 or over != "seeds" or not parallel:
        first = estimate(suite, cfg, run_dir, size, tensorboard, backend)  # replicate 0, in this process
    pinned = replicates.pinned_steps(first, r) if over == "checkpoints" and r > 1 else [None] * r
    todo = [(i, replicates.replicate_config(cfg, i, pinned[i - 1]), replicates.replicate_dir(run_dir, i))
            for i in range(0 if first is None else 1, r)]
    shared = first if over != "seeds" else None
    if not parallel:
        return [first] + [estimate(suite, c, d, size, shared=shared) for _, c, d in todo]
    done = _on_backend(suite, size, todo, shared, tensorboard, backend)
    out = [] if first is None else [first]
    for i, c, d in todo:  # read back here: every stage is current, nothing recomputes
        e = estimate(suite, c, d, size, shared=shared)
        e.computed = done[i]
        out.append(e)
    return out


def _on_backend(suite: TaskSuite, size: int, todo: list[tuple], shared: Estimate | None, tensorboard, backend) -> dict[int, list[str]]:
    """The replicates in ``todo`` as units of ``backend`` (see :func:`estimate_all`): what each
    computed, by replicate, in the order of a serial run."""
    ctx = {"suite": suite.to_dict(), "size": size, "tensorboard": None if tensorboard is None else str(tensorboard),
           "shared": None if shared is None else (str(shared.run_dir), shared.digests)}
    split = shared is None  # independent trainings: training, estimate and window members are separate units
    units = [Unit(f"replicate-{i}", ("theta" if split else "replicate", i, c, str(d)), tuple(suite.names), f"replicate {i}", 1.0)
             for i, c, d in todo]
    computed: dict[tuple, list[str]] = {}

    def then(unit: Unit, result) -> list[Unit]:
        kind, i, c, d = unit.payload[:4]
        if kind != "theta":
            return []
        window = window_members(c, _trained(Path(d), result["digests"]))
        return [Unit(f"replicate-{i}-estimate", ("estimate", i, c, str(d)), unit.tasks, f"replicate {i}: estimate", 1.0)] + [
            Unit(f"replicate-{i}-window-{j}", ("window", i, c_j, str(d_j), str(d), result["digests"], j), unit.tasks,
                 f"replicate {i}: theta window checkpoint {j}", 1.0) for j, c_j, d_j in window]

    # the bar's total counts every window member (a training with fewer checkpoints has fewer)
    total = sum(2 + max(0, c.group.theta_window - 1) if split else 1 for _, c, _ in todo)
    with progress_bar(total, f"replicates ({backend.name}, {backend.parallelism} at a time)", unit="units") as bar:
        for unit, result in backend.map(_replicate_unit, units, shared=ctx, resources=Resources(cpus=1), then=then):
            kind, i = unit.payload[:2]
            j = unit.payload[6] if kind == "window" else 0
            computed[(i, ("theta", "replicate", "estimate", "window").index(kind), j)] = (
                [f"window/c{j}/{n}" for n in result["computed"]] if kind == "window" else result["computed"])
            bar.advance(1, unit.label)
    out = {i: [] for i, _, _ in todo}
    for (i, _, _), names in sorted(computed.items()):  # the order a serial run lists them in: training and theta*, estimate, window
        out[i] += names
    return out


def _trained(d: Path, digests: dict[str, str]) -> Estimate:
    """A replicate's training and theta*, read back from its directory (``digests``: its stages')."""
    return Estimate(d, TRAIN.load(d), COLLECT.load(d), None, None, None, None, digests, [])


def _replicate_unit(ctx: dict, payload: tuple) -> dict:
    """One unit of a replicate in a worker, progress bars silenced (several run at once):
    ``theta`` (its training and theta*), ``estimate`` (stages 3-6 at theta*), ``window`` (one
    member of its theta window) or ``replicate`` (all of it, sharing replicate 0's training)."""
    kind, i, cfg, run_dir = payload[:4]
    os.environ["POLICYGRADEX_QUIET"] = "1"
    suite, run_dir = TaskSuite.from_dict(ctx["suite"]), Path(run_dir)
    if kind == "theta":
        stage = Runner(run_dir, suite_digest(suite))
        theta_star(stage, suite, cfg, ctx["tensorboard"] if i == 0 else None)
        return {"computed": list(stage.computed), "digests": dict(stage.digests)}
    if kind == "estimate":
        return {"computed": estimate(suite, cfg, run_dir, ctx["size"], window=False).computed}
    if kind == "window":
        owner = _trained(Path(payload[4]), payload[5])
        return {"computed": estimate(suite, cfg, run_dir, ctx["size"], shared=owner, own_theta=True, window=False).computed}
    shared = _trained(Path(ctx["shared"][0]), ctx["shared"][1])  # replicate 0's training and theta*
    return {"computed": estimate(suite, cfg, run_dir, ctx["size"], shared=shared).computed}


def stage_configs(cfg: RunConfig, subset_size: int) -> dict[str, StageConfig]:
    """Each stage's config, by stage name, from a run's config (``subset_size`` resolved)."""
    est = cfg.estimate
    return {"train": cfg.learner(), "collect": est.stage(CollectConfig), "features": est.stage(FeaturesConfig),
            "subsets": est.stage(SubsetsConfig).model_copy(update={"subset_size": subset_size}),
            "surrogate": est.stage(SurrogateConfig), "evaluate": est.stage(EvaluateConfig), "group": cfg.group}


def check_sizes(suite: TaskSuite, cfg: RunConfig) -> int:
    """The subset size (``--subset-size`` or about n/2) after checking it and ``--k`` against n."""
    if suite.n < 2:
        raise UserError(f"suite {suite.name!r} has {suite.n} task; grouping needs at least 2")
    size = cfg.estimate.subset_size or default_subset_size(suite.n)
    if size > suite.n or (size == suite.n and suite.n > 2):  # the CLI names the source of an equal size itself
        raise UserError(f"--subset-size {size} {'exceeds' if size > suite.n else 'equals'} the number of tasks ({suite.n}); "
                        f"allowed: 2 to {suite.n - 1}")
    if cfg.group.k is not None and cfg.group.k > suite.n:
        raise UserError(f"--k {cfg.group.k} exceeds the number of tasks ({suite.n})")
    return size


def suite_digest(suite: TaskSuite) -> str:
    """The digest of the task suite's description: the upstream of the stages that read the tasks."""
    return art.config_hash(suite.to_dict())


def seeds(suite: TaskSuite, cfg: RunConfig) -> dict:
    """Every seed of a run in one place (config.json); all of them are also in the config."""
    est = cfg.estimate
    return {"suite": getattr(suite, "source", None), "train": cfg.learner().seed, "collect": est.seed, "projector": est.projector_seed,
            "subsets": est.subset_seed, "null_test": cfg.group.null_seed}
