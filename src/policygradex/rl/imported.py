"""A policy trained elsewhere as theta* (``policygradex run --policy SPEC``).

The estimate needs a differentiable ``log pi(a | s, task)``, rollouts with advantages, and the
tasks; it does not need to train its own meta-policy.  This module turns a policy given by a spec
into a model that the rest of the pipeline uses as it uses its own (``actor.log_prob``,
``actor.distribution``, ``act``, ``value``), and registers the learner ``imported`` whose "training"
is the import: it loads the policy, checks it, and writes it as the run's only checkpoint
(``train/checkpoints/step_000000000.pt``, ``algo = "imported"``), so that collection, features,
subsets, the surrogate and grouping run unchanged.

Specs
-----
``module:PKG.MOD:FACTORY[:STATE_DICT]``
    ``PKG.MOD`` is imported (from ``sys.path``: the working directory, ``PYTHONPATH``) and
    ``FACTORY(observation_space, action_space, n_tasks)`` is called; it returns a
    ``torch.nn.Module`` whose ``forward(obs, task)`` takes an observation batch ``[B, obs_dim]``
    (float32) and the task indices ``[B]`` (int64, in the policy's task order) and returns the
    action distribution, or ``(distribution, value)`` with ``value`` of shape ``[B]``.  Allowed
    distributions: ``Categorical`` (Discrete actions), ``Normal`` or ``Independent(Normal)`` (1-D
    Box actions).  ``STATE_DICT`` (a file written by ``torch.save(module.state_dict(), ...)``) is
    loaded into the module.  The forward pass must run under ``torch.func.vmap`` (per-sample
    gradients): no ``.item()``, no Python branches on tensor values, no ``F.one_hot`` (index an
    identity matrix instead).  A module that breaks this is refused at import with the error.
``sb3:PATH.zip``
    A Stable-Baselines3 PPO or A2C model (the ``sb3`` extra), loaded with SB3's own loader; its
    value function supplies the advantages.  VecNormalize statistics saved next to it
    (``vecnormalize.pkl`` or ``vec_normalize.pkl``, or ``sb3:PATH.zip:STATS.pkl``) are applied to
    the observations; a model that was trained with VecNormalize (its archive keeps the raw last
    observation) and is given without them is refused.  How the policy saw the task is declared
    with ``--policy-task-input``: ``onehot`` (the task's one-hot appended to the observation, in
    the policy's task order: SB3's usual multi-task wrapper and this project's convention) or
    ``none`` (a task-blind policy) or ``key:NAME`` (a dict observation, SB3's ``MultiInputPolicy``:
    the task's index or one-hot under ``NAME``).

``--policy-tasks NAME,NAME,...`` gives the policy's task order when it is not the suite's.

Advantages
----------
With a value function (SB3, or a module that returns one): GAE with ``gamma`` and ``gae_lambda``,
as for the project's own PPO.  Without one: Monte-Carlo returns (discounted by ``gamma``; an
episode cut by the collection's horizon is not bootstrapped) minus a fitted baseline: per task, a
ridge regression of the returns on the observation and its squares (scikit-learn ``Ridge``,
standardized inputs) fitted on the training rows.  ``groups.json`` and ``report.md`` say which.
"""

from __future__ import annotations

import hashlib
import importlib
import math
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from ..artifacts import write_json
from ..config import ImportedConfig, parse
from ..estimate.features import exact_grads
from ..errors import UserError
from ..tasks import TaskSuite
from .checkpoint_io import write_checkpoint
from . import ppo
from .collected import Collected
from .imported_env import OneHotTaskEnv
from .imported_sb3 import sb3_policy, sb3_stats_path

__all__ = ["ImportedConfig", "ImportedPolicy", "ImportedActor", "LEARNER", "OneHotTaskEnv", "parse_spec", "load_policy", "spec_sha256",
           "check_gradients", "imported_run_update"]

# ----------------------------------------------------------------------------- the spec


def parse_spec(spec: str) -> tuple[str, list[str]]:
    """``(kind, parts)``: ``("module", [module, factory, state?])`` or ``("sb3", [zip, stats?])``."""
    kind, _, rest = spec.partition(":")
    if kind == "module":
        parts = rest.split(":", 2)
        if len(parts) < 2 or not all(parts[:2]):
            raise UserError(f"--policy {spec}: a module spec is module:PKG.MOD:FACTORY[:STATE_DICT]")
        return kind, parts
    if kind == "sb3":
        if not rest:
            raise UserError(f"--policy {spec}: an sb3 spec is sb3:PATH.zip[:STATS.pkl]")
        path, _, stats = rest.partition(".zip:")
        if not stats and not rest.endswith(".zip"):
            raise UserError(f"--policy {spec}: an sb3 spec is sb3:PATH.zip[:STATS.pkl] (the model's .zip archive)")
        return kind, ([path + ".zip", stats] if stats else [rest])
    raise UserError(f"--policy {spec}: unknown kind {kind!r}; allowed: module:PKG.MOD:FACTORY[:STATE_DICT], sb3:PATH.zip")


def absolute_spec(spec: str) -> str:
    """The spec with its files' paths made absolute, so that the run reads the same files from any
    working directory (a worker, a later ``run`` of the same directory)."""
    kind, parts = parse_spec(spec)
    if kind == "module":
        return ":".join(["module", parts[0], parts[1]] + ([str(Path(parts[2]).resolve())] if len(parts) > 2 and parts[2] else []))
    return "sb3:" + ":".join(str(Path(p).resolve()) for p in parts if p)


def _files(spec: str) -> list[Path]:
    kind, parts = parse_spec(spec)
    if kind == "module":
        return [Path(parts[2])] if len(parts) > 2 and parts[2] else []
    files = [Path(parts[0])]
    stats = sb3_stats_path(parts)
    return files + ([stats] if stats is not None else [])


def spec_sha256(spec: str) -> str:
    """sha256 over the policy's files (the module's own source for a module spec without weights)."""
    h = hashlib.sha256()
    kind, parts = parse_spec(spec)
    files = _files(spec)
    if kind == "module":  # the module's code, the factory's name and the weights
        mod = _import_module(spec, parts[0])
        src = getattr(mod, "__file__", None)
        files = ([Path(src)] if src else []) + files
        h.update(parts[1].encode())
    for f in files:
        if not f.is_file():
            raise UserError(f"--policy {spec}: {f} does not exist")
        h.update(f.read_bytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- the model


def _kind_of(action_space: gym.Space) -> str:
    if isinstance(action_space, gym.spaces.Discrete):
        return "categorical"
    if isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
        return "gaussian"
    raise UserError(f"action space {action_space}: an imported policy needs Discrete or 1-D Box actions")


def _check_distribution(dist, kind: str, where: str) -> None:
    D = torch.distributions
    if kind == "categorical":
        ok = isinstance(dist, D.Categorical)
        allowed = "Categorical (Discrete actions)"
    else:
        base = dist.base_dist if isinstance(dist, D.Independent) else dist
        ok = isinstance(base, D.Normal)
        allowed = "Normal or Independent(Normal) (Box actions)"
    if not ok:
        raise UserError(f"{where} returns a {type(dist).__name__} distribution; allowed: {allowed}")


def _log_prob(dist, a: torch.Tensor, batch_dims: int) -> torch.Tensor:
    """``dist.log_prob(a)`` with a Normal's per-coordinate terms summed: one value per row."""
    lp = dist.log_prob(a)
    while lp.dim() > batch_dims:
        lp = lp.sum(-1)
    return lp


def _mode(dist, kind: str) -> torch.Tensor:
    return dist.probs.argmax(-1) if kind == "categorical" else dist.mean


class ImportedActor(nn.Module):
    """``pi(a | x)`` on the project's policy input ``x = observation ++ one-hot(suite task)``:
    the suite's task is mapped to the policy's task index and the policy is called on
    ``(observation, task)``."""

    def __init__(self, policy: nn.Module, obs_dim: int, n_tasks: int, kind: str, task_map: list[int]):
        super().__init__()
        self.policy = policy
        self.obs_dim, self.n_tasks, self.kind = int(obs_dim), int(n_tasks), kind
        self.register_buffer("task_map", torch.as_tensor(task_map, dtype=torch.long), persistent=False)

    def _call(self, x: torch.Tensor):
        obs = x[..., : self.obs_dim]
        task = self.task_map[x[..., self.obs_dim:].argmax(-1)]
        out = self.policy(obs, task)
        return out if isinstance(out, tuple) else (out, None)

    def distribution(self, x: torch.Tensor) -> torch.distributions.Distribution:
        return self._call(x)[0]

    def log_prob(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        if x.dim() == 1:  # one row (per-sample gradients call it row by row under vmap): the policy gets a batch of one
            return self.log_prob(x.unsqueeze(0), a.unsqueeze(0)).squeeze(0)
        return _log_prob(self.distribution(x), a.long() if self.kind == "categorical" else a, x.dim() - 1)

    def mode(self, x: torch.Tensor) -> torch.Tensor:
        return _mode(self.distribution(x), self.kind)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mode(x)


class ImportedPolicy(nn.Module):
    """The model of an imported policy: what the project's collection and estimate call."""

    algo = "imported"

    def __init__(self, policy: nn.Module, obs_dim: int, n_tasks: int, kind: str, task_map: list[int], has_value: bool):
        super().__init__()
        self.actor = ImportedActor(policy, obs_dim, n_tasks, kind, task_map)
        self.has_value = bool(has_value)

    @property
    def kind(self) -> str:
        return self.actor.kind

    def value(self, x: torch.Tensor) -> torch.Tensor:
        if not self.has_value:
            return torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)
        return self.actor._call(x)[1].reshape(x.shape[:-1]).to(x.dtype)

    @torch.no_grad()
    def act(self, x: torch.Tensor, deterministic: bool = False, generator: torch.Generator | None = None):
        """(action, log_prob, value), sampled with ``generator`` as the project's own models do."""
        dist, v = self.actor._call(x)
        if deterministic:
            a = _mode(dist, self.kind)
        elif self.kind == "categorical":
            a = torch.multinomial(dist.probs, 1, generator=generator).squeeze(-1)
        else:
            mean, std = dist.mean, dist.stddev
            a = mean + std * torch.randn(mean.shape, generator=generator)
        lp = _log_prob(dist, a, x.dim() - 1)
        value = v.reshape(x.shape[:-1]).to(x.dtype) if (self.has_value and v is not None) else torch.zeros(x.shape[:-1])
        return a, lp, value


# ----------------------------------------------------------------------------- loading


def _import_module(spec: str, name: str):
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # the working directory, as `python -m` has it
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        raise UserError(f"--policy {spec}: cannot import {name!r} ({exc}); put it on PYTHONPATH or in the working directory") from None
    except Exception as exc:  # the user's module failed while being imported
        raise UserError(f"--policy {spec}: importing {name!r} failed: {type(exc).__name__}: {exc}") from None


def _module_policy(spec: str, parts: list[str], suite: TaskSuite) -> nn.Module:
    mod = _import_module(spec, parts[0])
    factory = getattr(mod, parts[1], None)
    if not callable(factory):
        raise UserError(f"--policy {spec}: module {parts[0]!r} has no callable {parts[1]!r}")
    try:
        policy = factory(suite.observation_space, suite.action_space, suite.n)
    except Exception as exc:
        raise UserError(f"--policy {spec}: {parts[1]}(observation_space, action_space, n_tasks) failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(policy, nn.Module):
        raise UserError(f"--policy {spec}: {parts[1]} returned a {type(policy).__name__}, not a torch.nn.Module")
    if len(parts) > 2 and parts[2]:
        path = Path(parts[2])
        if not path.is_file():
            raise UserError(f"--policy {spec}: state dict {path} does not exist")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise UserError(f"--policy {spec}: {path} is not a torch state dict ({type(exc).__name__}: {exc})") from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise UserError(f"--policy {spec}: {path} holds a {type(state).__name__}, not a state dict")
        own = set(policy.state_dict())
        missing, unexpected = sorted(own - set(state)), sorted(set(state) - own)
        if missing or unexpected:
            nested = [k for k, v in state.items() if isinstance(v, dict)]
            raise UserError(f"--policy {spec}: {path} does not fit the module: missing keys {missing[:3]}, unexpected keys "
                            f"{unexpected[:3]}" + (f"; the weights may be under {nested[0]!r} (save module.state_dict() itself)" if nested else ""))
        try:
            policy.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as exc:
            lines = [l.strip() for l in str(exc).strip().splitlines() if l.strip()]
            raise UserError(f"--policy {spec}: {path} does not fit the module: {lines[-1] if lines else type(exc).__name__}") from None
    return policy


def _task_map(suite: TaskSuite, order: tuple[str, ...] | None, spec: str) -> list[int]:
    if order is None:
        return list(range(suite.n))
    if sorted(order) != sorted(suite.names):
        missing = sorted(set(suite.names) - set(order)) or sorted(set(order) - set(suite.names))
        raise UserError(f"--policy-tasks: {len(order)} names, the suite has {suite.n}; "
                        f"not in both: {', '.join(missing[:5])}; allowed: a permutation of {', '.join(suite.names)}")
    return [order.index(name) for name in suite.names]


def load_policy(suite: TaskSuite, cfg: ImportedConfig) -> ImportedPolicy:
    """The model of ``cfg.spec`` for ``suite`` (one-line :class:`UserError` for every bad spec)."""
    kind, parts = parse_spec(cfg.spec)
    obs_space, act_space = suite.observation_space, suite.action_space  # flat Box, Discrete or 1-D Box: checked by TaskSuite
    action_kind = _kind_of(act_space)
    obs_dim = int(obs_space.shape[0])
    policy = _module_policy(cfg.spec, parts, suite) if kind == "module" else sb3_policy(cfg.spec, parts, suite, cfg)
    if not any(p.requires_grad for p in policy.parameters()):
        raise UserError(f"--policy {cfg.spec}: the policy has no parameters that require gradients")
    frozen = [n for n, p in policy.named_parameters() if not p.requires_grad]
    if frozen:
        raise UserError(f"--policy {cfg.spec}: parameters {', '.join(frozen[:3])}{' ...' if len(frozen) > 3 else ''} do not require "
                        "gradients; the estimate differentiates every parameter: unfreeze them, or keep fixed tensors as buffers")
    policy = policy.float().cpu()
    policy.eval()
    tmap = _task_map(suite, cfg.task_order, cfg.spec)
    # one forward on a small batch: its outputs' types and shapes
    x = _probe_inputs(suite, 4, cfg.seed)
    try:
        with torch.no_grad():
            out = policy(x[:, :obs_dim], torch.as_tensor(tmap, dtype=torch.long)[x[:, obs_dim:].argmax(-1)])
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"--policy {cfg.spec}: forward(obs [4, {obs_dim}], task [4]) failed: {type(exc).__name__}: {exc}") from None
    dist, value = (out if isinstance(out, tuple) else (out, None))
    if not isinstance(dist, torch.distributions.Distribution):
        raise UserError(f"--policy {cfg.spec}: forward returned {type(dist).__name__}; allowed: a torch distribution, or (distribution, value)")
    _check_distribution(dist, action_kind, f"--policy {cfg.spec}")
    want = (x.shape[0], int(act_space.n)) if action_kind == "categorical" else (x.shape[0], int(act_space.shape[0]))
    got = tuple(dist.probs.shape) if action_kind == "categorical" else tuple(dist.mean.shape)
    if got != want:
        what = "probabilities" if action_kind == "categorical" else "mean"
        raise UserError(f"--policy {cfg.spec}: for 4 observations the distribution's {what} has shape {list(got)}; the action "
                        f"space {act_space} needs {list(want)}")
    if value is not None and (not isinstance(value, torch.Tensor) or value.numel() != x.shape[0]):
        raise UserError(f"--policy {cfg.spec}: the value must be a tensor of shape [B] (B = 4), got {getattr(value, 'shape', type(value).__name__)}")
    return ImportedPolicy(policy, obs_dim, suite.n, action_kind, tmap, value is not None)


def _probe_inputs(suite: TaskSuite, rows: int, seed: int) -> torch.Tensor:
    """Policy inputs for checks: reset observations of the suite's first tasks, with their one-hot."""
    xs = []
    for i in range(rows):
        t = i % suite.n
        env = suite.tasks[t].make()
        try:
            obs, _ = env.reset(seed=seed + i)
        finally:
            env.close()
        onehot = np.eye(suite.n, dtype=np.float32)[t]
        xs.append(np.concatenate([np.asarray(obs, dtype=np.float32).reshape(-1), onehot]))
    return torch.as_tensor(np.stack(xs))


def check_gradients(model: ImportedPolicy, suite: TaskSuite, spec: str, seed: int = 0, rows: int = 8) -> float:
    """Per-sample log-prob gradients as the estimate computes them (``torch.func`` under ``vmap``)
    against autograd on the original module, one row at a time; the largest relative difference.
    A policy whose forward does not run under vmap, or whose gradients differ, is refused."""
    x = _probe_inputs(suite, rows, seed)
    with torch.no_grad():
        a, _, _ = model.act(x, generator=torch.Generator().manual_seed(seed))
    try:
        g = exact_grads(model.actor, x, a)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UserError(f"--policy {spec}: per-sample gradients under torch.func.vmap failed ({type(exc).__name__}: {first}); "
                        "the forward pass must not call .item(), branch on tensor values or use F.one_hot") from None
    worst = 0.0
    params = list(model.actor.parameters())
    for i in range(rows):
        model.actor.zero_grad(set_to_none=True)
        lp = model.actor.log_prob(x[i : i + 1], a[i : i + 1]).sum()
        grads = torch.autograd.grad(lp, params, allow_unused=True)
        ref = torch.cat([(gr if gr is not None else torch.zeros_like(p)).reshape(-1) for gr, p in zip(grads, params)])
        worst = max(worst, float((g[i] - ref).norm() / (ref.norm() + 1e-12)))
    if not math.isfinite(worst) or worst > 1e-4:
        raise UserError(f"--policy {spec}: per-sample gradients under vmap differ from autograd's (relative error {worst:.2e}); "
                        "the forward pass must treat every row on its own (no batch statistics, no in-place state)")
    return worst


# ----------------------------------------------------------------------------- advantages


def _fitted_baseline(c: Collected, obs_dim: int, n_tasks: int) -> torch.Tensor:
    """Per task, a ridge regression of the Monte-Carlo returns on (obs, obs^2), fitted on the
    training rows; its prediction on every row."""
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    obs = c.x[:, :obs_dim].double().numpy()
    feats = np.concatenate([obs, obs**2], axis=1)
    y = c.returns.double().numpy()
    out = np.zeros_like(y)
    for t in range(n_tasks):
        rows = (c.task == t).numpy()
        train = rows & ~c.heldout.numpy()
        if train.sum() < 2:
            out[rows] = y[train].mean() if train.any() else 0.0
            continue
        reg = make_pipeline(StandardScaler(), Ridge(alpha=1.0)).fit(feats[train], y[train])
        out[rows] = reg.predict(feats[rows])
    return torch.as_tensor(out, dtype=c.returns.dtype)


def collect(model: ImportedPolicy, suite: TaskSuite, cfg: ImportedConfig, transitions_per_task: int, envs_per_task: int,
            heldout_frac: float, seed: int, on_step=None) -> Collected:
    """Roll out the imported policy as PPO's collection does; advantages from its value function
    (GAE) or, without one, Monte-Carlo returns minus a fitted baseline (module docstring)."""
    if model.has_value:
        return ppo.collect(model, suite, cfg, transitions_per_task, envs_per_task, heldout_frac, seed, on_step)
    mc = cfg.model_copy(update={"gae_lambda": 1.0})
    c = ppo.collect(model, suite, mc, transitions_per_task, envs_per_task, heldout_frac, seed, on_step)
    base = _fitted_baseline(c, model.actor.obs_dim, suite.n)
    c.adv = (c.returns - base).to(c.adv.dtype)
    return c


# ----------------------------------------------------------------------------- the learner


class ImportedLearner:
    """The learner ``imported``: its "training" imports the policy of ``ImportedConfig.spec``."""

    name = "imported"
    config_type = ImportedConfig
    title = "imported policy"

    def check_suite(self, suite: TaskSuite) -> None:
        _kind_of(suite.action_space)

    def progress_total(self, cfg: ImportedConfig, n_tasks: int) -> int:
        return 1

    def train(self, suite: TaskSuite, cfg: ImportedConfig, out_dir, tensorboard=None, on_progress=None):
        out_dir = Path(out_dir)
        sha = spec_sha256(cfg.spec)
        if cfg.sha256 and cfg.sha256 != sha:
            raise UserError(f"--policy {cfg.spec}: the policy's files changed since this run imported them "
                            f"(sha256 {cfg.sha256[:12]} then, {sha[:12]} now); use a new --out")
        model = load_policy(suite, cfg)
        err = check_gradients(model, suite, cfg.spec, cfg.seed)
        path = out_dir / "checkpoints" / "step_000000000.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        record = cfg.model_copy(update={"sha256": sha})
        write_checkpoint(path, model.state_dict(), None, record, suite, 0, 0, {n: None for n in suite.names}, {}, algo=self.name)
        source = source_record(record, err, model.has_value)
        write_json(out_dir / "train_history.json", {"imported": source, "history": []})
        if on_progress is not None:
            on_progress(1, {"returns": {}})
        return ppo.TrainResult(model, [path], [], 0, 0.0)

    def build_model(self, suite: TaskSuite, cfg: ImportedConfig) -> ImportedPolicy:
        if cfg.sha256:
            sha = spec_sha256(cfg.spec)
            if sha != cfg.sha256:
                raise UserError(f"--policy {cfg.spec}: the policy's files changed since the checkpoint was written "
                                f"(sha256 {cfg.sha256[:12]} then, {sha[:12]} now)")
        return load_policy(suite, cfg)

    def collect(self, model, suite, cfg, transitions_per_task, envs_per_task, heldout_frac, seed, on_step=None) -> Collected:
        return collect(model, suite, cfg, transitions_per_task, envs_per_task, heldout_frac, seed, on_step)


def source_record(cfg: ImportedConfig, grad_error: float | None, has_value: bool) -> dict:
    """Where theta* came from: ``groups.json["meta_policy"]["imported"]`` and report.md."""
    kind, parts = parse_spec(cfg.spec)
    files = [str(p) for p in _files(cfg.spec)]
    library = {}
    if kind == "sb3":
        try:
            import stable_baselines3

            library["stable_baselines3"] = stable_baselines3.__version__
        except ImportError:
            pass
    library["torch"] = torch.__version__
    return {"spec": cfg.spec, "kind": kind, "files": files, "sha256": cfg.sha256, "library": library,
            "task_input": cfg.task_input if kind == "sb3" else "task index", "task_order": list(cfg.task_order) if cfg.task_order else None,
            "advantages": "gae (the policy's value function)" if has_value else "monte_carlo_minus_fitted_baseline",
            "gamma": cfg.gamma, "gae_lambda": cfg.gae_lambda if has_value else None,
            "gradient_check_rel_error": grad_error}


LEARNER = ImportedLearner()


def imported_run_update(specs: list[str], task_input: str | None, tasks: str | None, seed: int, threads: int | None,
                        table: dict, group: dict, explicit: dict[str, object], command: str = "run") -> dict:
    """What ``run --policy SPEC [--policy SPEC ...]`` puts in the run's config data (``algo``,
    ``imported``), its options checked.  Several policies are independently trained replicates
    (their number is the default ``--replicates``).  ``table``: the ``[imported]`` table of
    ``--config``; ``group``: the group options so far (updated here); ``explicit``: the other
    options the user gave (flag -> value; those that train are refused)."""
    if command != "run":
        raise UserError(f"--policy: {command} trains policies with the project's own learners, which cannot start from an "
                        f"imported policy yet; {command} a run of the project's meta-policy (without --policy)")
    clash = [flag for flag, v in explicit.items() if v not in (None, "ppo")]
    if clash:
        raise UserError(f"{clash[0]}: nothing is trained with --policy (the given policy is theta*); leave it out")
    r, over = group.get("replicates"), group.get("replicate_over", "seeds")
    n = len(specs)
    if n > 1:
        if over != "seeds":
            raise UserError(f"--replicate-over {over} with {n} policies: each policy is its own replicate; leave --replicate-over out")
        if r is not None and r != n:
            raise UserError(f"--replicates {r} with {n} policies: one replicate per policy; leave --replicates out or give {n}")
        group["replicates"] = n
    elif r is not None and r > 1 and over == "checkpoints":
        raise UserError(f"--replicate-over checkpoints with --policy: an imported policy is one checkpoint; use --replicate-over "
                        "projection, or give one --policy per replicate")
    elif r is not None and r > 1 and over == "seeds":
        raise UserError(f"--replicates {r} with one --policy: replicates over seeds need independent trainings and one policy is "
                        "one training; give one --policy per replicate, use --replicates 1, or --replicate-over projection "
                        "(a verdict that is not calibrated)")
    group.setdefault("replicates", 1)
    specs = [absolute_spec(s) for s in specs]
    if len(set(specs)) < n:
        raise UserError(f"--policy {next(s for s in specs if specs.count(s) > 1)} is given twice; each replicate needs its own policy")
    shas = [spec_sha256(s) for s in specs]
    if len(set(shas)) < n:
        raise UserError("--policy: two of the policies have identical files; replicates need independently trained policies")
    data = {**table, "spec": specs[0], "sha256": shas[0], "more": specs[1:], "more_sha256": shas[1:], "seed": seed}
    if task_input is not None:
        data["task_input"] = task_input
    if tasks is not None:
        data["task_order"] = [t.strip() for t in tasks.split(",") if t.strip()]
    if threads is not None:
        data["threads"] = threads
    cfg = parse(ImportedConfig, data, "options", {"task_input": "--policy-task-input", "task_order": "--policy-tasks",
                                                   "threads": "--threads"})
    if cfg.task_input != "onehot" and any(parse_spec(s)[0] == "module" for s in specs):
        raise UserError("--policy-task-input applies to sb3: policies; a module policy is given the task index")
    return {"algo": "imported", "imported": cfg.model_dump(mode="json")}
