"""Every task of a suite behind one gymnasium env, the task's one-hot appended: the env a policy
trained elsewhere (Stable-Baselines3, ...) learns on so that ``run --policy`` can read it."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from ..errors import UserError
from ..tasks import TaskSuite

__all__ = ["OneHotTaskEnv"]


class OneHotTaskEnv(gym.Env):
    """Every task of a suite behind one gymnasium env, for training a policy elsewhere (e.g.
    Stable-Baselines3) that ``run --policy`` can then read: each episode runs one task (in turn,
    task ``episode % n``, or drawn with the env's RNG when ``shuffle``), and the observation is the
    task's observation with its one-hot appended, in the suite's task order (``--policy-task-input
    onehot``, the default).  With ``task_key``, the observation is a dict instead: the task's
    observation under ``"observation"`` and its index (``Discrete(n)``) under ``task_key``
    (``--policy-task-input key:TASK_KEY``, for Stable-Baselines3's ``MultiInputPolicy``).
    Rewards, terminations and infos are the task's own."""

    metadata = {"render_modes": []}

    def __init__(self, suite: TaskSuite, shuffle: bool = False, task_key: str | None = None):
        super().__init__()
        self.suite, self.shuffle, self.task_key = suite, bool(shuffle), task_key
        if task_key == "observation":
            raise UserError("OneHotTaskEnv: task_key 'observation' is the observation's own key; choose another")
        self.envs = [t.make() for t in suite.tasks]
        base = self.envs[0].observation_space
        if not isinstance(base, gym.spaces.Box) or len(base.shape) != 1:
            raise UserError(f"OneHotTaskEnv needs flat Box observations; the suite's are {base}")
        low = np.concatenate([np.broadcast_to(base.low, base.shape), np.zeros(suite.n)]).astype(np.float32)
        high = np.concatenate([np.broadcast_to(base.high, base.shape), np.ones(suite.n)]).astype(np.float32)
        self.observation_space = gym.spaces.Box(low, high, dtype=np.float32)
        if task_key is not None:
            self.observation_space = gym.spaces.Dict({"observation": gym.spaces.Box(low[:-suite.n], high[:-suite.n], dtype=np.float32),
                                                      task_key: gym.spaces.Discrete(suite.n)})
        self.action_space = self.envs[0].action_space
        self.task, self._episodes = 0, 0
        self._first_seeds: list[int | None] = [None] * suite.n  # each task's env's seed at its first reset after a seeded reset

    def _obs(self, obs):
        if self.task_key is not None:
            return {"observation": np.asarray(obs, dtype=np.float32).reshape(-1), self.task_key: self.task}
        return np.concatenate([np.asarray(obs, dtype=np.float32).reshape(-1), np.eye(self.suite.n, dtype=np.float32)[self.task]])

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:  # every task's env is seeded from this one, at its own next reset: reproducible episodes
            self._first_seeds = [int(s) for s in self.np_random.integers(2**31, size=self.suite.n)]
        self.task = int(self.np_random.integers(self.suite.n)) if self.shuffle else self._episodes % self.suite.n
        self._episodes += 1
        first, self._first_seeds[self.task] = self._first_seeds[self.task], None
        obs, info = self.envs[self.task].reset(seed=first)
        return self._obs(obs), {**info, "task": self.task}

    def step(self, action):
        obs, r, term, trunc, info = self.envs[self.task].step(action)
        return self._obs(obs), float(r), bool(term), bool(trunc), {**info, "task": self.task}

    def close(self):
        for e in self.envs:
            e.close()
