"""Built-in task suites, each a seeded generator with documented parameter ranges.

``cartpole``         CartPole-v1, n tasks (default 10): pole length U[0.25, 1.0] (default env
                     0.5), pole mass U[0.05, 0.5] (0.1), gravity U[5, 15] (9.8), force
                     magnitude U[5, 15] (10).
``cartpole-planted`` CartPole-v1, n tasks (default 8) in two clusters known by construction:
                     the second cluster has a negative force magnitude, which mirrors the
                     actions (push left <-> push right).  Within a cluster the physics vary
                     mildly (length U[0.4, 0.6], pole mass U[0.08, 0.12], |force| U[9, 11]).
                     Cluster membership is drawn from the seed with balanced sizes; the
                     partition is exposed as ``suite.true_partition``.
``lunarlander``      LunarLander-v3 (discrete actions), n tasks (default 10): gravity U[-11, -5]
                     (allowed range (-12, 0)), wind on for half the tasks with wind power
                     U[5, 20] and turbulence power U[0.5, 2.0] (recommended ranges).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .base import Task, TaskSuite

CARTPOLE_PPO = dict(envs_per_task=8, num_steps=32, minibatch_size=256, update_epochs=20, learning_rate=1e-3,
                    gamma=0.98, gae_lambda=0.8, ent_coef=0.0, clip_coef=0.2)
LUNAR_PPO = dict(envs_per_task=16, num_steps=1024, minibatch_size=64, update_epochs=4, learning_rate=3e-4,
                 gamma=0.999, gae_lambda=0.98, ent_coef=0.01, clip_coef=0.2, checkpoint_every=2)


def _r(x: float) -> float:
    return float(round(x, 4))


def cartpole(n: int = 10, seed: int = 0) -> TaskSuite:
    rng = np.random.default_rng(seed)
    tasks, params = [], []
    for i in range(n):
        p = dict(length=_r(rng.uniform(0.25, 1.0)), masspole=_r(rng.uniform(0.05, 0.5)),
                 gravity=_r(rng.uniform(5, 15)), force_mag=_r(rng.uniform(5, 15)))
        tasks.append(Task(name=f"cartpole-{i:02d}", env_id="CartPole-v1", overrides=p))
        params.append(p)
    return TaskSuite("cartpole", tasks, description=cartpole.__doc__ or "CartPole with varied physics",
                     ppo_preset=_scaled(CARTPOLE_PPO, n, 2), params=params)


def cartpole_planted(n: int = 8, seed: int = 0) -> TaskSuite:
    rng = np.random.default_rng(seed)
    cluster = np.array([i % 2 for i in range(n)])
    rng.shuffle(cluster)
    tasks, params = [], []
    for i in range(n):
        sign = -1.0 if cluster[i] else 1.0
        p = dict(length=_r(rng.uniform(0.4, 0.6)), masspole=_r(rng.uniform(0.08, 0.12)),
                 force_mag=_r(sign * rng.uniform(9, 11)))
        name = f"{'mirrored' if cluster[i] else 'normal'}-{i:02d}"
        tasks.append(Task(name=name, env_id="CartPole-v1", overrides=p))
        params.append(p)
    partition = [[t.name for t, c in zip(tasks, cluster) if c == g] for g in (0, 1)]
    return TaskSuite("cartpole-planted", tasks, true_partition=partition,
                     description="CartPole, two clusters: normal and mirrored actions (negative force)",
                     ppo_preset=_scaled(CARTPOLE_PPO, n, 2), params=params)


def lunarlander(n: int = 10, seed: int = 0) -> TaskSuite:
    rng = np.random.default_rng(seed)
    wind = np.array([i % 2 for i in range(n)], dtype=bool)
    rng.shuffle(wind)
    tasks, params = [], []
    for i in range(n):
        kw = dict(gravity=_r(rng.uniform(-11, -5)), enable_wind=bool(wind[i]),
                  wind_power=_r(rng.uniform(5, 20)), turbulence_power=_r(rng.uniform(0.5, 2.0)))
        tasks.append(Task(name=f"lunar-{i:02d}", env_id="LunarLander-v3", kwargs=kw))
        params.append(kw)
    return TaskSuite("lunarlander", tasks, description="LunarLander-v3 with varied gravity, wind and turbulence",
                     ppo_preset=_scaled(LUNAR_PPO, n), params=params)


def _scaled(preset: dict, n: int, min_envs_per_task: int = 1) -> dict:
    """Keep the per-update batch near the single-task preset's when there are n tasks."""
    out = dict(preset)
    out["envs_per_task"] = max(min_envs_per_task, preset["envs_per_task"] // n)
    return out


def single_task(env_id: str, kwargs: dict | None = None) -> TaskSuite:
    """A one-task suite (``--suite env:CartPole-v1``) for single-task training and baselines."""
    preset = {"CartPole-v1": CARTPOLE_PPO, "LunarLander-v3": LUNAR_PPO}.get(env_id, {})
    return TaskSuite(env_id, [Task(name=env_id, env_id=env_id, kwargs=kwargs or {})],
                     description=f"single task {env_id}", ppo_preset=dict(preset))


SUITES: dict[str, Callable[..., TaskSuite]] = {
    "cartpole": cartpole,
    "cartpole-planted": cartpole_planted,
    "lunarlander": lunarlander,
}
