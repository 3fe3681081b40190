"""The named methods of ``policygradex compare``, in one registry.

A method turns (context, seed) into per-task returns under the common budget.  Every method
registered here is a *multi-task* method: it partitions the tasks into groups (one group = all
tasks for the single-policy methods) and trains one PPO policy per group with
:func:`policygradex.compare.train.train_group`; they differ only in the partition, the network
(``arch``) and the update rule (``pcgrad``).

=============  ==============================================================================
name           what it trains
=============  ==============================================================================
multitask      one policy on all tasks (network: ``CompareConfig.arch``, MLP by default)
softmod        one Soft Modularization policy on all tasks (``rl.networks.SoftModNet``)
random         one policy per group of a random partition with PolicyGradEx's group sizes
               (a fresh draw per seed)
gradsim        one policy per group of the SDP grouping (same k) of the cosine similarity of
               per-task mean policy gradients at theta*
pcgrad         one policy on all tasks, PCGrad gradient surgery on the per-task PPO losses
tag            one policy per group of the SDP grouping (same k) of TAG-style lookahead
               affinities measured along the run's meta-training
policygradex   one policy per group of the PolicyGradEx run's groups
recommended    what a user following the run would train: its groups when its verdict is
               "distinguishable from noise", else one policy for all tasks
pertask        one policy per task
=============  ==============================================================================

Meta-RL methods (``compare/meta.py``; scored on held-out tasks after adaptation):
``meta-maml`` (first-order MAML on all tasks), ``meta-policygradex`` (first-order MAML per
PolicyGradEx group, a held-out task adapts the group with the best probe return) and
``meta-multitask`` (a task-blind multi-task PPO policy as the initialization).

Another kind of method (e.g. meta-RL: adapt a group policy to held-out tasks) registers a
:class:`Method` with its own ``run_unit``; the runner caches, aggregates and plots whatever
per-task returns and step counts a unit reports (see ``runner.UNIT_KEYS``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .. import artifacts as art
from ..config import CompareConfig, RunConfig
from ..errors import UserError
from ..tasks import TaskSuite
from .groupings import gradient_similarity, groups_from_affinity, random_groups, tag_affinity
from .meta import key_parts, run_meta_unit

__all__ = ["CompareContext", "Method", "METHODS", "register", "method_names", "get_method"]


@dataclass
class CompareContext:
    """What a method may use: the suite, the configs, the PolicyGradEx run (when needed)."""

    suite: TaskSuite
    run_cfg: RunConfig
    cfg: CompareConfig
    out_dir: Path
    run_dir: Path | None = None
    run_groups: dict | None = None
    cache: dict = field(default_factory=dict)

    @property
    def cache_dir(self) -> Path:
        return self.out_dir / "compare"

    @property
    def k(self) -> int:
        return int(self._groups()["k"])

    @property
    def sizes(self) -> list[int]:
        return [len(g) for g in self._groups()["groups"]]

    def _groups(self) -> dict:
        if self.run_groups is None:
            raise RuntimeError("this method needs the PolicyGradEx run; the runner makes it when a method has needs_run")
        return self.run_groups

    def run_digest(self, stage: str) -> str:
        return art.stage_digest(self.run_dir, stage)

    def cached_affinity(self, name: str, key_parts: list, compute: Callable[[], dict]) -> dict:
        """``compute()`` (a dict with ``U`` and ``info``) cached under ``compare/<name>/``."""
        if name in self.cache:
            return self.cache[name]
        d = self.cache_dir
        st = art.Stage(d, f"{name}/affinity", art.config_hash([name, *key_parts]))
        if not st.current:
            res = compute()
            art.write_table(d / name / "affinity.csv", np.asarray(res["U"], dtype=float), self.suite.names, index=self.suite.names)
            art.write_json(d / name / "affinity_info.json", res["info"])
            st.done([f"{name}/affinity.csv", f"{name}/affinity_info.json"])
        man = art.read_manifest(d, f"{name}/affinity") or {}
        out = {"U": art.read_table(d / name / "affinity.csv", index=True), "info": art.read_json(d / name / "affinity_info.json"),
               "seconds": float(man.get("extra", {}).get("seconds", float("nan")))}
        self.cache[name] = out
        return out


Grouping = Callable[[CompareContext, int], tuple[list[list[int]], dict]]


@dataclass(frozen=True)
class Method:
    """A named method.  ``grouping(ctx, seed) -> (groups as task-index lists, info)``;
    ``arch`` forces the network (None: ``CompareConfig.arch``); ``pcgrad`` turns on gradient
    surgery; ``needs_run`` asks the runner for the PolicyGradEx run first; ``run_unit``
    replaces the default unit (train one policy per group, evaluate per task); ``learners``:
    the names of the learners (``rl.learners``) the method trains with, None for every learner
    (the default unit trains through the run's learner; gradient similarity and TAG read PPO
    quantities, PCGrad is a PPO update, meta-RL is FOMAML on PPO: those are PPO-only)."""

    name: str
    description: str
    grouping: Grouping | None = None
    needs_run: bool = False
    arch: str | None = None
    pcgrad: bool = False
    seed_dependent_grouping: bool = False
    kind: str = "multi_task"
    run_unit: Callable[..., dict] | None = None
    key_parts: Callable[[CompareContext], list] | None = None  # extra inputs of a unit's cache key
    learners: tuple[str, ...] | None = None

    def trains_with(self, learner: str) -> bool:
        """Whether the method runs with the learner named ``learner`` (``RunConfig.algo``)."""
        return self.learners is None or learner in self.learners


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    METHODS[method.name] = method
    return method


def method_names() -> list[str]:
    return list(METHODS)


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise UserError(f"--methods: unknown method {name!r}; allowed: {', '.join(METHODS)}")
    return METHODS[name]


# ----------------------------------------------------------------------------- groupings


def _all_tasks(ctx: CompareContext, seed: int) -> tuple[list[list[int]], dict]:
    return [list(range(ctx.suite.n))], {}


def _policygradex(ctx: CompareContext, seed: int) -> tuple[list[list[int]], dict]:
    g = ctx._groups()
    names = ctx.suite.names
    groups = [sorted(names.index(t) for t in grp) for grp in g["groups"]]
    return groups, {"k": g["k"], "null_p": g.get("null_p"), "distinguishable_from_noise": g.get("distinguishable_from_noise"),
                    "run_dir": str(ctx.run_dir)}


def _recommended(ctx: CompareContext, seed: int) -> tuple[list[list[int]], dict]:
    g = ctx._groups()
    if g.get("distinguishable_from_noise"):
        groups, info = _policygradex(ctx, seed)
        return groups, {**info, "followed": "the run's groups (distinguishable from noise)"}
    return [list(range(ctx.suite.n))], {"k": 1, "null_p": g.get("null_p"), "distinguishable_from_noise": False,
                                        "followed": "one policy for all tasks (the run's groups are not distinguishable from noise)",
                                        "run_k": g["k"], "run_dir": str(ctx.run_dir)}


def _per_task(ctx: CompareContext, seed: int) -> tuple[list[list[int]], dict]:
    return [[i] for i in range(ctx.suite.n)], {}


def _random(ctx: CompareContext, seed: int) -> tuple[list[list[int]], dict]:
    return random_groups(ctx.sizes, ctx.suite.n, seed=seed), {"draw_seed": seed, "sizes": ctx.sizes}


def _gradsim(ctx: CompareContext, seed: int) -> tuple[list[list[int]], dict]:
    aff = ctx.cached_affinity("gradsim", [ctx.run_digest("features"), ctx.run_digest("collect")],
                              lambda: gradient_similarity(ctx.run_dir, ctx.suite.n))
    return groups_from_affinity(aff["U"], ctx.k), {"k": ctx.k, "affinity_s": aff["seconds"], **aff["info"]}


def _tag(ctx: CompareContext, seed: int) -> tuple[list[list[int]], dict]:
    c = ctx.cfg
    seed0 = ctx.run_cfg.estimate.seed
    aff = ctx.cached_affinity("tag", [ctx.run_digest("train"), c.tag_checkpoints, c.tag_transitions, c.tag_delta, seed0],
                              lambda: tag_affinity(ctx.run_dir, ctx.suite, ctx.run_cfg.ppo, c.tag_checkpoints, c.tag_transitions,
                                                   c.tag_delta, seed0))
    return groups_from_affinity(aff["U"], ctx.k), {"k": ctx.k, "affinity_s": aff["seconds"], **aff["info"]}


#: the learners of the methods that read PPO's own quantities or updates
PPO_ONLY = ("ppo",)

register(Method("multitask", "one policy on all tasks", _all_tasks))
register(Method("softmod", "one Soft Modularization policy on all tasks (modules + task-conditioned routing)", _all_tasks,
                arch="softmod"))
register(Method("random", "one policy per group of a random partition with PolicyGradEx's group sizes (new draw per seed)",
                _random, needs_run=True, seed_dependent_grouping=True))
register(Method("gradsim", "one policy per group: SDP (same k) on the cosine of per-task mean policy gradients at theta*",
                _gradsim, needs_run=True, learners=PPO_ONLY))
register(Method("pcgrad", "one policy on all tasks with PCGrad gradient surgery on per-task PPO losses", _all_tasks, pcgrad=True,
                learners=PPO_ONLY))
register(Method("tag", "one policy per group: SDP (same k) on TAG-style lookahead affinities along meta-training", _tag,
                needs_run=True, learners=PPO_ONLY))
register(Method("policygradex", "one policy per group of the PolicyGradEx grouping", _policygradex, needs_run=True))
register(Method("recommended", "what following the run means: its groups when they are distinguishable from noise, else one "
                "policy for all tasks", _recommended, needs_run=True))
register(Method("pertask", "one policy per task", _per_task))


# ----------------------------------------------------------------------------- meta-RL (compare/meta.py)


register(Method("meta-maml", "meta-RL: first-order MAML on all training tasks, adapted to held-out tasks", _all_tasks,
                kind="meta_rl", run_unit=run_meta_unit, key_parts=key_parts,
                learners=PPO_ONLY))
register(Method("meta-policygradex", "meta-RL: first-order MAML per PolicyGradEx group; a held-out task adapts the group "
                "policy with the best probe return", _policygradex, needs_run=True, kind="meta_rl", run_unit=run_meta_unit,
                key_parts=key_parts, learners=PPO_ONLY))
register(Method("meta-multitask", "meta-RL: task-blind multi-task PPO policy as the initialization, adapted to held-out tasks",
                _all_tasks, kind="meta_rl", run_unit=run_meta_unit, key_parts=key_parts,
                learners=PPO_ONLY))
