"""Per-task evaluation by rollouts: mean and std of episode returns."""

from __future__ import annotations

import numpy as np
import torch

from ..tasks import TaskSuite
from .networks import ActorCritic
from .rollout import MultiTaskEnv, policy_input
from .networks import env_action


def evaluate_policy(model: ActorCritic, suite: TaskSuite, episodes: int = 10, deterministic: bool = True, seed: int = 12345) -> dict[str, dict]:
    """Run ``episodes`` episodes of every task (all in parallel); returns {task: {mean, std, returns}}."""
    env = MultiTaskEnv(suite, episodes, seed)
    obs = env.reset()
    gen = torch.Generator().manual_seed(seed)
    E = env.num_envs
    ret = np.zeros(E)
    final = np.full(E, np.nan)
    space = env.envs.single_action_space
    model.eval()
    while np.isnan(final).any():
        x = policy_input(obs, env.task_ids, suite.n)
        a, _, _ = model.act(x, deterministic=deterministic, generator=gen)
        obs, r, term, trunc, _ = env.step(env_action(model.kind, a, space))
        live = np.isnan(final)
        ret[live] += r[live]
        done = np.logical_or(term, trunc) & live
        final[done] = ret[done]
    env.close()
    out = {}
    for i, name in enumerate(suite.names):
        rs = final[env.task_ids == i]
        out[name] = {"mean": float(rs.mean()), "std": float(rs.std()), "returns": rs.tolist()}
    return out
