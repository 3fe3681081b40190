"""The networks of multi-task SAC (:mod:`policygradex.rl.sac` states the method): the
tanh-squashed Gaussian actor, the twin Q critics on ``[s, a, one-hot]`` with their Polyak
targets, and one log-temperature per task, in one :class:`SACModel`."""

from __future__ import annotations

import copy
import math

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from ..config import SACConfig
from ..errors import UserError
from ..tasks import TaskSuite
from .networks import body

LOG_STD_MIN, LOG_STD_MAX = -10.0, 2.0
_EDGE = 1e-6  # squashed actions are clamped to (-1 + EDGE, 1 - EDGE) before atanh
_LOG2 = math.log(2.0)


def _log1m_tanh2(u: torch.Tensor) -> torch.Tensor:
    """log(1 - tanh(u)^2), stable for large |u|."""
    return 2.0 * (_LOG2 - u - torch.nn.functional.softplus(-2.0 * u))


def _softmod(net, n_tasks: int) -> dict | None:
    if getattr(net, "arch", "mlp") != "softmod":
        return None
    return dict(n_tasks=n_tasks, modules=net.softmod_modules, layers=net.softmod_layers, width=net.softmod_width)


def check_action_space(space: gym.Space, suite_name: str) -> None:
    if not (isinstance(space, gym.spaces.Box) and len(space.shape) == 1 and np.isfinite(space.low).all()
            and np.isfinite(space.high).all() and (space.high > space.low).all()):
        raise UserError(f"--algo sac needs a bounded 1-D Box action space (continuous control); suite {suite_name!r} has "
                        f"{space}: use --algo ppo")


class SquashedGaussianActor(nn.Module):
    """pi(a|x): a tanh-squashed Gaussian with state-dependent log std, rescaled to the action Box."""

    kind = "squashed_gaussian"

    def __init__(self, in_dim: int, action_space: gym.spaces.Box, hidden, activation: str, softmod: dict | None = None):
        super().__init__()
        self.act_dim = int(action_space.shape[0])
        self.net = body(in_dim, hidden, 2 * self.act_dim, activation, 0.01, softmod)
        low = torch.as_tensor(action_space.low, dtype=torch.float32)
        high = torch.as_tensor(action_space.high, dtype=torch.float32)
        self.register_buffer("action_scale", (high - low) / 2)
        self.register_buffer("action_bias", (high + low) / 2)

    def stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log std) of the Gaussian before the squashing."""
        out = self.net(x)
        mu, log_std = out[..., : self.act_dim], out[..., self.act_dim:]
        return mu, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stats(x)[0]

    def log_prob(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """log pi(a|x) of an action in the Box (tanh correction included); batched or one sample."""
        mu, log_std = self.stats(x)
        y = ((a - self.action_bias) / self.action_scale).clamp(-1 + _EDGE, 1 - _EDGE)
        u = torch.atanh(y)
        z = (u - mu) * torch.exp(-log_std)
        gauss = (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        return gauss - (torch.log1p(-y.pow(2)) + torch.log(self.action_scale)).sum(-1)

    def rsample(self, x: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterized (action, log pi(action|x)) for standard-normal ``noise``."""
        mu, log_std = self.stats(x)
        u = mu + log_std.exp() * noise
        a = self.action_bias + self.action_scale * torch.tanh(u)
        gauss = (-0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        return a, gauss - (_log1m_tanh2(u) + torch.log(self.action_scale)).sum(-1)

    def mode(self, x: torch.Tensor) -> torch.Tensor:
        """The deterministic action ``b + s tanh(mu)`` (evaluation)."""
        return self.action_bias + self.action_scale * torch.tanh(self.stats(x)[0])

    @torch.no_grad()
    def sample_with_noise(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The sampled action for given standard-normal noise (common random numbers)."""
        return self.rsample(x, noise.to(x.dtype))[0]

    def distribution(self, x: torch.Tensor) -> torch.distributions.Distribution:
        mu, log_std = self.stats(x)
        base = torch.distributions.Independent(torch.distributions.Normal(mu, log_std.exp()), 1)
        return torch.distributions.TransformedDistribution(base, [torch.distributions.TanhTransform(cache_size=1),
                                                                  torch.distributions.AffineTransform(self.action_bias, self.action_scale)])


class QNet(nn.Module):
    """Q(x, a) on ``[s, a, one-hot]`` (the one-hot stays last, as a Soft Modularization body expects)."""

    def __init__(self, in_dim: int, act_dim: int, n_tasks: int, hidden, activation: str, softmod: dict | None = None):
        super().__init__()
        self.n_tasks = n_tasks
        self.net = body(in_dim + act_dim, hidden, 1, activation, 1.0, softmod)

    def forward(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        n = self.n_tasks
        return self.net(torch.cat([x[..., :-n], a, x[..., -n:]], dim=-1)).squeeze(-1)


class SACModel(nn.Module):
    """Actor, twin critics, their targets and one log-temperature per task."""

    algo = "sac"

    def __init__(self, in_dim: int, action_space: gym.spaces.Box, n_tasks: int, cfg: SACConfig):
        super().__init__()
        sm = _softmod(cfg.net, n_tasks)
        act_dim = int(action_space.shape[0])
        self.n_tasks = n_tasks
        self.in_dim = in_dim
        self.actor = SquashedGaussianActor(in_dim, action_space, cfg.net.hidden, cfg.net.activation, sm)
        self.q1 = QNet(in_dim, act_dim, n_tasks, cfg.net.hidden, cfg.net.activation, sm)
        self.q2 = QNet(in_dim, act_dim, n_tasks, cfg.net.hidden, cfg.net.activation, sm)
        self.q1_target = copy.deepcopy(self.q1)
        self.q2_target = copy.deepcopy(self.q2)
        for p in (*self.q1_target.parameters(), *self.q2_target.parameters()):
            p.requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.full((n_tasks,), math.log(cfg.init_alpha)))

    @property
    def kind(self) -> str:
        return self.actor.kind

    def q(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return torch.min(self.q1(x, a), self.q2(x, a))

    def alpha(self, x: torch.Tensor) -> torch.Tensor:
        """alpha of the task of every row of ``x`` (read from its one-hot)."""
        return self.log_alpha.exp()[x[..., -self.n_tasks:].argmax(-1)]

    @torch.no_grad()
    def act(self, x: torch.Tensor, deterministic: bool = False, generator: torch.Generator | None = None):
        """(action, log pi(action|x)); sampled with CPU noise from ``generator``."""
        if deterministic:
            a = self.actor.mode(x)
            return a, self.actor.log_prob(x, a)
        noise = torch.randn((*x.shape[:-1], self.actor.act_dim), generator=generator).to(x.device)
        return self.actor.rsample(x, noise)

    @torch.no_grad()
    def soft_value(self, x: torch.Tensor, samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """V(x) = E_{a'~pi}[min Q(x, a') - alpha log pi(a'|x)], averaged over ``samples`` draws."""
        alpha = self.alpha(x)
        total = torch.zeros(x.shape[:-1], device=x.device)
        for _ in range(samples):
            noise = torch.randn((*x.shape[:-1], self.actor.act_dim), generator=generator).to(x.device)
            a, logp = self.actor.rsample(x, noise)
            total += self.q(x, a) - alpha * logp
        return total / samples

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"actor": list(self.actor.parameters()), "critic": [*self.q1.parameters(), *self.q2.parameters()],
                "alpha": [self.log_alpha]}


def build_model(suite: TaskSuite, cfg: SACConfig) -> SACModel:
    check_action_space(suite.action_space, suite.name)
    in_dim = int(suite.observation_space.shape[0]) + suite.n
    return SACModel(in_dim, suite.action_space, suite.n, cfg)
