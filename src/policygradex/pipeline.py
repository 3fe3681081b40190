"""The paper's algorithm, top to bottom, as calls of the stages (:mod:`policygradex.stages`).

Each stage writes its artifacts under the run directory with a manifest holding its key (the
upstream stages' digests and the keyed fields of its config, :mod:`policygradex.stage`); a
stage whose manifest matches is skipped, so a killed run resumes and a changed option
recomputes only its stage and those downstream.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import artifacts as art
from . import outdir
from .config import CollectConfig, EvaluateConfig, FeaturesConfig, RunConfig, StageConfig, SubsetsConfig, SurrogateConfig
from .errors import UserError
from .estimate.subsets import default_subset_size
from .report import write_report
from .stage import Runner
from .stages import COLLECT, EVALUATE, FEATURES, GROUP, SUBSETS, SURROGATE, TRAIN, check_min_return, train_meta_policy
from .tasks import TaskSuite

__all__ = ["RunResult", "run", "stage_configs", "train_meta_policy"]


@dataclass
class RunResult:
    out_dir: Path
    groups: dict
    affinity: np.ndarray
    task_names: list[str]
    computed: list[str]  # the stages computed by this call (the others were current)


def run(suite: TaskSuite, cfg: RunConfig, out_dir: str | Path, tensorboard: str | Path | None = None,
        backend=None) -> RunResult:
    """The whole PolicyGradEx pipeline on ``suite``; artifacts under ``out_dir``.

    ``backend`` (:mod:`policygradex.backend`; default this process) runs the stages' independent
    units (the features of each task, the null test's permutations); the results do not depend on it."""
    est, learner = cfg.estimate, cfg.learner()
    size = check_sizes(suite, cfg)
    run_dir = Path(out_dir)
    torch.set_num_threads(learner.threads)
    outdir.lock_run_dir(run_dir)  # one process per run directory; removes temporary files of killed runs
    art.write_json(run_dir / "config.json", {"suite": suite.to_dict(), "config": cfg.model_dump(mode="json"), "versions": art.versions(),
                                             "seeds": seeds(suite, cfg), "command": list(sys.argv)})
    c = stage_configs(cfg, size)
    stage = Runner(run_dir, suite_digest(suite))

    checkpoints = stage(TRAIN, c["train"], suite=suite, tensorboard=tensorboard)           # 1. meta-policy
    theta = stage(COLLECT, c["collect"], checkpoints=checkpoints)                          # 2. theta* and its rollouts
    if est.min_return is not None:
        check_min_return(theta.meta, est.min_return)
    store = stage(FEATURES, c["features"], theta=theta, suite=suite,                       # 3. projected gradients
                  threads=learner.threads, device=learner.device, backend=backend)
    subsets = stage(SUBSETS, c["subsets"], names=suite.names)                              # 4. task subsets
    fit = stage(SURROGATE, c["surrogate"], store=store, subsets=subsets)                   # 5. a surrogate per subset
    f = stage(EVALUATE, c["evaluate"], theta=theta, suite=suite, store=store, subsets=subsets, fit=fit,  # 6. f(S, i)
              seed=est.seed)
    groups = stage(GROUP, c["group"], suite=suite, f=f, subsets=subsets, fit=fit, theta=theta, store=store,  # 7. grouping
                   target_delta=est.target_delta, min_healthy_frac=est.min_healthy_frac, backend=backend)
    write_report(run_dir, suite, cfg, theta.meta, groups.groups, fit)
    return RunResult(run_dir, groups.groups, groups.U, suite.names, stage.computed)


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
