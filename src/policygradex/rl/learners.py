"""Learners: the meta-trainers (PPO, SAC) behind one interface, in one registry.

Code outside ``rl/`` never asks which algorithm it runs: it takes the :class:`Learner` of a
config, a name or a model (:func:`learner_for`) and calls it; the training of the meta-policy,
the choice of theta* and its collection, checkpoints (:func:`policygradex.rl.checkpoint.load_checkpoint`
dispatches on a checkpoint's ``algo`` through :func:`learner_for`) and compare's per-group
training all go through it.  ``RunConfig.algo`` is a learner's :attr:`Learner.name`.

A new learner is one module: a class with the members of :class:`Learner` (an instance per
algorithm, with its own config model), registered with :func:`register`::

    from policygradex.rl.learners import register

    register(MyLearner())

Its checkpoints (``rl.checkpoint_io``'s format) carry ``"algo": name`` so that they load
through it; a checkpoint without ``algo`` is PPO's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import torch

from ..errors import UserError
from ..tasks import TaskSuite
from . import imported, ppo, sac
from .collected import Collected
from .ppo import GradSurgery, GroupResult, TrainResult

__all__ = ["Learner", "LEARNERS", "register", "learner_for", "learner_names", "Collected", "GroupResult", "TrainResult"]


@runtime_checkable
class Learner(Protocol):
    """One meta-trainer (one instance per algorithm)."""

    #: the value of ``RunConfig.algo`` and of a checkpoint's ``algo`` (``"ppo"``, ``"sac"``)
    name: str
    #: its config model (``PPOConfig``, ``SACConfig``); a checkpoint's ``config`` validates into it
    config_type: type
    #: for progress bars and messages (``"PPO"``, ``"SAC"``)
    title: str

    def check_suite(self, suite: TaskSuite) -> None:
        """A :class:`UserError` when the learner cannot act in the suite's action space."""

    def progress_total(self, cfg, n_tasks: int) -> int:
        """The environment steps that :meth:`train` reports in total through ``on_progress``."""


    def train(self, suite: TaskSuite, cfg, out_dir: str | Path, tensorboard: str | Path | None = None,
              on_progress: Callable[[int, dict], None] | None = None) -> TrainResult:
        """Train (or resume) the meta-policy on every task; checkpoints in ``out_dir/checkpoints``.
        ``on_progress(steps_delta, info)`` after each iteration, ``info["returns"]``: task -> mean
        return of its recent episodes, or None."""

    def build_model(self, suite: TaskSuite, cfg) -> torch.nn.Module:
        """A fresh model for the suite (the shape a checkpoint's weights load into)."""

    def collect(self, model: torch.nn.Module, suite: TaskSuite, cfg, transitions_per_task: int, envs_per_task: int,
                heldout_frac: float, seed: int, on_step: Callable[[int], None] | None = None) -> Collected:
        """theta*'s transitions with their advantages (the features' labels), task-major rows,
        the last copies of each task held out."""

    # compare's per-group training under the per-task budget rule

    def iterations(self, cfg, steps_per_task: int) -> int:
        """Iterations (PPO updates, SAC vector steps) that give every task ``steps_per_task`` steps."""

    def steps_per_iteration(self, cfg) -> int:
        """Environment steps every task gets per iteration."""

    def group_config(self, cfg, group_size: int, n_tasks: int, steps_per_task: int, seed: int,
                     rule: str = "same_count"):
        """The config of a policy for ``group_size`` of the ``n_tasks`` tasks, seeded by ``seed``."""

    def group_batch_size(self, cfg) -> int:
        """The batch size of one update of a group config (compare's ``minibatch_sizes``)."""

    def train_group(self, suite: TaskSuite, tasks: list[int], cfg, steps_per_task: int, seed: int, work_dir: Path,
                    init_state: dict | None = None, grad_surgery: GradSurgery | None = None,
                    on_step: Callable[[int], None] | None = None, context: str | None = None) -> GroupResult:
        """One policy on ``tasks`` (suite indices, full one-hot width) with ``cfg`` from
        :meth:`group_config`; files it writes go under ``work_dir`` (the caller removes it)."""

    def save_group_policy(self, path: Path, result: GroupResult, cfg, suite: TaskSuite, returns: dict[str, float]) -> None:
        """The group policy as a checkpoint at ``path`` (``policygradex evaluate`` reads it)."""


#: name -> learner, in registration order
LEARNERS: dict[str, Learner] = {}


#: what :func:`register` asks of a learner (compare's members only when compare runs it)
_REQUIRED = ("name", "config_type", "check_suite", "progress_total", "train", "build_model", "collect")


def register(learner: Learner) -> Learner:
    """Add (or replace) the learner under ``learner.name``."""
    missing = [m for m in _REQUIRED if not hasattr(learner, m)]
    if missing:
        raise TypeError(f"{type(learner).__name__} is not a Learner: it has no {', '.join(missing)}")
    LEARNERS[learner.name] = learner
    return learner


def learner_names() -> list[str]:
    return list(LEARNERS)


def learner_for(what) -> Learner:
    """The learner of a name (``"ppo"``), a config (instance or type) or a model (its ``algo``
    attribute; none: ``"ppo"``).  Unknown: a :class:`UserError` naming the registered learners."""
    if isinstance(what, str):
        name = what
    else:
        kind = what if isinstance(what, type) else type(what)
        # the learner of exactly this config type, else of a base class of it
        found = next((lr for lr in LEARNERS.values() if lr.config_type is kind), None) or next(
            (lr for lr in LEARNERS.values() if issubclass(kind, lr.config_type)), None)
        if found is not None:
            return found
        if isinstance(what, type):
            raise UserError(f"no learner has the config type {what.__name__}; allowed: {', '.join(LEARNERS)}")
        name = getattr(what, "algo", None) or "ppo"  # a model (SACModel.algo = "sac"; PPO's ActorCritic has none)
    if name not in LEARNERS:
        raise UserError(f"unknown learner {name!r}; allowed: {', '.join(LEARNERS)}")
    return LEARNERS[name]


register(ppo.LEARNER)
register(sac.LEARNER)
register(imported.LEARNER)
