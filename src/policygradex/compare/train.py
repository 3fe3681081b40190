"""Downstream training: one multi-task policy per group under the per-task budget rule.

Budget rule (shared by every method): every task gets the same number of environment steps,
``steps_per_task`` rounded up to whole iterations of the learner.  A PPO policy for a group of
``s`` tasks runs ``envs_per_task`` environments of each of its tasks for ``num_steps`` steps per
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

SAC (:func:`policygradex.rl.sac.group_sac`, :func:`policygradex.rl.sac.train_group_sac`): a
group policy of ``s`` tasks runs ``envs_per_task`` environments of each of its tasks and makes
``gradient_steps`` updates per vector step, for ``steps_per_task`` steps of every task; the
random-action warm-up is ``learning_starts * s / n`` steps (the same per task as the all-task
policy) and, with ``same_count``, the batch is ``ceil(batch_size * s / n)`` rows (the same rows
per task and update as the all-task policy, which makes the same number of updates per task-step).

The code lives with each learner (``Learner.group_config``, ``Learner.train_group``,
:mod:`policygradex.rl.learners`); the compare runner calls it through the learner of the run's
config.  This module keeps the names it had.
"""

from __future__ import annotations

from ..rl.ppo import GroupResult, group_ppo, iterations_for, train_group
from ..rl.sac import group_sac, train_group_sac

__all__ = ["group_ppo", "group_sac", "iterations_for", "GroupResult", "train_group", "train_group_sac"]
