"""The environment side of a preference task (tasks/mo.py has the families): MO-Gymnasium
imported on demand, the scalarized reward ``w·r`` and float observations.  ``tasks.base``
imports this module (a task with ``weights``), which imports nothing of the task suites."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np

from ..errors import UserError

INSTALL_HINT = "install the mo extra: pip install 'policygradex[mo]'"


def import_mo(what: str):
    """``mo_gymnasium`` (importing it registers its environments), or one line naming ``what``
    needed it and how to install it."""
    try:
        import mo_gymnasium
    except ImportError:
        raise UserError(f"{what} needs MO-Gymnasium, which is not installed; {INSTALL_HINT}") from None
    return mo_gymnasium


class FloatObservation(gym.ObservationWrapper):
    """Observations as float32, and a Box with finite bounds rescaled to [-1, 1] (fruit-tree's
    and deep-sea-treasure's observations are int32 grid coordinates up to 63)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        space = env.observation_space
        if not isinstance(space, gym.spaces.Box):
            raise TypeError(f"needs a Box observation space, got {space}")
        low, high = space.low.astype(np.float64), space.high.astype(np.float64)
        bounded = np.isfinite(low) & np.isfinite(high) & (high > low)
        self._low = np.where(bounded, low, 0.0)
        self._scale = np.where(bounded, (high - low) / 2.0, 1.0)
        self._shift = np.where(bounded, 1.0, 0.0)
        new_low = np.where(bounded, -1.0, low).astype(np.float32)
        new_high = np.where(bounded, 1.0, high).astype(np.float32)
        self.observation_space = gym.spaces.Box(new_low, new_high, shape=space.shape, dtype=np.float32)

    def observation(self, obs):
        x = (np.asarray(obs, dtype=np.float64) - self._low) / self._scale - self._shift
        return x.astype(np.float32)


def scalarize(env: gym.Env, weights: list[float], task_name: str, env_id: str) -> gym.Env:
    """``env`` with reward ``w·r`` (``LinearReward``; ``info["vector_reward"]`` keeps r) and, when
    its observations are integers, :class:`FloatObservation`."""
    mo = import_mo(f"task {task_name!r} (preference weights)")
    space = getattr(env.unwrapped, "reward_space", None)
    shape = getattr(space, "shape", None)
    if shape is None or len(shape) != 1:
        raise UserError(f"task {task_name!r}: {env_id!r} has no vector reward (no 1-D reward_space), so preference "
                        "weights do not apply; weights need a multi-objective environment (MO-Gymnasium ids)")
    if len(weights) != shape[0]:
        raise UserError(f"task {task_name!r}: {env_id!r} has {shape[0]} objectives, so its weights need {shape[0]} "
                        f"numbers, got {len(weights)}")
    env = mo.wrappers.LinearReward(env, np.asarray(weights, dtype=np.float32))
    obs = env.observation_space
    if isinstance(obs, gym.spaces.Box) and obs.dtype is not None and np.dtype(obs.dtype).kind in "iub":
        env = FloatObservation(env)
    return env


def check_weights(weights: list[float]) -> list[float]:
    """A preference must be finite, non-negative and not all zero (pydantic validator body)."""
    if not weights:
        raise ValueError("weights must list one number per objective")
    if any(not math.isfinite(x) for x in weights):
        raise ValueError(f"weights must be finite numbers, got {weights}")
    if any(x < 0 for x in weights):
        raise ValueError(f"weights must be non-negative (a preference over objectives), got {weights}")
    if sum(weights) <= 0:
        raise ValueError("weights must not all be zero")
    return [float(x) for x in weights]
