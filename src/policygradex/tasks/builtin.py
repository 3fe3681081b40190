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
``highway``          highway-env highway-fast-v0, n tasks (default 10): lanes, vehicles, density
                     and reward weights vary (tasks/highway.py); profiles quick (default), paper.
``mo-fruit-tree``    MO-Gymnasium fruit-tree-v0 (6 objectives, depth 6): n preference tasks
                     (default 9) around 3 anchors, truth from the published Pareto front
                     (tasks/mo.py); needs the mo extra.
``mo-deep-sea-treasure`` deep-sea-treasure-v0 (treasure, time): the same, 3 anchors.
``mo-lunar-lander``  mo-lunar-lander-v3 (4 objectives: landing, shaping, main and side engine
                     fuel): n tasks (default 8) around 4 directions; no published front, no truth.
``metaworld-mt10``   the ten Meta-World MT10 tasks (``--tasks k``: the first k), 50 goals each,
``metaworld-mt50``   and the fifty MT50 tasks (tasks/metaworld.py); profiles quick (default),
                     paper.  ``metaworld:<task>,<task>,...`` (loader) lists tasks by name.
"""

from __future__ import annotations

from typing import Callable

import gymnasium as gym
import numpy as np

from ..errors import UserError
from .base import Task, TaskSuite
from .mo import preference_suite

# The environments of the highway and Meta-World suites; the entry points (and highway-env,
# metaworld) are imported only when such an environment is made.
for _id, _entry in (("policygradex/highway-fast-v0", "policygradex.tasks.highway:HighwayTaskEnv"),
                    ("policygradex/metaworld-v3", "policygradex.tasks.metaworld:MetaWorldTaskEnv")):
    if _id not in gym.registry:
        gym.register(id=_id, entry_point=_entry)

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


def highway(n: int = 10, seed: int = 0, profile: str = "quick") -> TaskSuite:
    """highway-env highway-fast-v0 with varied traffic and reward weights (tasks/highway.py)."""
    from .highway import highway as make

    return make(n, seed, profile)


def metaworld_mt10(n: int | None = None, seed: int = 0, profile: str = "quick") -> TaskSuite:
    """The Meta-World MT10 tasks, or the first ``n`` of them (tasks/metaworld.py)."""
    from .metaworld import mt10

    return mt10(n, seed, profile)


def metaworld_mt50(n: int | None = None, seed: int = 0, profile: str = "quick") -> TaskSuite:
    """The Meta-World MT50 tasks, or the first ``n`` of them (tasks/metaworld.py)."""
    from .metaworld import mt50

    return mt50(n, seed, profile)


# The preference families' PPO presets (docs/suites.md): episodes of a few to a hundred steps
# whose rewards come late, so checkpoints come often (theta* before the tasks converge).
MO_PPO = dict(checkpoint_every=2)
MO_LUNAR_PPO = dict(LUNAR_PPO, checkpoint_every=2)


def mo_fruit_tree(n: int = 9, seed: int = 0) -> TaskSuite:
    """MO-Gymnasium fruit-tree-v0: preferences over its 6 fruits around 3 anchors (tasks/mo.py)."""
    return preference_suite("fruit-tree-v0", n, 3, seed, name="mo-fruit-tree", ppo_preset=MO_PPO)


def mo_deep_sea_treasure(n: int = 9, seed: int = 0) -> TaskSuite:
    """MO-Gymnasium deep-sea-treasure-v0: preferences over (treasure, time) around 3 anchors."""
    return preference_suite("deep-sea-treasure-v0", n, 3, seed, name="mo-deep-sea-treasure", ppo_preset=MO_PPO)


def mo_lunar_lander(n: int = 8, seed: int = 0) -> TaskSuite:
    """MO-Gymnasium mo-lunar-lander-v3: preferences over its 4 objectives around 4 directions."""
    return preference_suite("mo-lunar-lander-v3", n, 4, seed, name="mo-lunar-lander", gamma=LUNAR_PPO["gamma"],
                            ppo_preset=_scaled(MO_LUNAR_PPO, n, 2))


SUITES: dict[str, Callable[..., TaskSuite]] = {
    "cartpole": cartpole,
    "cartpole-planted": cartpole_planted,
    "lunarlander": lunarlander,
    "highway": highway,
    "metaworld-mt10": metaworld_mt10,
    "metaworld-mt50": metaworld_mt50,
    "mo-fruit-tree": mo_fruit_tree,
    "mo-deep-sea-treasure": mo_deep_sea_treasure,
    "mo-lunar-lander": mo_lunar_lander,
}


#: The families whose tasks are drawn from continuous parameter ranges, so that held-out tasks
#: can be drawn from the same ranges (meta-RL, ``compare.meta``).
HELDOUT_FAMILIES = ("cartpole", "cartpole-planted", "lunarlander")
#: Entropy added to the suite seed for the held-out stream (never the training suite's seed).
HELDOUT_STREAM = 0x7E57


def heldout_seed(seed: int) -> int:
    """The generator seed of the held-out tasks of a suite made with ``seed``: a different
    stream (``SeedSequence([seed, HELDOUT_STREAM])``), so held-out tasks do not repeat the
    training draws."""
    return int(np.random.SeedSequence([int(seed), HELDOUT_STREAM]).generate_state(1)[0])


def heldout(family: str, n_test: int, seed: int) -> TaskSuite:
    """``n_test`` held-out tasks of a built-in family: the family's generator with the same
    parameter ranges and :func:`heldout_seed` (``seed``: the training suite's seed); tasks are
    named ``test-<name>`` and the suite has no known partition."""
    if family not in HELDOUT_FAMILIES:
        raise UserError(f"held-out tasks need a built-in family with continuous parameters ({', '.join(HELDOUT_FAMILIES)}), "
                        f"got suite {family!r}")
    base = SUITES[family](n=n_test, seed=heldout_seed(seed))
    tasks = [t.model_copy(update={"name": f"test-{t.name}"}) for t in base.tasks]
    return TaskSuite(f"{family}-heldout", tasks, description=f"{n_test} held-out tasks of {family} (seed stream {seed}, "
                     f"{HELDOUT_STREAM:#x})", ppo_preset=base.ppo_preset, params=base.params)
