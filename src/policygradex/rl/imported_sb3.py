"""Stable-Baselines3 models for ``run --policy sb3:PATH.zip`` (:mod:`policygradex.rl.imported`
documents the spec): SB3's own loader, the spaces checked against the suite's, VecNormalize's
observation statistics applied, and the policy as ``forward(obs, task) -> (distribution, value)``."""

from __future__ import annotations

import pickle
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from ..config import ImportedConfig
from ..errors import UserError
from ..tasks import TaskSuite

__all__ = ["SB3_STATS_NAMES", "sb3_policy", "sb3_stats_path"]

SB3_STATS_NAMES = ("vecnormalize.pkl", "vec_normalize.pkl")


def sb3_stats_path(parts: list[str]) -> Path | None:
    """The VecNormalize file of an sb3 spec: named (``PATH.zip:STATS.pkl``) or found next to the model."""
    if len(parts) > 1 and parts[1]:
        return Path(parts[1])
    here = Path(parts[0]).parent
    return next((here / n for n in SB3_STATS_NAMES if (here / n).is_file()), None)


class _SB3Policy(nn.Module):
    """An SB3 ActorCriticPolicy as ``forward(obs, task) -> (distribution, value)``: VecNormalize's
    observation statistics applied, the task's one-hot appended (``task_input = "onehot"``)."""

    def __init__(self, policy: nn.Module, n_tasks: int, onehot: bool, stats: dict | None, keys: tuple[str, str] | None = None):
        super().__init__()
        self.sb3 = policy
        self.onehot = onehot
        self.keys = keys  # (observation key, task key) of a dict observation
        self.register_buffer("eye", torch.eye(n_tasks), persistent=False)
        self.normalize = stats is not None
        if stats is not None:
            self.register_buffer("obs_mean", torch.as_tensor(stats["mean"], dtype=torch.float32), persistent=False)
            self.register_buffer("obs_std", torch.as_tensor(np.sqrt(stats["var"] + stats["epsilon"]), dtype=torch.float32), persistent=False)
            self.clip = float(stats["clip"])

    def forward(self, obs: torch.Tensor, task: torch.Tensor):
        if self.keys is not None:  # preprocessed as SB3 does (a Discrete task becomes its one-hot), vmap-safe
            x = {self.keys[0]: obs, self.keys[1]: self.eye[task]}
        else:
            x = torch.cat([obs, self.eye[task]], dim=-1) if self.onehot else obs
            if self.normalize:  # VecNormalize saw the policy's whole input, one-hot included
                x = torch.clamp((x - self.obs_mean) / self.obs_std, -self.clip, self.clip)
        # SB3's own forward, less its preprocessing (Box observations: a cast to float32, which would
        # undo the float64 copy the first-order check runs on)
        p = self.sb3
        if p.share_features_extractor:
            lat_pi, lat_vf = p.mlp_extractor(p.features_extractor(x))
        else:
            lat_pi = p.mlp_extractor.forward_actor(p.pi_features_extractor(x))
            lat_vf = p.mlp_extractor.forward_critic(p.vf_features_extractor(x))
        wrapper = p._get_action_dist_from_latent(lat_pi)
        dist = wrapper.distribution
        wrapper.distribution = None  # SB3 keeps the last distribution on the policy: a copy of the model must not carry it
        return dist, p.value_net(lat_vf).squeeze(-1)


def sb3_policy(spec: str, parts: list[str], suite: TaskSuite, cfg: ImportedConfig) -> nn.Module:
    """The SB3 model of ``sb3:PATH.zip[:STATS.pkl]`` as ``forward(obs, task) -> (distribution, value)``, checked against
    the suite's spaces and ``cfg.task_input``."""
    try:
        import stable_baselines3 as sb3
    except ImportError:
        raise UserError(f"--policy {spec}: Stable-Baselines3 is not installed; pip install -e '.[sb3]'") from None
    path = Path(parts[0])
    if not path.is_file():
        raise UserError(f"--policy {spec}: {path} does not exist")
    from stable_baselines3.common.save_util import load_from_zip_file

    try:
        data, _, _ = load_from_zip_file(path, device="cpu", load_data=True, print_system_info=False)
    except Exception as exc:
        raise UserError(f"--policy {spec}: {path} is not a Stable-Baselines3 archive ({type(exc).__name__}: {exc})") from None
    data = data or {}
    policy_class = getattr(data.get("policy_class"), "__name__", str(data.get("policy_class")))
    algo = next((c for c in (sb3.PPO, sb3.A2C) if c.__name__ in str(data.get("_algo", ""))), None)
    model = None
    for cls in ([algo] if algo else []) + [sb3.PPO, sb3.A2C]:
        try:
            model = cls.load(path, device="cpu", custom_objects={"learning_rate": 0.0, "lr_schedule": lambda _: 0.0,
                                                                   "clip_range": lambda _: 0.0})
            break
        except Exception:
            continue
    if model is None or not hasattr(model.policy, "get_distribution"):
        raise UserError(f"--policy {spec}: not a Stable-Baselines3 PPO or A2C model (policy {policy_class})")
    obs_space, act_space = suite.observation_space, suite.action_space
    obs_dim = int(np.prod(obs_space.shape))
    want = obs_dim + (suite.n if cfg.task_input == "onehot" else 0)
    got = model.policy.observation_space
    if cfg.task_input.startswith("key:"):
        keys = _dict_keys(spec, cfg.task_input[4:], got, obs_dim, suite.n)
        named = len(parts) > 1 and bool(parts[1])
        if named or data.get("_last_original_obs") is not None:
            raise UserError(f"--policy {spec}: VecNormalize with dict observations (--policy-task-input {cfg.task_input}) is not "
                            "supported; use --policy-task-input onehot")
        _check_actions(spec, model.policy.action_space, act_space)
        model.policy.set_training_mode(False)
        return _SB3Policy(model.policy, suite.n, False, None, keys)
    if not isinstance(got, gym.spaces.Box) or int(np.prod(got.shape)) != want:
        how = f"{obs_dim} observation values + {suite.n} one-hot" if cfg.task_input == "onehot" else f"{obs_dim} observation values"
        raise UserError(f"--policy {spec}: the policy's observation space is {got} but the suite gives {how} = {want} "
                        f"(--policy-task-input {cfg.task_input})")
    _check_actions(spec, model.policy.action_space, act_space)
    trained_with_vn = data.get("_last_original_obs") is not None  # SB3 keeps the raw last observation only under VecNormalize
    named = len(parts) > 1 and bool(parts[1])
    if named and not trained_with_vn:
        raise UserError(f"--policy {spec}: the model was not trained with VecNormalize (its archive has no raw observation); "
                        "leave the statistics out")
    # a file found next to the model is this model's only when the model was trained with VecNormalize
    stats_path = sb3_stats_path(parts) if trained_with_vn else None
    stats = None
    if stats_path is not None:
        if not stats_path.is_file():
            raise UserError(f"--policy {spec}: VecNormalize statistics {stats_path} do not exist")
        try:
            with stats_path.open("rb") as f:
                vn = pickle.load(f)
            rms = vn.obs_rms
            stats = {"mean": np.asarray(rms.mean, dtype=np.float64), "var": np.asarray(rms.var, dtype=np.float64),
                     "epsilon": float(vn.epsilon), "clip": float(vn.clip_obs)}
            if not getattr(vn, "norm_obs", True):
                stats = None
        except Exception as exc:
            raise UserError(f"--policy {spec}: {stats_path} is not a VecNormalize file ({type(exc).__name__}: {exc})") from None
        if stats is not None and stats["mean"].shape[-1] != want:
            raise UserError(f"--policy {spec}: {stats_path} normalizes {stats['mean'].shape[-1]} observation values, the policy takes {want}")
    elif trained_with_vn:
        raise UserError(f"--policy {spec}: the model was trained with VecNormalize but no statistics were given; save them with "
                        f"VecNormalize.save('{path.parent / SB3_STATS_NAMES[0]}') or name them: sb3:{path}:STATS.pkl")
    model.policy.set_training_mode(False)
    return _SB3Policy(model.policy, suite.n, cfg.task_input == "onehot", stats)


def _check_actions(spec: str, got: gym.Space, act_space: gym.Space) -> None:
    if type(got) is not type(act_space) or got.shape != act_space.shape or (
            isinstance(act_space, gym.spaces.Discrete) and got.n != act_space.n):
        raise UserError(f"--policy {spec}: the policy's action space is {got} but the suite's is {act_space}")


def _dict_keys(spec: str, task_key: str, got: gym.Space, obs_dim: int, n: int) -> tuple[str, str]:
    """(observation key, task key) of a policy whose observation is a dict of the task's observation
    and its index (``Discrete(n)``) or one-hot (``Box(n,)``); a mismatch is one line naming both."""
    if not isinstance(got, gym.spaces.Dict):
        raise UserError(f"--policy {spec}: --policy-task-input key:{task_key} needs a dict observation; the policy's is {got}")
    keys = list(got.spaces)
    if task_key not in keys or len(keys) != 2:
        raise UserError(f"--policy {spec}: the policy's observation keys are {keys}; --policy-task-input key:{task_key} needs "
                        f"{task_key!r} and one observation key")
    obs_key = next(k for k in keys if k != task_key)
    t, o = got.spaces[task_key], got.spaces[obs_key]
    if not ((isinstance(t, gym.spaces.Discrete) and t.n == n) or (isinstance(t, gym.spaces.Box) and t.shape == (n,))):
        raise UserError(f"--policy {spec}: the policy's {task_key!r} space is {t}; the suite has {n} tasks (Discrete({n}) or a one-hot Box)")
    if not isinstance(o, gym.spaces.Box) or int(np.prod(o.shape)) != obs_dim:
        raise UserError(f"--policy {spec}: the policy's {obs_key!r} space is {o} but the suite gives {obs_dim} observation values")
    return obs_key, task_key
