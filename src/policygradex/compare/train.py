"""Downstream training: one multi-task PPO policy per group under the per-task budget rule.

Budget rule (shared by every method): every task gets the same number of environment steps,
``steps_per_task`` rounded up to whole PPO iterations.  A policy for a group of ``s`` tasks
runs ``envs_per_task`` environments of each of its tasks for ``num_steps`` steps per
iteration, so every task consumes ``envs_per_task * num_steps`` steps per iteration and every
method runs the same number of iterations, ``ceil(steps_per_task / (envs_per_task *
num_steps))``; a group of ``s`` tasks therefore trains on ``s`` times the steps of one task.
The steps each task actually consumed are counted from the rollouts and returned.

Policies keep the suite's full one-hot width (as :func:`policygradex.rl.ppo.finetune`), so a
per-group policy can be warm-started from theta* and evaluated with the suite's task ids.
The learning rate anneals linearly to 0 over the group's iterations when the PPO config says
so, as in :func:`policygradex.rl.ppo.train`.  The suite presets fix a minibatch *size* tuned
for the all-task batch; with ``same_count`` (:func:`group_ppo`, the default) a smaller group's
minibatches shrink with its batch, so every policy makes the same number of optimizer steps
per iteration and only the data differ between methods.

SAC (``--algo sac``; :func:`train_group_sac`): a group policy of ``s`` tasks runs
``envs_per_task`` environments of each of its tasks and makes ``gradient_steps`` updates per
vector step, for ``steps_per_task`` steps of every task; the random-action warm-up is
``learning_starts * s / n`` steps (the same per task as the all-task policy) and, with
``same_count``, the batch is ``ceil(batch_size * s / n)`` rows (the same rows per task and
update as the all-task policy, which makes the same number of updates per task-step).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..config import PPOConfig, SACConfig
from ..rl.checkpoint import build_model
from ..rl.networks import ActorCritic
from ..rl.ppo import GradSurgery, ppo_iteration, task_list
from ..rl.rollout import MultiTaskEnv, RolloutCollector
from ..tasks import TaskSuite

__all__ = ["group_ppo", "group_sac", "iterations_for", "GroupResult", "train_group", "train_group_sac"]


def group_ppo(cfg: PPOConfig, group_size: int, n_tasks: int, rule: str = "same_count") -> PPOConfig:
    """The PPO config of a policy for ``group_size`` of the ``n_tasks`` tasks.

    ``same_count``: the minibatch size is scaled with the policy's batch so that every policy
    makes (as nearly as integer sizes allow) the same number of minibatch steps per epoch as
    the policy on all tasks with the preset's size; ``preset_size``: the preset unchanged.
    """
    if rule == "preset_size" or group_size == n_tasks:
        return cfg
    per_task = cfg.envs_per_task * cfg.num_steps
    ref = max(1, (n_tasks * per_task) // cfg.minibatch_size)
    return cfg.model_copy(update={"minibatch_size": max(1, math.ceil(group_size * per_task / ref))})


def group_sac(cfg: SACConfig, group_size: int, n_tasks: int, steps_per_task: int, seed: int,
              rule: str = "same_count") -> SACConfig:
    """The SAC config of a policy for ``group_size`` of the ``n_tasks`` tasks (module docstring)."""
    frac = group_size / n_tasks
    total = math.ceil(steps_per_task / cfg.envs_per_task) * cfg.envs_per_task * group_size  # whole vector steps
    update = {"total_steps": total, "checkpoint_every": total, "seed": seed,
              "learning_starts": math.ceil(cfg.learning_starts * frac)}
    if rule == "same_count":
        update["batch_size"] = max(1, math.ceil(cfg.batch_size * frac))
    return cfg.model_copy(update=update)


def iterations_for(cfg: PPOConfig, steps_per_task: int) -> int:
    """PPO iterations that give every task at least ``steps_per_task`` steps (at least one)."""
    return max(1, math.ceil(steps_per_task / (cfg.envs_per_task * cfg.num_steps)))


@dataclass
class GroupResult:
    model: ActorCritic
    tasks: list[int]
    env_steps: dict[int, int]        # task index -> environment steps consumed in training
    iterations: int
    wall_s: float
    train_returns: dict[int, float | None]  # mean of the last 20 finished training episodes per task
    checkpoint: Path | None = None           # SAC: the final checkpoint that train_group_sac wrote


def train_group(suite: TaskSuite, tasks: list[int], cfg: PPOConfig, steps_per_task: int, seed: int,
                init_state: dict | None = None, grad_surgery: GradSurgery | None = None,
                on_step: Callable[[int], None] | None = None, context: str | None = None) -> GroupResult:
    """Train one PPO policy on ``tasks`` (suite indices) for ``steps_per_task`` steps per task.

    ``init_state``: a state dict to start from (warm start from theta*), else a fresh network
    from ``cfg.net`` seeded by ``seed``.  ``grad_surgery``: see :func:`policygradex.rl.ppo.ppo_update`.
    ``on_step(n)`` is called with the environment steps of each iteration.  A divergence is a
    :class:`~policygradex.rl.finite.Divergence` naming the update and ``context`` (default: the
    group's tasks and the seed; e.g. the method's name).
    """
    t0 = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(seed)
    model = build_model(suite, cfg)
    if init_state is not None:
        model.load_state_dict(init_state)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, eps=1e-5)
    gen = torch.Generator().manual_seed(seed)
    env = MultiTaskEnv(suite, cfg.envs_per_task, seed, tasks)
    collector = RolloutCollector(env, gen)
    iters = iterations_for(cfg, steps_per_task)
    steps = {int(t): 0 for t in tasks}
    recent: dict[int, list[float]] = {int(t): [] for t in tasks}
    what = context or f"the policy for {task_list(suite, tasks)} (seed {seed})"
    try:
        for it in range(iters):
            lr = cfg.learning_rate * (1.0 - it / iters) if cfg.anneal_lr else cfg.learning_rate
            ro, _ = ppo_iteration(model, optimizer, collector, cfg, suite.n, lr, gen, grad_surgery,
                                  label=f"PPO update {it + 1}/{iters} of {what}", task_names=suite.names)
            T = ro.rewards.shape[0]
            ids, counts = np.unique(ro.task_ids.numpy(), return_counts=True)
            for t, c in zip(ids, counts):
                steps[int(t)] += int(T * c)
            for t in tasks:
                recent[int(t)] = (recent[int(t)] + list(ro.episode_returns[int(t)]))[-20:]
            if on_step is not None:
                on_step(int(T * ro.rewards.shape[1]))
    finally:
        env.close()
    model.eval()
    rets = {t: (float(np.mean(r)) if r else None) for t, r in recent.items()}
    return GroupResult(model, [int(t) for t in tasks], steps, iters, time.perf_counter() - t0, rets)


def train_group_sac(suite: TaskSuite, tasks: list[int], cfg: SACConfig, work_dir: Path, init_state: dict | None = None,
                    on_step: Callable[[int], None] | None = None) -> GroupResult:
    """Train one multi-task SAC policy on ``tasks`` with ``cfg`` from :func:`group_sac`; the
    run's checkpoints and ``train_history.json`` go to ``work_dir`` (``GroupResult.checkpoint`` is
    the final one)."""
    from ..rl import sac

    t0 = time.perf_counter()
    res = sac.train(suite, cfg, work_dir, on_update=(lambda k, _info: on_step(k)) if on_step is not None else None,
                    tasks=[int(t) for t in tasks], init_state=init_state)
    per_task = res.global_step // len(tasks)
    last = res.history[-1]["returns"] if res.history else {}
    rets = {int(t): last.get(suite.names[int(t)]) for t in tasks}
    return GroupResult(res.model, [int(t) for t in tasks], {int(t): per_task for t in tasks},
                       math.ceil(cfg.total_steps / (len(tasks) * cfg.envs_per_task)), time.perf_counter() - t0, rets,
                       res.checkpoints[-1] if res.checkpoints else None)
