"""GoalLine: a point on a line, pushed left or right, paying its distance to the goal until it gets there.

A small custom environment registered through gymnasium, as users register their own
(``env_id = "goalline:GoalLine-v0"`` in a suite file: gymnasium imports this module, which
registers the id).  The observation (position, velocity) does not show the goal: a multi-task
policy tells tasks apart by their task id only, so tasks with the same goal share what they
learn and tasks with different goals pull the shared policy apart.  The trust benchmark's second
planted family (``benchmarks/suites/goalline.toml``) has three goals, three tasks each, with
per-task friction, push strength and goal offset.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class GoalLine(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, goal: float = 0.5, push: float = 0.05, friction: float = 0.1, max_steps: int = 60):
        self.goal, self.push, self.friction, self.max_steps = float(goal), float(push), float(friction), int(max_steps)
        self.observation_space = spaces.Box(low=np.array([-2.0, -1.0], dtype=np.float32), high=np.array([2.0, 1.0], dtype=np.float32))
        self.action_space = spaces.Discrete(3)  # push left, nothing, push right
        self._x = self._v = 0.0
        self._t = 0

    def _obs(self) -> np.ndarray:
        return np.array([self._x, self._v], dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._x, self._v, self._t = float(self.np_random.uniform(-1.5, 1.5)), 0.0, 0
        return self._obs(), {}

    def step(self, action):
        self._v = float(np.clip((1.0 - self.friction) * self._v + self.push * (int(action) - 1), -1.0, 1.0))
        self._x = float(np.clip(self._x + self._v, -2.0, 2.0))
        self._t += 1
        dist = abs(self._x - self.goal)
        arrived = dist < 0.1 and abs(self._v) < 0.1  # at the goal, slow enough to stay: the episode ends
        reward = 1.0 if arrived else -dist  # a cost per step of being away, a bonus for arriving
        return self._obs(), reward, arrived, self._t >= self.max_steps, {}


gym.register("GoalLine-v0", entry_point=GoalLine)
