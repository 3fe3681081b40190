"""Task and TaskSuite: n environments that share one observation and one action space.

A :class:`Task` is a gymnasium env id, constructor kwargs, attribute overrides applied to
``env.unwrapped`` (derived quantities such as CartPole's ``total_mass`` recomputed), and
optional named wrappers.  A :class:`TaskSuite` builds every task once and refuses, with one
line naming the task and both spaces, a suite whose tasks do not share spaces.

Every environment gets a step cap: ``Task.max_episode_steps`` when set, else the env's own
(its registration's ``max_episode_steps``), else :data:`DEFAULT_MAX_EPISODE_STEPS`; reaching it
ends the episode as a time-limit truncation (gymnasium's ``TimeLimit``), so an environment that
never ends cannot hang training, collection or evaluation.  gymnasium's passive environment
checker is off (``disable_env_checker=True`` unless the task's kwargs say otherwise): it only
warns, in several lines, about what ``rl.rollout.TaskEnv`` checks and reports in one line
naming the task and the call.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import gymnasium as gym
import numpy as np
from pydantic import Field, field_validator

from ..config import Strict
from ..errors import UserError
from .mo_env import FloatObservation, check_weights, import_mo, scalarize

#: The step cap of an environment that has none of its own (no ``max_episode_steps`` in its
#: registration or its task): an episode that reaches it is truncated, as by a time limit.
DEFAULT_MAX_EPISODE_STEPS = 10_000


# Derived attributes to recompute after overrides, keyed by the unwrapped env's class name.
def _cartpole_derived(env: Any) -> None:
    env.total_mass = env.masspole + env.masscart
    env.polemass_length = env.masspole * env.length


DERIVED: dict[str, Callable[[Any], None]] = {"CartPoleEnv": _cartpole_derived}

def _float_observation(env: gym.Env) -> gym.Env:
    return FloatObservation(env)


WRAPPERS: dict[str, Callable[[gym.Env], gym.Env]] = {
    "flatten_observation": gym.wrappers.FlattenObservation,
    "float_observation": _float_observation,  # float32, a bounded Box rescaled to [-1, 1] (integer grid observations)
    "clip_action": gym.wrappers.ClipAction,
    "rescale_action": lambda env: gym.wrappers.RescaleAction(env, -1.0, 1.0),
}


class Task(Strict):
    """One task: ``gym.make(env_id, **kwargs)``, then ``overrides`` set on ``env.unwrapped``."""

    name: str = Field(..., min_length=1, description="unique task name")
    env_id: str = Field(..., min_length=1, description="gymnasium environment id")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments to gymnasium.make")
    overrides: dict[str, float | int | bool] = Field(default_factory=dict, description="attributes set on env.unwrapped after construction")
    wrappers: list[str] = Field(default_factory=list, description=f"named wrappers applied in order: {', '.join(WRAPPERS)}")
    max_episode_steps: int | None = Field(None, ge=1, description="episode time limit (default: the env's own)")
    weights: list[float] | None = Field(None, description="preference over a multi-objective env's objectives: reward w·r "
                                        "(MO-Gymnasium, the mo extra; tasks/mo.py)")

    @field_validator("weights")
    @classmethod
    def _preference(cls, v: list[float] | None) -> list[float] | None:
        return None if v is None else check_weights(v)

    @field_validator("wrappers")
    @classmethod
    def _known_wrappers(cls, v: list[str]) -> list[str]:
        for w in v:
            if w not in WRAPPERS:
                raise ValueError(f"unknown wrapper {w!r}; allowed: {', '.join(WRAPPERS)}")
        return v

    def make(self, render_mode: str | None = None) -> gym.Env:
        kwargs = dict(self.kwargs)
        if self.max_episode_steps is not None:
            kwargs["max_episode_steps"] = self.max_episode_steps
        if render_mode is not None:
            kwargs["render_mode"] = render_mode
        kwargs.setdefault("disable_env_checker", True)  # TaskEnv checks the same things, in one line
        if self.weights is not None:
            import_mo(f"task {self.name!r} (preference weights)")  # registers the MO-Gymnasium environments
        try:
            env = gym.make(self.env_id, **kwargs)
        except gym.error.Error as exc:
            raise UserError(f"task {self.name!r}: cannot make env {self.env_id!r}: {exc}") from None
        except TypeError as exc:
            raise UserError(f"task {self.name!r}: bad kwargs for {self.env_id!r}: {exc}") from None
        except SystemExit as exc:
            raise UserError(f"task {self.name!r}: {self.env_id!r} called sys.exit({exc.code!r}) in its constructor; "
                            "an environment must raise an exception, not exit the process") from None
        except Exception as exc:  # envs raise anything from their constructors
            raise UserError(f"task {self.name!r}: {self.env_id!r} raised in its constructor: {type(exc).__name__}: {exc}") from None
        if getattr(env.spec, "max_episode_steps", None) is None:  # no time limit of its own: the default cap
            env = gym.wrappers.TimeLimit(env, DEFAULT_MAX_EPISODE_STEPS)
        self._apply_overrides(env.unwrapped)
        if self.weights is not None:
            try:
                env = scalarize(env, self.weights, self.name, self.env_id)
            except UserError:
                close_quietly(env)
                raise
        for w in self.wrappers:
            try:
                env = WRAPPERS[w](env)
            except Exception as exc:
                close_quietly(env)
                raise UserError(f"task {self.name!r}: wrapper {w!r} does not apply to {self.env_id!r}: "
                                f"{type(exc).__name__}: {exc}") from None
        return env

    def _apply_overrides(self, raw: Any) -> None:
        for key, value in self.overrides.items():
            if key.startswith("_") or not hasattr(raw, key):
                raise UserError(f"task {self.name!r}: {self.env_id!r} has no attribute {key!r} to override")
            old = getattr(raw, key)
            if isinstance(old, bool) != isinstance(value, bool) or not isinstance(old, (int, float, np.number)):
                raise UserError(f"task {self.name!r}: override {key!r} must be {type(old).__name__} like the env's own value, got {type(value).__name__}")
            if isinstance(value, float) and not math.isfinite(value):
                raise UserError(f"task {self.name!r}: override {key!r} must be finite, got {value}")
            if isinstance(old, (int, np.integer)) and not isinstance(old, bool) and isinstance(value, float) and not value.is_integer():
                raise UserError(f"task {self.name!r}: override {key!r} must be an integer like the env's own value, got {value}")
            try:
                setattr(raw, key, type(old)(value) if isinstance(old, (int, float)) and not isinstance(old, bool) else value)
            except Exception as exc:  # a read-only property, a setter that validates
                raise UserError(f"task {self.name!r}: cannot set {key!r} on {self.env_id!r}: {type(exc).__name__}: {exc}") from None
        fix = DERIVED.get(type(raw).__name__)
        if fix is not None and self.overrides:
            fix(raw)


def truth_nmi(true_labels, labels) -> float:
    """NMI of ``labels`` against a known partition's labels (``TaskSuite.true_labels``) over the
    tasks it covers: label -1, a near-tie left out of it, does not count."""
    from sklearn.metrics import normalized_mutual_info_score

    keep = [i for i, t in enumerate(true_labels) if t >= 0]
    return float(normalized_mutual_info_score([true_labels[i] for i in keep], [int(labels[i]) for i in keep]))


def close_quietly(env: gym.Env) -> None:
    """``env.close()``, ignoring whatever it raises (``sys.exit`` included): a finished result
    must not turn into an error because an environment fails to clean up after itself."""
    try:
        env.close()
    except (Exception, SystemExit):
        pass


class TaskSuite:
    """n tasks with shared spaces, an optional known partition and PPO presets.

    ``success_key``: the info key whose truthy value at any step of an episode marks the
    episode a success (Meta-World: ``"success"``); ``rl.evaluate`` then reports success rates.
    ``profile`` / ``run_preset``: the budget profile a built-in suite was made with and its
    ``{"estimate": {...}, "group": {...}}`` defaults for ``run``; ``metadata``: facts about
    the suite (versions, benchmark) kept with it.  Each is left out of :meth:`to_dict` when
    unset, so suites without them serialize (and hash) as before.
    """

    def __init__(self, name: str, tasks: list[Task], true_partition: list[list[str]] | None = None,
                 description: str = "", ppo_preset: dict | None = None, params: list[dict] | None = None,
                 success_key: str | None = None, profile: str | None = None, run_preset: dict | None = None,
                 metadata: dict | None = None, truth_excluded: list[str] | None = None):
        if not tasks:
            raise UserError(f"suite {name!r}: has no tasks")
        names = [t.name for t in tasks]
        dup = sorted({x for x in names if names.count(x) > 1})
        if dup:
            raise UserError(f"suite {name!r}: task names must be unique, repeated: {', '.join(dup)}")
        excluded = list(truth_excluded or [])
        if true_partition is not None:
            flat = [x for g in true_partition for x in g]
            if sorted(flat + excluded) != sorted(names):
                raise UserError(f"suite {name!r}: true_partition must list every task exactly once"
                                + (" (besides the near-ties left out of it)" if excluded else ""))
        self.name = name
        self.tasks = tasks
        self.true_partition = true_partition
        self.description = description
        self.ppo_preset = dict(ppo_preset or {})
        self.params = params or []
        self.success_key = success_key
        self.profile = profile
        self.run_preset = dict(run_preset or {})
        self.metadata = dict(metadata or {})
        self.truth_excluded = excluded
        self.observation_space, self.action_space = self._check_spaces()

    @property
    def n(self) -> int:
        return len(self.tasks)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def true_labels(self) -> list[int] | None:
        """Each task's group in ``true_partition``, -1 for a task left out of it (a near-tie of
        a preference family), or None without a known partition."""
        if self.true_partition is None:
            return None
        where = {name: g for g, grp in enumerate(self.true_partition) for name in grp}
        return [where.get(n, -1) for n in self.names]

    def nmi_vs_truth(self, labels) -> float | None:
        """NMI of ``labels`` (one per task) against ``true_partition`` over the tasks it covers,
        or None without one."""
        truth = self.true_labels()
        return None if truth is None else truth_nmi(truth, labels)

    def _check_spaces(self) -> tuple[gym.Space, gym.Space]:
        first = None
        for task in self.tasks:
            env = task.make()
            try:
                spaces = (env.observation_space, env.action_space)
            finally:
                close_quietly(env)  # a failing close() says nothing about the spaces
            if first is None:
                first = (task, spaces)
                obs = spaces[0]
                if not (isinstance(obs, gym.spaces.Box) and len(obs.shape) == 1):
                    raise UserError(f"task {task.name!r}: observation space {obs} is not a flat Box; add wrappers = [\"flatten_observation\"]")
                act = spaces[1]
                if not (isinstance(act, gym.spaces.Discrete) or (isinstance(act, gym.spaces.Box) and len(act.shape) == 1)):
                    raise UserError(f"task {task.name!r}: action space {act} is not supported; allowed: Discrete or a 1-D Box")
                if (isinstance(act, gym.spaces.Discrete) and act.n < 2) or (isinstance(act, gym.spaces.Box) and act.shape[0] < 1):
                    raise UserError(f"task {task.name!r}: action space {act} leaves no choice of action, so there is no "
                                    "policy to learn; allowed: Discrete(n) with n >= 2 or a 1-D Box with at least one dimension")
                continue
            for kind, a, b in (("observation", first[1][0], spaces[0]), ("action", first[1][1], spaces[1])):
                if a != b:
                    raise UserError(f"task {task.name!r} has {kind} space {b} but task {first[0].name!r} has {a}; all tasks in a suite must share spaces")
        return first[1]

    def to_dict(self) -> dict:
        d = {
            "name": self.name,
            "tasks": [_task_dict(t) for t in self.tasks],
            "true_partition": self.true_partition,
            "description": self.description,
            "ppo_preset": self.ppo_preset,
        }
        optional = {"success_key": self.success_key, "profile": self.profile, "run_preset": self.run_preset,
                    "metadata": self.metadata, "truth_excluded": self.truth_excluded}
        d.update({k: v for k, v in optional.items() if v})
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TaskSuite":
        return cls(d["name"], [Task.model_validate(t) for t in d["tasks"]], d.get("true_partition"), d.get("description", ""), d.get("ppo_preset"),
                   success_key=d.get("success_key"), profile=d.get("profile"), run_preset=d.get("run_preset"),
                   metadata=d.get("metadata"), truth_excluded=d.get("truth_excluded"))


def _task_dict(task: Task) -> dict:
    """A task's fields; ``weights`` only when set, so suites without preferences serialize (and
    hash) as before."""
    d = task.model_dump()
    if d.get("weights") is None:
        d.pop("weights", None)
    return d
