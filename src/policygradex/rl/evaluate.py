"""Per-task evaluation by rollouts: mean and std of episode returns."""

from __future__ import annotations

import numpy as np
import torch

from ..tasks import TaskSuite
from .networks import ActorCritic, env_action, sample_with_noise
from .rollout import MultiTaskEnv, policy_input


def evaluate_policy(model: ActorCritic, suite: TaskSuite, episodes: int = 10, deterministic: bool = True, seed: int = 12345,
                    tasks: list[int] | None = None) -> dict[str, dict]:
    """Run ``episodes`` episodes of every task (or of ``tasks``), all in parallel; returns
    {task: {mean, std, returns}}.  The same seed gives the same environment seeds and action
    noise (common random numbers across policies)."""
    env = MultiTaskEnv(suite, episodes, seed, tasks)
    obs = env.reset()
    # one noise stream per (task, episode): the same seed gives every policy the same noise
    streams = [np.random.default_rng([seed, int(t), int(c)]) for t, c in zip(env.task_ids, env.copy_ids)]
    E = env.num_envs
    ret = np.zeros(E)
    final = np.full(E, np.nan)
    space = env.envs.single_action_space
    model.eval()
    while np.isnan(final).any():
        x = policy_input(obs, env.task_ids, suite.n)
        if deterministic:
            a = model.actor.mode(x).detach()
        elif model.kind == "categorical":
            a = sample_with_noise(model.actor, x, torch.as_tensor(np.array([r.random() for r in streams])))
        else:
            noise = np.stack([r.standard_normal(model.actor.act_dim) for r in streams])
            a = sample_with_noise(model.actor, x, torch.as_tensor(noise, dtype=torch.float32))
        obs, r, term, trunc, _ = env.step(env_action(model.kind, a, space))
        live = np.isnan(final)
        ret[live] += r[live]
        done = np.logical_or(term, trunc) & live
        final[done] = ret[done]
    env.close()
    out = {}
    for i in sorted(set(env.task_ids.tolist())):
        name = suite.names[i]
        rs = final[env.task_ids == i]
        out[name] = {"mean": float(rs.mean()), "std": float(rs.std()), "returns": rs.tolist()}
    return out
