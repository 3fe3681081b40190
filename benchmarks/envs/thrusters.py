"""Thrusters: a craft on a plane steered to a hidden dock by six thrusters whose wiring differs.

A small custom environment registered through gymnasium, as users register their own
(``env_id = "thrusters:Thrusters-v0"`` in a suite file: gymnasium imports this module, which
registers the id).  Action 0 does nothing; action ``1 + j`` fires the thruster that pushes the
craft towards ``60 j`` degrees (j = 0..5, counterclockwise from east) - after the task's wiring
turns every thruster by ``wiring`` slots of 60 degrees.  The observation (position, velocity) shows neither the dock nor the
wiring, so a multi-task policy tells tasks apart by their task id only.

Why wiring and not the dock's position: tasks whose docks differ want a different *constant*
push, which a task-conditioned policy can absorb in its task-specific input weights (GoalLine,
``goalline.py``, plants that; neither the estimate nor real fine-tuning separated its goals:
docs/decisions.md); tasks wired
differently want a different action *in every state*, so they pull the shared layers apart.
The trust benchmark's planted family (``benchmarks/suites/thrusters.toml``) has three wirings
(0, 2 and 4 slots: 0, 120 and 240 degrees, so that no two wirings share more structure than
another two - with four thrusters turned by 0, 90 and 180 degrees, the 0 and 180 degree wirings
both use the same pair of opposite thrusters on each axis), three tasks each, with per-task
thrust, friction and dock offset.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

_ANGLES = np.deg2rad(60.0 * np.arange(6))
_DIRECTIONS = np.stack([np.cos(_ANGLES), np.sin(_ANGLES)], axis=1)  # thruster j pushes towards 60 j degrees


class Thrusters(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, wiring: int = 0, thrust: float = 0.05, friction: float = 0.1,
                 dock: tuple[float, float] = (0.0, 0.0), max_steps: int = 60):
        if int(wiring) != wiring:
            raise ValueError(f"wiring must be a whole number of 60-degree slots, got {wiring!r}")
        self.wiring, self.thrust, self.friction = int(wiring) % 6, float(thrust), float(friction)
        self.dock, self.max_steps = np.asarray(dock, dtype=np.float64).reshape(2), int(max_steps)
        self._push = np.roll(_DIRECTIONS, -self.wiring, axis=0)  # action 1 + j pushes towards 60 (j + wiring) degrees
        self.observation_space = spaces.Box(low=np.array([-2.0, -2.0, -1.0, -1.0], dtype=np.float32),
                                            high=np.array([2.0, 2.0, 1.0, 1.0], dtype=np.float32))
        self.action_space = spaces.Discrete(7)
        self._x, self._v, self._t = np.zeros(2), np.zeros(2), 0

    def _obs(self) -> np.ndarray:
        return np.concatenate([self._x, self._v]).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._x, self._v, self._t = self.np_random.uniform(-1.5, 1.5, size=2), np.zeros(2), 0
        return self._obs(), {}

    def step(self, action):
        a = int(action)
        push = self.thrust * self._push[a - 1] if a > 0 else np.zeros(2)
        self._v = np.clip((1.0 - self.friction) * self._v + push, -1.0, 1.0)
        self._x = np.clip(self._x + self._v, -2.0, 2.0)
        self._t += 1
        dist = float(np.linalg.norm(self._x - self.dock))
        docked = dist < 0.15 and float(np.linalg.norm(self._v)) < 0.1  # at the dock, slow enough to stay
        reward = 1.0 if docked else -dist  # a cost per step of being away, a bonus for docking
        return self._obs(), reward, docked, self._t >= self.max_steps, {}


gym.register("Thrusters-v0", entry_point=Thrusters)
