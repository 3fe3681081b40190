"""Meta-World suites: ``metaworld-mt10``, ``metaworld-mt50`` and ``metaworld:<task>,<task>,...``.

Every task is the gymnasium id ``policygradex/metaworld-v3`` (:class:`MetaWorldTaskEnv`,
registered by :mod:`policygradex.tasks.builtin`) with keyword arguments ``task_name`` (a
Meta-World v3 name such as ``reach-v3``), ``goals`` (the task's 50 goal vectors) and
``reward_function_version``.  The goals are part of the task, so a checkpoint rebuilds exactly
the same tasks without recomputing the benchmark.

What an episode is, as in Meta-World's multi-task benchmarks (``metaworld.MT10`` /
``metaworld.MT50``, Farama Meta-World 3.x):

* observation: Meta-World's 39 numbers (hand, gripper, objects, the previous frame of those,
  and the goal position, which the MT benchmarks make observable); the multi-task policy
  appends the task's one-hot itself (``rl.rollout.policy_input``).  The space is declared
  unbounded (``Box(-inf, inf, (39,), float64)``) because Meta-World's own bounds differ per
  task (they include each task's goal range); the values are Meta-World's, unchanged.
* action: ``Box(-1, 1, (4,), float32)`` (hand displacement and gripper effort).
* horizon: 500 steps (``max_path_length``), then truncation; never terminated early.
* goal: at every reset one of the task's 50 goals is drawn with the episode's random stream
  (``reset(seed=s)`` seeds it, later resets continue it), so episodes are reproducible; like
  Meta-World's ``RandomTaskSelectWrapper``, but seeded.
* reward: Meta-World's ``reward_function_version = "v2"`` (the v3 environments' default).
* success: an episode succeeds when ``info["success"]`` is 1 at any of its steps (Meta-World's
  own evaluation stops an episode at its first success and counts it, which is the same
  thing); ``TaskSuite.success_key = "success"`` makes ``rl.evaluate`` report it.

The 50 goals per task are those of Meta-World's benchmark objects for the suite seed
(``--suite-seed``): ``metaworld.MT10(seed)`` and ``metaworld.MT50(seed)`` for the full
suites, and for ``--tasks k`` the same computation run on the benchmark's first k task classes
(``metaworld._make_tasks``, which the benchmark objects call; the goals of a class depend only
on the classes before it, so they equal the full benchmark's); ``metaworld.MT1(name, seed)``
per task for a custom list (what ``metaworld.make_mt_envs(name)`` uses).  Building the goals
costs about one second per task class (MuJoCo model compilation and 50 resets), once per
process.

Environment copies of a task share one compiled MuJoCo model (each copy gets its own
``mj_copyModel`` copy instead of recompiling the XML): about 10x cheaper construction, the
same simulation.
"""

from __future__ import annotations

import copy
import functools
import pickle
from collections import OrderedDict
from typing import Any

import gymnasium as gym
import metaworld
import mujoco
import numpy as np
from metaworld.env_dict import ALL_V3_ENVIRONMENTS, MT10_V3, MT50_V3
from metaworld.types import Task as MWTask

from ..errors import UserError
from .base import Task, TaskSuite
from .profiles import profile_settings

ENV_ID = "policygradex/metaworld-v3"
REWARD_FUNCTION_VERSION = "v2"
HORIZON = 500
OBS_DIM = 39
ALL_NAMES = list(ALL_V3_ENVIRONMENTS)
MT10_NAMES = list(MT10_V3)
MT50_NAMES = list(MT50_V3)
SUCCESS_KEY = "success"

# PPO presets per profile.  quick: a CI smoke run (about ten PPO updates, seconds per task on one
# core); paper: 2M steps per task (20M for MT10), for many cores (POLICYGRADEX_ASYNC_ENVS=1) or a
# long run.  One update sees whole 500-step episodes in the paper profile.
_PPO_COMMON = dict(learning_rate=3e-4, gamma=0.99, gae_lambda=0.95, ent_coef=0.0, clip_coef=0.2, norm_adv="batch")
PROFILES: dict[str, dict[str, Any]] = {
    "quick": {"steps_per_task": 1280,
              "ppo": dict(_PPO_COMMON, envs_per_task=1, num_steps=128, minibatch_size=128, update_epochs=4, checkpoint_every=5),
              "estimate": dict(transitions_per_task=1000, collect_envs_per_task=2, probe_transitions=128),  # one episode per copy
              "group": dict(null_permutations=100)},
    "paper": {"steps_per_task": 2_000_000,
              "ppo": dict(_PPO_COMMON, envs_per_task=4, num_steps=500, minibatch_size=1000, update_epochs=10, checkpoint_every=20),
              "estimate": dict(transitions_per_task=8192, collect_envs_per_task=8),
              "group": {}},
}


# ---------------------------------------------------------------------------------------------
# the environment


@functools.lru_cache(maxsize=None)
def _env_class(name: str) -> type:
    """Meta-World's class for ``name``, subclassed so that copies share the compiled model."""
    base = ALL_V3_ENVIRONMENTS[name]
    compiled: dict[str, Any] = {}

    def _initialize_simulation(self):
        if self.fullpath not in compiled:
            model, data = base._initialize_simulation(self)
            compiled[self.fullpath] = copy.copy(model)  # a pristine copy, before the env changes its own
            return model, data
        model = copy.copy(compiled[self.fullpath])  # mj_copyModel: the same model, no XML compilation
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, self.width)
        model.vis.global_.offheight = max(model.vis.global_.offheight, self.height)
        return model, mujoco.MjData(model)

    return type(base.__name__, (base,), {"_initialize_simulation": _initialize_simulation, "__module__": __name__,
                                         "__doc__": base.__doc__})


class MetaWorldTaskEnv(gym.Env):
    """One Meta-World v3 task whose goal is drawn from ``goals`` at every reset (module docstring)."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, task_name: str, goals: list[list[float]], reward_function_version: str = REWARD_FUNCTION_VERSION,
                 max_path_length: int = HORIZON, render_mode: str | None = None):
        if task_name not in ALL_V3_ENVIRONMENTS:
            raise ValueError(f"unknown Meta-World task {task_name!r}; allowed: {', '.join(ALL_NAMES)}")
        if not goals:
            raise ValueError("goals must list at least one goal vector")
        if reward_function_version not in ("v1", "v2"):
            raise ValueError(f"reward_function_version must be 'v1' or 'v2', got {reward_function_version!r}")
        if int(max_path_length) < 1:
            raise ValueError(f"max_path_length must be >= 1, got {max_path_length}")
        self.task_name = task_name
        self.render_mode = render_mode
        self.env = _env_class(task_name)(reward_function_version=reward_function_version, render_mode=render_mode)
        self.env.max_path_length = int(max_path_length)
        cls = ALL_V3_ENVIRONMENTS[task_name]
        # the metaworld.Task objects of the MT benchmarks, one per goal
        self.tasks = [MWTask(env_name=task_name, data=pickle.dumps({"rand_vec": np.asarray(g, dtype=np.float64), "env_cls": cls,
                                                                    "partially_observable": False}))
                      for g in goals]
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
        self.goal_index: int | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.goal_index = int(self.np_random.integers(len(self.tasks)))
        self.env.set_task(self.tasks[self.goal_index])
        obs, info = self.env.reset()
        return np.asarray(obs, dtype=np.float64), {**info, "goal_index": self.goal_index}

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(np.asarray(action, dtype=np.float32))
        return np.asarray(obs, dtype=np.float64), float(reward), bool(terminated), bool(truncated), info

    def render(self):
        return self.env.render()

    def close(self) -> None:
        self.env.close()


# ---------------------------------------------------------------------------------------------
# goals and suites


def _rand_vecs(tasks: list[MWTask], names: list[str]) -> dict[str, list[list[float]]]:
    out: dict[str, list[list[float]]] = {n: [] for n in names}
    for t in tasks:
        if t.env_name in out:
            out[t.env_name].append([float(v) for v in pickle.loads(t.data)["rand_vec"]])
    return out


@functools.lru_cache(maxsize=8)
def benchmark_goals(benchmark: str, k: int, seed: int) -> dict[str, list[list[float]]]:
    """The 50 goals of each of the first ``k`` tasks of ``metaworld.MT10`` / ``MT50`` at ``seed``."""
    classes = {"MT10": MT10_V3, "MT50": MT50_V3}[benchmark]
    names = list(classes)[:k]
    if k == len(classes):
        bench = getattr(metaworld, benchmark)(seed=seed)
        return _rand_vecs(bench.train_tasks, names)
    # what MT10/MT50.__init__ run, on the first k classes (same seeded stream, same order)
    sub = OrderedDict((n, classes[n]) for n in names)
    args = {n: dict(args=[], kwargs={"task_id": ALL_NAMES.index(n)}) for n in names}
    return _rand_vecs(metaworld._make_tasks(sub, args, metaworld._MT_OVERRIDE, seed=seed), names)


@functools.lru_cache(maxsize=64)
def single_task_goals(name: str, seed: int) -> list[list[float]]:
    """The 50 goals of ``metaworld.MT1(name, seed)``."""
    return _rand_vecs(metaworld.MT1(name, seed=seed).train_tasks, [name])[name]


def check_names(names: list[str], source: str) -> None:
    bad = [n for n in names if n not in ALL_V3_ENVIRONMENTS]
    if bad:
        raise UserError(f"{source}: unknown Meta-World task {bad[0]!r}; allowed: {', '.join(ALL_NAMES)}")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserError(f"{source}: Meta-World tasks listed twice: {', '.join(dup)}")


def _suite(name: str, names: list[str], goals: dict[str, list[list[float]]], source: str, seed: int, profile: str) -> TaskSuite:
    tasks = [Task(name=n, env_id=ENV_ID, kwargs={"task_name": n, "goals": goals[n],
                                                  "reward_function_version": REWARD_FUNCTION_VERSION})
             for n in names]
    ppo, run = profile_settings(PROFILES, profile, len(names), name)
    meta = {"benchmark": source, "benchmark_seed": seed, "goals_per_task": len(goals[names[0]]),
            "reward_function_version": REWARD_FUNCTION_VERSION, "horizon": HORIZON,
            "success": "an episode succeeds if info['success'] is 1 at any step", "metaworld": _version()}
    desc = (f"Meta-World v3 ({source}, seed {seed}): 39-dim observations, 4-dim actions, horizon {HORIZON}, "
            f"a goal drawn per episode from each task's {meta['goals_per_task']}; reward function {REWARD_FUNCTION_VERSION}; "
            "success = info['success'] at any step")
    return TaskSuite(name, tasks, description=desc, ppo_preset=ppo, params=[{"task": n} for n in names],
                     success_key=SUCCESS_KEY, profile=profile, run_preset=run, metadata=meta)


def _benchmark_suite(benchmark: str, n: int | None, seed: int, profile: str) -> TaskSuite:
    full = MT10_NAMES if benchmark == "MT10" else MT50_NAMES
    name = f"metaworld-{benchmark.lower()}"
    k = len(full) if n is None else n
    if not 1 <= k <= len(full):
        raise UserError(f"--tasks {k}: {name} has {len(full)} tasks (choose 1 to {len(full)})")
    if profile not in PROFILES:  # before the (slow) goal computation
        profile_settings(PROFILES, profile, k, name)
    names = full[:k]
    return _suite(name, names, benchmark_goals(benchmark, k, seed), f"metaworld.{benchmark}", seed, profile)


def mt10(n: int | None = None, seed: int = 0, profile: str = "quick") -> TaskSuite:
    return _benchmark_suite("MT10", n, seed, profile)


def mt50(n: int | None = None, seed: int = 0, profile: str = "quick") -> TaskSuite:
    return _benchmark_suite("MT50", n, seed, profile)


def custom(spec: str, seed: int = 0, profile: str = "quick") -> TaskSuite:
    """``metaworld:reach-v3,push-v3``: the listed tasks, goals of ``metaworld.MT1(name, seed)``."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise UserError(f"--suite metaworld:{spec}: list Meta-World tasks after 'metaworld:', e.g. metaworld:reach-v3,push-v3")
    check_names(names, f"--suite metaworld:{spec}")
    if profile not in PROFILES:
        profile_settings(PROFILES, profile, len(names), "metaworld")
    goals = {n: single_task_goals(n, seed) for n in names}
    return _suite("metaworld:" + ",".join(names), names, goals, "metaworld.MT1 per task", seed, profile)


def _version() -> str:
    from importlib.metadata import version

    return version("metaworld")
