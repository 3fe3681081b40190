"""The ``highway`` suite: highway-env's ``highway-fast-v0`` with varied traffic and rewards.

Every task is the gymnasium id ``policygradex/highway-fast-v0`` (:class:`HighwayTaskEnv`,
registered by :mod:`policygradex.tasks.builtin`) with a ``config`` dict as ``gymnasium.make``
keyword argument and the ``flatten_observation`` wrapper, so a suite file can write the same
tasks by hand.  ``HighwayTaskEnv`` is highway-env 1.12's ``HighwayEnvFast`` with two changes:

* the ``lane_change_reward`` term that highway-env declares in its config but whose indicator
  ``HighwayEnv._rewards`` never returns is computed (``action in {LANE_LEFT, LANE_RIGHT}``, the
  convention of highway-env's own ``merge-v0``); it enters the weighted sum before the reward
  normalization, so a negative weight can push a step's reward slightly below 0;
* the Kinematics observation is computed with NumPy instead of pandas: the same numbers
  (``tests/test_suites_extra.py`` checks equality with highway-env's observation), about half
  the step time.

Shared across tasks (so that the observation and action spaces are the same): Kinematics
observations of the ego vehicle and the 4 nearest others (``presence, x, y, vx, vy``, relative
to the ego vehicle, normalized with fixed ranges x +-200 m, y +-16 m (four lanes), vx/vy
+-80 m/s, then clipped to [-1, 1]), flattened to 25 numbers; the 5 discrete meta-actions
(LANE_LEFT, IDLE, LANE_RIGHT, FASTER, SLOWER); highway-fast's 5 Hz simulation, 1 Hz policy and
30 s episodes (30 decisions, truncation at the end, termination on a crash).

Varied per task (seeded generator, ``n`` tasks, default 10), with highway-env's defaults in
brackets:

=====================  =================  ==========
parameter              range              highway-v0
=====================  =================  ==========
``lanes_count``        {2, 3, 4}          4 (fast: 3)
``vehicles_count``     {6, ..., 12}       50 (fast: 20)
``vehicles_density``   U[0.8, 1.6]        1
``collision_reward``   U[-2.0, -0.5]      -1
``high_speed_reward``  U[0.2, 0.8]        0.4
``lane_change_reward`` U[-0.2, 0.0]       0
=====================  =================  ==========

(``right_lane_reward`` stays 0.1.)  Fewer vehicles than highway-fast's 20 keep a CPU step cheap:
measured throughput is in ``benchmarks/results/suites.json`` and docs/suites.md.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from highway_env import utils
from highway_env.envs.common.observation import KinematicObservation
from highway_env.envs.highway_env import HighwayEnvFast
from highway_env.vehicle.kinematics import Vehicle

from .base import Task, TaskSuite
from .profiles import profile_settings

ENV_ID = "policygradex/highway-fast-v0"

OBSERVED_VEHICLES = 5
FEATURES = ["presence", "x", "y", "vx", "vy"]
MAX_LANES = 4
FEATURES_RANGE = {
    "x": [-5.0 * Vehicle.MAX_SPEED, 5.0 * Vehicle.MAX_SPEED],
    "y": [-4.0 * MAX_LANES, 4.0 * MAX_LANES],
    "vx": [-2.0 * Vehicle.MAX_SPEED, 2.0 * Vehicle.MAX_SPEED],
    "vy": [-2.0 * Vehicle.MAX_SPEED, 2.0 * Vehicle.MAX_SPEED],
}
OBSERVATION = {"type": "Kinematics", "vehicles_count": OBSERVED_VEHICLES, "features": FEATURES,
               "features_range": FEATURES_RANGE, "absolute": False, "normalize": True, "clip": True,
               "order": "sorted"}
RANGES = {"lanes_count": (2, 4), "vehicles_count": (6, 12), "vehicles_density": (0.8, 1.6),
          "collision_reward": (-2.0, -0.5), "high_speed_reward": (0.2, 0.8), "lane_change_reward": (-0.2, 0.0)}

# PPO presets per profile.  quick: a CI smoke run (tens of seconds of training on one core);
# paper: 100k decisions per task, for many cores (POLICYGRADEX_ASYNC_ENVS=1) or long runs.
# Short-horizon credit assignment (gamma 0.9) as in highway-env's PPO examples.
_PPO_COMMON = dict(learning_rate=5e-4, gamma=0.9, gae_lambda=0.95, ent_coef=0.01, clip_coef=0.2, norm_adv="batch")
PROFILES: dict[str, dict[str, Any]] = {
    "quick": {"steps_per_task": 640,
              "ppo": dict(_PPO_COMMON, envs_per_task=1, num_steps=32, minibatch_size=64, update_epochs=4, checkpoint_every=5),
              "estimate": dict(transitions_per_task=256, collect_envs_per_task=2, probe_transitions=64),
              "group": dict(null_permutations=100)},
    "paper": {"steps_per_task": 100_000,
              "ppo": dict(_PPO_COMMON, envs_per_task=4, num_steps=128, minibatch_size=256, update_epochs=10, checkpoint_every=10),
              "estimate": dict(transitions_per_task=8192, collect_envs_per_task=8),
              "group": {}},
}


class FastKinematicObservation(KinematicObservation):
    """highway-env's :class:`KinematicObservation` for the features ``presence, x, y, vx, vy``,
    computed with NumPy (highway-env builds a pandas DataFrame per step).  Same vehicles, same
    arithmetic (``utils.lmap`` then ``np.clip``), same zero padding and shuffling."""

    SUPPORTED = {"presence", "x", "y", "vx", "vy"}

    @classmethod
    def supports(cls, config: dict) -> bool:
        features = config.get("features") or KinematicObservation.FEATURES
        return (config.get("type") == "Kinematics" and set(features) <= cls.SUPPORTED
                and int(config.get("vehicles_count", 5)) >= 2)

    def observe(self) -> np.ndarray:
        if not self.env.road:
            return np.zeros(self.space().shape)
        ego = self.observer_vehicle
        close = self.env.road.close_objects_to(ego, self.env.PERCEPTION_DISTANCE, count=self.vehicles_count - 1,
                                               see_behind=self.see_behind, sort=self.order == "sorted",
                                               vehicles_only=not self.include_obstacles)
        rows = [self._row(ego, None)]
        origin = ego if not self.absolute else None
        rows += [self._row(v, origin) for v in close[-self.vehicles_count + 1:]]
        obs = np.array(rows, dtype=np.float64)
        if self.normalize:
            if not self.features_range:  # highway-env's default ranges, set once (as in normalize_obs)
                side_lanes = self.env.road.network.all_side_lanes(ego.lane_index)
                self.features_range = {
                    "x": [-5.0 * Vehicle.MAX_SPEED, 5.0 * Vehicle.MAX_SPEED],
                    "y": [-4.0 * len(side_lanes), 4.0 * len(side_lanes)],
                    "vx": [-2 * Vehicle.MAX_SPEED, 2 * Vehicle.MAX_SPEED],
                    "vy": [-2 * Vehicle.MAX_SPEED, 2 * Vehicle.MAX_SPEED],
                }
            for j, f in enumerate(self.features):
                if f in self.features_range:
                    lo, hi = self.features_range[f]
                    obs[:, j] = utils.lmap(obs[:, j], [lo, hi], [-1, 1])
                    if self.clip:
                        obs[:, j] = np.clip(obs[:, j], -1, 1)
        if obs.shape[0] < self.vehicles_count:
            obs = np.vstack([obs, np.zeros((self.vehicles_count - obs.shape[0], len(self.features)))])
        if self.order == "shuffled":
            self.env.np_random.shuffle(obs[1:])
        return obs.astype(self.space().dtype)

    def _row(self, v: Vehicle, origin: Vehicle | None) -> list[float]:
        vals = {"presence": 1.0, "x": v.position[0], "y": v.position[1], "vx": v.velocity[0], "vy": v.velocity[1]}
        if origin is not None:
            ov = origin.velocity
            vals["x"] -= origin.position[0]
            vals["y"] -= origin.position[1]
            vals["vx"] -= ov[0]
            vals["vy"] -= ov[1]
        return [vals[f] for f in self.features]


class HighwayTaskEnv(HighwayEnvFast):
    """``highway-fast-v0`` with the lane-change reward term and a NumPy Kinematics observation
    (see the module docstring).  Configured like any highway-env env: ``config={...}``."""

    LANE_CHANGE_ACTIONS = (0, 2)  # DiscreteMetaAction: LANE_LEFT, LANE_RIGHT

    def define_spaces(self) -> None:
        super().define_spaces()
        cfg = self.config["observation"]
        if FastKinematicObservation.supports(cfg):
            self.observation_type = FastKinematicObservation(self, **cfg)
            self.observation_space = self.observation_type.space()

    def _rewards(self, action) -> dict[str, float]:
        rewards = super()._rewards(action)
        rewards["lane_change_reward"] = float(action is not None and int(action) in self.LANE_CHANGE_ACTIONS)
        return rewards


def _r(x: float) -> float:
    return float(round(x, 4))


def task_config(lanes_count: int, vehicles_count: int, vehicles_density: float, collision_reward: float,
                high_speed_reward: float, lane_change_reward: float) -> dict:
    """The highway-env ``config`` of one task (everything else: highway-fast-v0's defaults)."""
    return {"observation": dict(OBSERVATION), "action": {"type": "DiscreteMetaAction"},
            "lanes_count": lanes_count, "vehicles_count": vehicles_count, "vehicles_density": vehicles_density,
            "collision_reward": collision_reward, "high_speed_reward": high_speed_reward,
            "lane_change_reward": lane_change_reward, "right_lane_reward": 0.1}


def highway(n: int = 10, seed: int = 0, profile: str = "quick") -> TaskSuite:
    rng = np.random.default_rng(seed)
    tasks, params = [], []
    for i in range(n):
        p = dict(lanes_count=int(rng.integers(RANGES["lanes_count"][0], RANGES["lanes_count"][1] + 1)),
                 vehicles_count=int(rng.integers(RANGES["vehicles_count"][0], RANGES["vehicles_count"][1] + 1)),
                 vehicles_density=_r(rng.uniform(*RANGES["vehicles_density"])),
                 collision_reward=_r(rng.uniform(*RANGES["collision_reward"])),
                 high_speed_reward=_r(rng.uniform(*RANGES["high_speed_reward"])),
                 lane_change_reward=_r(rng.uniform(*RANGES["lane_change_reward"])))
        tasks.append(Task(name=f"highway-{i:02d}", env_id=ENV_ID, kwargs={"config": task_config(**p)},
                          wrappers=["flatten_observation"]))
        params.append(p)
    ppo, run = profile_settings(PROFILES, profile, n, "highway")
    return TaskSuite("highway", tasks, description="highway-env highway-fast-v0: traffic (lanes, vehicles, density) and "
                     "reward weights (collision, high speed, lane change) vary per task",
                     ppo_preset=ppo, params=params, profile=profile, run_preset=run,
                     metadata={"env": "highway-fast-v0", "highway_env": _version()})


def _version() -> str:
    from importlib.metadata import version

    return version("highway-env")
