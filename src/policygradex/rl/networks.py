"""Actor-critic networks with categorical (Discrete) and Gaussian (Box) heads.

The task's one-hot id is appended to the observation by the caller (see
``rl.rollout.policy_input``); networks see one flat input vector.

The actor is its own module so that per-sample gradients of ``log pi(a|s)`` can be taken over
the actor's parameters only with ``torch.func.functional_call(actor, params, (x, a))``.
``Actor.log_prob`` works on a single unbatched sample (``x: [in]``, ``a: []`` or ``[act]``)
as well as on a batch, and indexes with ``gather`` so that it is safe under ``vmap``.
"""

from __future__ import annotations

import math
from typing import Sequence

import gymnasium as gym
import numpy as np
import torch
from torch import nn

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU}


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int, activation: str, out_gain: float) -> nn.Sequential:
    """An MLP with orthogonal init (gain sqrt(2) inside, ``out_gain`` on the last layer)."""
    layers: list[nn.Module] = []
    dims = [in_dim, *hidden]
    for a, b in zip(dims[:-1], dims[1:]):
        lin = nn.Linear(a, b)
        nn.init.orthogonal_(lin.weight, math.sqrt(2))
        nn.init.zeros_(lin.bias)
        layers += [lin, ACTIVATIONS[activation]()]
    last = nn.Linear(dims[-1], out_dim)
    nn.init.orthogonal_(last.weight, out_gain)
    nn.init.zeros_(last.bias)
    layers.append(last)
    return nn.Sequential(*layers)


class Actor(nn.Module):
    """pi(a | x). ``kind`` is ``"categorical"`` or ``"gaussian"`` (state-independent log std)."""

    def __init__(self, in_dim: int, act_dim: int, kind: str, hidden: Sequence[int], activation: str, log_std_init: float = 0.0):
        super().__init__()
        if kind not in ("categorical", "gaussian"):
            raise ValueError(f"actor kind must be 'categorical' or 'gaussian', got {kind!r}")
        self.kind = kind
        self.act_dim = act_dim
        self.net = mlp(in_dim, hidden, act_dim, activation, out_gain=0.01)
        if kind == "gaussian":
            self.log_std = nn.Parameter(torch.full((act_dim,), float(log_std_init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (categorical) or mean (gaussian)."""
        return self.net(x)

    def log_prob(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if self.kind == "categorical":
            logp = torch.log_softmax(out, dim=-1)
            return logp.gather(-1, a.long().unsqueeze(-1)).squeeze(-1)
        log_std = self.log_std.expand_as(out)
        z = (a - out) / log_std.exp()
        return (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def distribution(self, x: torch.Tensor) -> torch.distributions.Distribution:
        out = self.net(x)
        if self.kind == "categorical":
            return torch.distributions.Categorical(logits=out)
        return torch.distributions.Independent(torch.distributions.Normal(out, self.log_std.exp().expand_as(out)), 1)

    def mode(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out.argmax(-1) if self.kind == "categorical" else out


class ActorCritic(nn.Module):
    """Separate actor and critic MLPs on the same input (observation ++ task one-hot)."""

    def __init__(self, in_dim: int, action_space: gym.Space, hidden: Sequence[int] = (64, 64, 64), activation: str = "tanh"):
        super().__init__()
        if isinstance(action_space, gym.spaces.Discrete):
            kind, act_dim = "categorical", int(action_space.n)
        elif isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
            kind, act_dim = "gaussian", int(action_space.shape[0])
        else:
            raise ValueError(f"unsupported action space {action_space}: use Discrete or a 1-D Box")
        self.in_dim = in_dim
        self.actor = Actor(in_dim, act_dim, kind, hidden, activation)
        self.critic = mlp(in_dim, hidden, 1, activation, out_gain=1.0)

    @property
    def kind(self) -> str:
        return self.actor.kind

    def value(self, x: torch.Tensor) -> torch.Tensor:
        return self.critic(x).squeeze(-1)

    @torch.no_grad()
    def act(self, x: torch.Tensor, deterministic: bool = False, generator: torch.Generator | None = None):
        """Sample actions; returns (action, log_prob, value)."""
        dist = self.actor.distribution(x)
        if deterministic:
            a = self.actor.mode(x)
        elif self.kind == "categorical":
            a = torch.multinomial(dist.probs, 1, generator=generator).squeeze(-1)
        else:
            mean = dist.base_dist.loc
            std = dist.base_dist.scale
            a = mean + std * torch.randn(mean.shape, generator=generator)
        return a, dist.log_prob(a), self.value(x)


def sample_with_noise(actor: Actor, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Sample actions from given noise (common random numbers): ``noise`` is uniform in [0, 1)
    with shape [B] for a categorical actor (inverse CDF) and standard normal [B, act] for a
    Gaussian one (mean + std * noise)."""
    with torch.no_grad():
        out = actor.net(x)
        if actor.kind == "categorical":
            cdf = torch.softmax(out, dim=-1).cumsum(-1)
            return torch.searchsorted(cdf, noise.to(cdf.dtype).unsqueeze(-1)).squeeze(-1).clamp_max(out.shape[-1] - 1)
        return out + actor.log_std.exp() * noise.to(out.dtype)


def env_action(kind: str, a: torch.Tensor, space: gym.Space) -> np.ndarray:
    """Convert network actions to what the env accepts (clip Gaussian actions to the Box)."""
    arr = a.cpu().numpy()
    if kind == "categorical":
        return arr.astype(np.int64)
    return np.clip(arr, space.low, space.high).astype(space.dtype)
