"""Multi-task rollouts over one gymnasium vector env that covers every task.

Environment e runs task ``task_ids[e]``; the policy sees the observation with the task's
one-hot id appended (:func:`policy_input`).  The vector env uses same-step autoreset, so the
final observation of an episode is available to bootstrap a truncated episode's value.
Observations and rewards are checked for NaN/inf and an env that raises is reported with the
task's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import gymnasium as gym
import numpy as np
import torch

from ..errors import UserError
from ..tasks import TaskSuite
from .gae import gae
from .networks import ActorCritic, env_action


def policy_input(obs: np.ndarray | torch.Tensor, task_ids: np.ndarray | torch.Tensor, n_tasks: int) -> torch.Tensor:
    obs_t = torch.as_tensor(np.asarray(obs), dtype=torch.float32)
    onehot = torch.nn.functional.one_hot(torch.as_tensor(np.asarray(task_ids), dtype=torch.long), n_tasks).float()
    return torch.cat([obs_t, onehot], dim=-1)


class MultiTaskEnv:
    """``envs_per_task`` copies of every task (or of the tasks listed in ``tasks``) in one
    SyncVectorEnv.  Task ids and the one-hot width always refer to the whole suite, so a
    policy trained on all tasks can be fine-tuned or evaluated on a subset."""

    def __init__(self, suite: TaskSuite, envs_per_task: int, seed: int, tasks: list[int] | None = None):
        self.suite = suite
        self.n_tasks = suite.n
        chosen = list(range(suite.n)) if tasks is None else [int(i) for i in tasks]
        self.task_ids = np.repeat(np.array(chosen, dtype=np.int64), envs_per_task)
        fns = [(lambda t=suite.tasks[i]: t.make()) for i in chosen for _ in range(envs_per_task)]
        self.envs = gym.vector.SyncVectorEnv(fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
        self.num_envs = len(fns)
        # copy number of each env within its task: seeds depend on (task, copy), not on the
        # env's position, so a task sees the same seeds whichever other tasks run beside it
        self.copy_ids = np.tile(np.arange(envs_per_task), len(chosen))
        self.seed = seed
        self.obs: np.ndarray | None = None

    def reset(self, seed: int | None = None) -> np.ndarray:
        try:
            base = (self.seed if seed is None else seed) * 100_003
            obs, _ = self.envs.reset(seed=[base + int(t) * 1_009 + int(c) for t, c in zip(self.task_ids, self.copy_ids)])
        except Exception as exc:
            raise UserError(f"an environment of suite {self.suite.name!r} raised in reset: {type(exc).__name__}: {exc}") from None
        self._check(obs, "observation")
        self.obs = obs
        return obs

    def step(self, actions: np.ndarray):
        try:
            obs, rew, term, trunc, info = self.envs.step(actions)
        except Exception as exc:
            raise UserError(f"an environment of suite {self.suite.name!r} raised in step: {type(exc).__name__}: {exc}") from None
        self._check(obs, "observation")
        self._check(rew, "reward")
        self.obs = obs
        return obs, rew, term, trunc, info

    def _check(self, arr: np.ndarray, what: str) -> None:
        arr = np.asarray(arr, dtype=np.float64)
        if not np.isfinite(arr).all():
            bad = np.where(~np.isfinite(arr.reshape(self.num_envs, -1)).all(axis=1))[0][0]
            task = self.suite.tasks[self.task_ids[bad]].name
            raise UserError(f"task {task!r} returned a non-finite {what} (NaN or inf); check its parameters")

    def close(self) -> None:
        self.envs.close()


@dataclass
class Rollout:
    """One rollout, tensors shaped [T, E] (x: [T, E, in], actions: [T, E] or [T, E, act])."""

    x: torch.Tensor
    actions: torch.Tensor
    logprobs: torch.Tensor
    values: torch.Tensor
    rewards: torch.Tensor
    next_values: torch.Tensor
    terminated: torch.Tensor
    dones: torch.Tensor
    task_ids: torch.Tensor  # [E]
    episode_returns: list[list[float]] = field(default_factory=list)  # per task, finished episodes

    def advantages(self, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
        return gae(self.rewards, self.values, self.next_values, self.terminated, self.dones, gamma, lam)


class RolloutCollector:
    """Steps a :class:`MultiTaskEnv` with a policy and keeps running episode returns."""

    def __init__(self, env: MultiTaskEnv, generator: torch.Generator):
        self.env = env
        self.gen = generator
        self.ep_ret = np.zeros(env.num_envs)
        if env.obs is None:
            env.reset()

    def collect(self, model: ActorCritic, num_steps: int, on_step: Callable[[int], None] | None = None) -> Rollout:
        """Step every env ``num_steps`` times; ``on_step(num_envs)`` after each vector step."""
        env, n, E = self.env, self.env.n_tasks, self.env.num_envs
        space = env.envs.single_action_space
        xs, acts, logps, vals, rews, nvals, terms, dones = [], [], [], [], [], [], [], []
        finished: list[list[float]] = [[] for _ in range(n)]
        for _ in range(num_steps):
            x = policy_input(env.obs, env.task_ids, n)
            a, logp, v = model.act(x, generator=self.gen)
            obs, r, term, trunc, info = env.step(env_action(model.kind, a, space))
            done = np.logical_or(term, trunc)
            nv = torch.zeros(E)
            if done.any():
                idx = np.where(done)[0]
                final = np.stack([info["final_obs"][i] for i in idx])
                with torch.no_grad():
                    nv[idx] = model.value(policy_input(final, env.task_ids[idx], n))
            self.ep_ret += r
            for e in np.where(done)[0]:
                finished[env.task_ids[e]].append(float(self.ep_ret[e]))
                self.ep_ret[e] = 0.0
            xs.append(x); acts.append(a); logps.append(logp); vals.append(v)
            rews.append(torch.as_tensor(r, dtype=torch.float32)); nvals.append(nv)
            terms.append(torch.as_tensor(term)); dones.append(torch.as_tensor(done))
            if on_step is not None:
                on_step(E)
        values = torch.stack(vals)
        with torch.no_grad():
            last_v = model.value(policy_input(env.obs, env.task_ids, n))
        done_t = torch.stack(dones)
        # Where the episode did not end, V(s_{t+1}) is the value computed at step t+1.
        following = torch.cat([values[1:], last_v.unsqueeze(0)])
        next_values = torch.where(done_t, torch.stack(nvals), following)
        return Rollout(torch.stack(xs), torch.stack(acts), torch.stack(logps), values, torch.stack(rews),
                       next_values, torch.stack(terms), done_t, torch.as_tensor(env.task_ids), finished)
