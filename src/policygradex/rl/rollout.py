"""Multi-task rollouts over one gymnasium vector env that covers every task.

Environment e runs task ``task_ids[e]``; the policy sees the observation with the task's
one-hot id appended (:func:`policy_input`).  The vector env uses same-step autoreset, so the
final observation of an episode is available to bootstrap a truncated episode's value.
The environments step in this process (``SyncVectorEnv``), or each in its own subprocess
(``AsyncVectorEnv``) with ``asynchronous=True`` or ``POLICYGRADEX_ASYNC_ENVS=1``: worth it on
many cores with slow environments (highway-env, Meta-World); the results are the same.
Rollouts are collected on the CPU: a model that lives on another device acts through a CPU
copy of its weights (refreshed at every ``collect``), and the rollout tensors stay on the CPU.
Every environment is wrapped in :class:`TaskEnv`: an exception (or ``sys.exit``) in ``reset``
or ``step``, a result in the old gym API, an observation of the wrong shape, a reward that is
not a number and a NaN/inf observation or reward are user errors naming the task and the
call; an exception in ``close`` is ignored (the results are complete by then); and the wrapper
records how its current episode started (seed, or the state of the env's RNG) and the actions
taken since, so :meth:`MultiTaskEnv.state` / :meth:`MultiTaskEnv.restore` can rebuild the
environments' exact state in a new process by replaying that episode (exact resume of
training, ``rl.ppo.train``).  Every episode ends: ``Task.make`` gives each environment a step
cap (``tasks.base.DEFAULT_MAX_EPISODE_STEPS`` unless it has its own), reached as a truncation.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Callable

import gymnasium as gym
import numpy as np
import torch

from ..errors import UserError
from ..tasks import TaskSuite
from .finite import Divergence
from .gae import gae
from .networks import ActorCritic, env_action


def policy_input(obs: np.ndarray | torch.Tensor, task_ids: np.ndarray | torch.Tensor, n_tasks: int) -> torch.Tensor:
    obs_t = torch.as_tensor(np.asarray(obs), dtype=torch.float32)
    onehot = torch.nn.functional.one_hot(torch.as_tensor(np.asarray(task_ids), dtype=torch.long), n_tasks).float()
    return torch.cat([obs_t, onehot], dim=-1)


class MultiTaskEnv:
    """``envs_per_task`` copies of every task (or of the tasks listed in ``tasks``) in one
    SyncVectorEnv.  Task ids and the one-hot width always refer to the whole suite, so a
    policy trained on all tasks can be fine-tuned or evaluated on a subset.  ``asynchronous``:
    step the environments in subprocesses (default: ``POLICYGRADEX_ASYNC_ENVS=1``)."""

    def __init__(self, suite: TaskSuite, envs_per_task: int, seed: int, tasks: list[int] | None = None,
                 asynchronous: bool | None = None):
        self.suite = suite
        self.n_tasks = suite.n
        chosen = list(range(suite.n)) if tasks is None else [int(i) for i in tasks]
        self.task_ids = np.repeat(np.array(chosen, dtype=np.int64), envs_per_task)
        fns = [functools.partial(_make_env, suite.tasks[i]) for i in chosen for _ in range(envs_per_task)]
        if asynchronous is None:
            asynchronous = os.environ.get("POLICYGRADEX_ASYNC_ENVS", "0") not in ("", "0")
        vector = gym.vector.AsyncVectorEnv if asynchronous and len(fns) > 1 else gym.vector.SyncVectorEnv
        self.envs = vector(fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
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
        except UserError:
            raise
        except (Exception, SystemExit) as exc:
            raise UserError(f"an environment of suite {self.suite.name!r} raised in reset: {type(exc).__name__}: {exc}") from None
        self._check(obs, "observation", "reset")
        self.obs = obs
        return obs

    def step(self, actions: np.ndarray):
        try:
            obs, rew, term, trunc, info = self.envs.step(actions)
        except UserError:
            raise
        except (Exception, SystemExit) as exc:
            raise UserError(f"an environment of suite {self.suite.name!r} raised in step: {type(exc).__name__}: {exc}") from None
        self._check(obs, "observation", "step")
        self._check(rew, "reward", "step")
        self.obs = obs
        return obs, rew, term, trunc, info

    def state(self) -> dict:
        """Everything needed to put freshly made environments into their current state: per
        environment, how its episode began and the actions since (``TaskEnv.record``), and the
        current observations (checked after a replay)."""
        return {"episodes": [_packed(rec) for rec in self.envs.get_attr("pgx_record")],
                "obs": None if self.obs is None else np.array(self.obs)}

    def restore(self, state: dict) -> bool:
        """Rebuild the state saved by :meth:`state` by replaying every environment's current
        episode (the same seed or RNG state, the same actions).  Returns False when the replayed
        observations differ from the saved ones (an environment that is not deterministic given
        its seed and actions); the environments are then in the replayed state."""
        self.reset()  # the vector env must have been reset once; the replay then resets each env again
        try:
            self.envs.set_attr("pgx_pending", list(state["episodes"]))
            obs = self.envs.call("pgx_replay")
        except UserError:
            raise
        except (Exception, SystemExit) as exc:
            raise UserError(f"an environment of suite {self.suite.name!r} raised while resuming: {type(exc).__name__}: {exc}") from None
        obs = np.stack([np.asarray(o) for o in obs]).astype(self.obs.dtype, copy=False)
        self.obs = obs
        saved = state.get("obs")
        return saved is None or (np.shape(saved) == obs.shape and np.array_equal(np.asarray(saved), obs))

    def _check(self, arr: np.ndarray, what: str, call: str) -> None:
        arr = np.asarray(arr, dtype=np.float64)
        if not np.isfinite(arr).all():
            bad = np.where(~np.isfinite(arr.reshape(self.num_envs, -1)).all(axis=1))[0][0]
            task = self.suite.tasks[self.task_ids[bad]].name
            raise UserError(f"task {task!r}: {call} returned a non-finite {what} (NaN or inf); check the task's parameters")

    def close(self) -> None:
        """Close every environment; what an environment's own ``close`` raises is ignored
        (:meth:`TaskEnv.close`)."""
        with contextlib.suppress(Exception):
            self.envs.close()


def _packed(rec: dict) -> dict:
    """A ``TaskEnv.pgx_record`` as it goes into a checkpoint: the actions as one array (a long
    episode's thousands of actions pickle as one object, and every array has numpy's canonical
    dtype object, so the pickled bytes do not depend on where the actions came from)."""
    acts = rec["actions"]
    return {**rec, "actions": np.stack([np.asarray(a) for a in acts]) if len(acts) else []}


def _make_env(task) -> gym.Env:
    """``TaskEnv(task.make())`` (a module-level function, so that subprocess workers can unpickle it)."""
    return TaskEnv(task.make(), task.name)


OLD_API = ("gymnasium needs reset(seed=None, options=None) -> (observation, info) and step(action) -> "
           "(observation, reward, terminated, truncated, info); the environment follows the old gym API")
log = logging.getLogger(__name__)


class TaskEnv(gym.Wrapper):
    """One task's environment, guarded and replayable.

    *Guarded*: an exception or ``sys.exit`` in ``reset``/``step``, a result in the old gym API
    (``reset`` without ``seed``, four values from ``step``), an observation whose shape is not
    the observation space's, a reward that is not one real number (a string, an array, None) and
    a non-finite reward raise a :class:`UserError` naming the task and the call (non-finite
    observations: ``MultiTaskEnv._check``).  An exception in ``close`` is logged (``logging``,
    level INFO) and ignored: by then the results are complete.
    *Replayable*: ``pgx_record`` is how the current episode began (the reset seed, or the env's
    RNG state when the reset was unseeded, as in an autoreset) and the actions taken since;
    ``pgx_replay`` redoes a recorded episode in a fresh env."""

    def __init__(self, env: gym.Env, task_name: str):
        super().__init__(env)
        self.task_name = task_name
        self.pgx_record: dict = {"seed": None, "rng": None, "options": None, "actions": []}
        self.pgx_pending: dict | None = None

    def _fail(self, call: str, what: str) -> UserError:
        return UserError(f"task {self.task_name!r}: {call} {what}")

    def _check_obs(self, obs, call: str) -> None:
        shape = getattr(self.observation_space, "shape", None)
        arr = np.asarray(obs)
        if shape is not None and arr.shape != tuple(shape):
            raise self._fail(call, f"returned an observation of shape {arr.shape}, but the observation space "
                                   f"{self.observation_space} has shape {tuple(shape)}")
        if arr.dtype.kind not in "fiub":
            raise self._fail(call, f"returned a non-numeric observation (dtype {arr.dtype})")
        # NaN/inf observations are caught for the whole batch at once (MultiTaskEnv._check)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        rng = None
        if seed is None:  # an unseeded reset (autoreset) draws from the env's RNG: remember its state
            with contextlib.suppress(Exception):
                rng = copy.deepcopy(self.env.unwrapped.np_random.bit_generator.state)
        obs, info = self._call("reset", lambda: self.env.reset(seed=seed, options=options), "(observation, info)")
        self._check_obs(obs, "reset")
        self.pgx_record = {"seed": seed, "rng": rng, "options": options, "actions": []}
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self._call("step", lambda: self.env.step(action),
                                                              "(observation, reward, terminated, truncated, info)")
        self._check_obs(obs, "step")
        r = _real(reward)
        if r is None:
            raise self._fail("step", f"returned a reward that is not a real number: {_show(reward)}; a reward must be "
                                     "one int or float")
        if not math.isfinite(r):
            raise self._fail("step", "returned a non-finite reward (NaN or inf); check the task's parameters")
        for what, flag in (("terminated", terminated), ("truncated", truncated)):
            if _real(flag) is None:
                raise self._fail("step", f"returned {what} = {_show(flag)}; it must be a bool")
        self.pgx_record["actions"].append(np.array(action, copy=True))
        return obs, r, terminated, truncated, info

    def _call(self, call: str, fn, returns: str) -> tuple:
        """``fn()`` (the wrapped env's ``reset`` or ``step``), whose failures, ``sys.exit`` and
        results in the old gym API become one line naming the task and the call; ``returns`` is
        the tuple gymnasium requires, e.g. ``"(observation, info)"``."""
        size = returns.count(",") + 1
        try:
            result = fn()
        except UserError:
            raise
        except SystemExit as exc:
            raise self._exit(call, exc) from None
        except Exception as exc:
            text = str(exc)
            if isinstance(exc, TypeError) and "unexpected keyword argument" in text and ("'seed'" in text or "'options'" in text):
                raise self._fail(call, f"does not accept seed and options ({exc}); {OLD_API}") from None
            if isinstance(exc, ValueError) and f"values to unpack (expected {size}" in text:  # gymnasium's TimeLimit unpacks the result
                raise self._fail(call, f"did not return {size} values ({exc}); {OLD_API}") from None
            raise self._fail(call, f"raised {type(exc).__name__}: {exc}") from None
        if not (isinstance(result, tuple) and len(result) == size):
            got = f"{len(result)} values" if isinstance(result, tuple) else f"a value of type {type(result).__name__}"
            raise self._fail(call, f"returned {got} instead of {returns}; {OLD_API}")
        return result

    def _exit(self, call: str, exc: SystemExit) -> UserError:
        return self._fail(call, f"called sys.exit({exc.code!r}); an environment must raise an exception or end "
                                "the episode, not exit the process")

    def close(self):
        try:
            super().close()
        except (Exception, SystemExit) as exc:  # the results are complete: a failing clean-up does not undo them
            log.info("task %r: close raised %s: %s (ignored)", self.task_name, type(exc).__name__, exc)

    def pgx_replay(self):
        """Redo the episode in ``pgx_pending`` (a ``pgx_record``); returns the observation reached."""
        rec, self.pgx_pending = self.pgx_pending, None
        if rec["seed"] is None and rec["rng"] is not None:
            self.env.unwrapped.np_random = np.random.Generator(getattr(np.random, rec["rng"]["bit_generator"])())
            self.env.unwrapped.np_random.bit_generator.state = copy.deepcopy(rec["rng"])
        obs, _ = self.reset(seed=rec["seed"], options=rec.get("options"))
        for a in rec["actions"]:
            obs = self.step(a)[0]
        return obs


def _real(x) -> float | None:
    """``x`` as a float when it is one real number (bool, int, float, a numpy number or a
    one-element numeric array); None for anything else (a string, None, a longer array)."""
    if isinstance(x, (bool, int, float, np.bool_, np.integer, np.floating)):
        return float(x)
    if isinstance(x, np.ndarray) and x.size == 1 and x.dtype.kind in "biuf":
        return float(x.reshape(-1)[0])
    return None


def _show(x) -> str:
    """``x`` for a one-line message: its type, and its repr cut to 40 characters."""
    text = " ".join(repr(x).split())
    return f"{type(x).__name__} {text[:40] + '...' if len(text) > 40 else text}"


def _cpu_model(model: ActorCritic, mirror: ActorCritic | None) -> ActorCritic:
    """``model`` itself on the CPU; otherwise a CPU copy holding its current weights."""
    if next(model.parameters()).device.type == "cpu":
        return model
    if mirror is None:
        mirror = copy.deepcopy(model).cpu()
    mirror.load_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
    return mirror.eval()


def step_vectors(info: dict, done: np.ndarray, key: str = "vector_reward") -> np.ndarray | None:
    """This step's ``info[key]`` vectors of every env of a vector env, (envs, objectives), the
    final step's for envs whose episode just ended (``final_info``, as in :func:`step_flags`);
    None when no env reports one."""
    final = info.get("final_info", {})
    if key not in info and key not in final:
        return None
    src = info[key] if key in info else final[key]
    out = np.zeros((len(done), np.asarray(src).shape[-1]))
    if key in info:
        has = np.asarray(info.get("_" + key, np.ones(len(done), dtype=bool)), dtype=bool)
        out[has] = np.asarray(info[key], dtype=np.float64)[has]
    if key in final:
        has = np.asarray(final.get("_" + key, np.ones(len(done), dtype=bool)), dtype=bool) & done
        out[has] = np.asarray(final[key], dtype=np.float64)[has]
    return out


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
    episode_vector_returns: list[list[list[float]]] = field(default_factory=list)  # per task: preference tasks' vector returns

    def advantages(self, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
        return gae(self.rewards, self.values, self.next_values, self.terminated, self.dones, gamma, lam)


class RolloutCollector:
    """Steps a :class:`MultiTaskEnv` with a policy and keeps running episode returns."""

    def __init__(self, env: MultiTaskEnv, generator: torch.Generator):
        self.env = env
        self.gen = generator
        self.ep_ret = np.zeros(env.num_envs)
        self.ep_vec: np.ndarray | None = None  # running vector returns of preference tasks (info["vector_reward"])
        self._mirror: ActorCritic | None = None  # CPU copy of a model that lives on another device
        if env.obs is None:
            env.reset()

    def _act(self, model: ActorCritic, x: torch.Tensor, label: str, advice: str):
        try:
            return model.act(x, generator=self.gen)
        except (ValueError, RuntimeError) as exc:  # torch.distributions / multinomial refusing NaN or inf outputs
            if not any(s in str(exc) for s in ("invalid values", "probability tensor contains")):
                raise
            obs = np.abs(np.asarray(self.env.obs, dtype=np.float64))
            raise Divergence(f"{label}: the policy's outputs are NaN or inf; {advice}, or scale the observations down if a "
                             f"task's are very large (the largest |observation| is now {float(obs.max()) if obs.size else 0.0:.3g})"
                             ) from None

    def collect(self, model: ActorCritic, num_steps: int, on_step: Callable[[int], None] | None = None,
                label: str = "collecting a rollout", advice: str = "lower the learning rate") -> Rollout:
        """Step every env ``num_steps`` times; ``on_step(num_envs)`` after each vector step.
        The rollout is on the CPU whatever the model's device.  A policy whose outputs are NaN or
        inf (torch's distributions refuse them) is a :class:`~policygradex.rl.finite.Divergence`
        named by ``label`` with ``advice``."""
        acting = _cpu_model(model, self._mirror)
        if acting is not model:
            self._mirror = model = acting
        env, n, E = self.env, self.env.n_tasks, self.env.num_envs
        space = env.envs.single_action_space
        xs, acts, logps, vals, rews, nvals, terms, dones = [], [], [], [], [], [], [], []
        finished: list[list[float]] = [[] for _ in range(n)]
        finished_vec: list[list[list[float]]] = [[] for _ in range(n)]
        for _ in range(num_steps):
            x = policy_input(env.obs, env.task_ids, n)
            a, logp, v = self._act(model, x, label, advice)
            obs, r, term, trunc, info = env.step(env_action(model.kind, a, space))
            done = np.logical_or(term, trunc)
            nv = torch.zeros(E)
            if done.any():
                idx = np.where(done)[0]
                final = np.stack([info["final_obs"][i] for i in idx])
                with torch.no_grad():
                    nv[idx] = model.value(policy_input(final, env.task_ids[idx], n))
            self.ep_ret += r
            vec = step_vectors(info, done)
            if vec is not None:
                if self.ep_vec is None:
                    self.ep_vec = np.zeros((E, vec.shape[1]))
                self.ep_vec += vec
            for e in np.where(done)[0]:
                finished[env.task_ids[e]].append(float(self.ep_ret[e]))
                self.ep_ret[e] = 0.0
                if self.ep_vec is not None:
                    finished_vec[env.task_ids[e]].append(self.ep_vec[e].tolist())
                    self.ep_vec[e] = 0.0
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
                       next_values, torch.stack(terms), done_t, torch.as_tensor(env.task_ids), finished, finished_vec)
