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


class SoftModNet(nn.Module):
    """Soft Modularization (Yang, Xu, Wu, Wang 2020, "Multi-Task Reinforcement Learning with
    Soft Modularization"): a base network of ``layers`` layers of ``modules`` small modules
    whose connections are weighted per sample by a task-conditioned routing network.

    The input is ``x = [s, z]`` (observation ++ task one-hot, ``n_tasks`` wide).  With
    ``act`` the activation and ``W`` linear maps:

        f = act(W_s s)                       state embedding (the base network's input)
        e = f * (W_z z)                      routing input: state embedding x task embedding
        p^1 = softmax_j(W_d^1 act(e))        [modules x modules] routing weights
        p^l = softmax_j(W_d^l (act(W_u^l p^{l-1}) * e))    for l = 2 .. layers - 1
        o^1_i = act(W^1_i f)                 every first-layer module reads f
        o^{l+1}_i = act(W^{l+1}_i sum_j p^l_ij o^l_j)
        out = W_out mean_i o^L_i

    The task enters only through the routing, so modules are shared by all tasks and each task
    (and state) mixes them its own way.  The routing logits start near zero (uniform
    routing).  Works on an unbatched sample (``x: [in]``) as well as a batch, so per-sample
    gradients under ``vmap`` work as for the MLP.
    """

    def __init__(self, in_dim: int, out_dim: int, n_tasks: int, modules: int = 4, layers: int = 2, width: int = 32,
                 activation: str = "tanh", out_gain: float = 1.0):
        super().__init__()
        if not 0 < n_tasks < in_dim:
            raise ValueError(f"softmod needs 0 < n_tasks < in_dim (observation ++ one-hot), got n_tasks={n_tasks}, in_dim={in_dim}")
        self.obs_dim, self.n_tasks, self.m, self.L, self.w = in_dim - n_tasks, n_tasks, modules, layers, width
        self.act = ACTIVATIONS[activation]()
        self.state_embed = nn.Linear(self.obs_dim, width)
        self.task_embed = nn.Linear(n_tasks, width, bias=False)
        nn.init.orthogonal_(self.state_embed.weight, math.sqrt(2))
        nn.init.zeros_(self.state_embed.bias)
        nn.init.orthogonal_(self.task_embed.weight, 1.0)
        # module weights [layer][module, out, in], orthogonal per module
        self.module_w = nn.ParameterList()
        self.module_b = nn.ParameterList()
        for _ in range(layers):
            w = torch.empty(modules, width, width)
            for i in range(modules):
                nn.init.orthogonal_(w[i], math.sqrt(2))
            self.module_w.append(nn.Parameter(w))
            self.module_b.append(nn.Parameter(torch.zeros(modules, width)))
        mm = modules * modules
        self.route_down = nn.ModuleList([nn.Linear(width, mm) for _ in range(layers - 1)])
        self.route_up = nn.ModuleList([nn.Linear(mm, width) for _ in range(max(0, layers - 2))])
        for lin in self.route_down:
            nn.init.orthogonal_(lin.weight, 0.01)
            nn.init.zeros_(lin.bias)
        for lin in self.route_up:
            nn.init.orthogonal_(lin.weight, math.sqrt(2))
            nn.init.zeros_(lin.bias)
        self.head = nn.Linear(width, out_dim)
        nn.init.orthogonal_(self.head.weight, out_gain)
        nn.init.zeros_(self.head.bias)

    def routing(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The routing weights ``p^l`` (``[..., modules, modules]``, rows sum to 1), l = 1 .. L-1."""
        return self._forward(x)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x)[0]

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        s, z = x[..., : self.obs_dim], x[..., self.obs_dim:]
        f = self.act(self.state_embed(s))
        e = f * self.task_embed(z)
        lead = x.shape[:-1]
        probs: list[torch.Tensor] = []
        prev = None
        for l in range(self.L - 1):
            h = self.act(e) if l == 0 else self.act(self.route_up[l - 1](prev)) * e
            logits = self.route_down[l](h)
            p = torch.softmax(logits.reshape(*lead, self.m, self.m), dim=-1)
            probs.append(p)
            prev = p.reshape(*lead, self.m * self.m)
        # first module layer: every module reads the state embedding
        o = self.act(torch.einsum("...w,mvw->...mv", f, self.module_w[0]) + self.module_b[0])
        for l in range(1, self.L):
            mixed = torch.einsum("...ij,...jw->...iw", probs[l - 1], o)
            o = self.act(torch.einsum("...mw,mvw->...mv", mixed, self.module_w[l]) + self.module_b[l])
        return self.head(o.mean(dim=-2)), probs


def body(in_dim: int, hidden: Sequence[int], out_dim: int, activation: str, out_gain: float, softmod: dict | None = None) -> nn.Module:
    """An MLP (``softmod is None``) or a :class:`SoftModNet` built from ``softmod``'s keywords."""
    if softmod is None:
        return mlp(in_dim, hidden, out_dim, activation, out_gain)
    return SoftModNet(in_dim, out_dim, activation=activation, out_gain=out_gain, **softmod)


def build_actor_critic(in_dim: int, action_space: gym.Space, net, n_tasks: int) -> "ActorCritic":
    """The :class:`ActorCritic` described by a ``config.NetConfig`` (``arch`` mlp or softmod)."""
    softmod = None
    if getattr(net, "arch", "mlp") == "softmod":
        softmod = dict(n_tasks=n_tasks, modules=net.softmod_modules, layers=net.softmod_layers, width=net.softmod_width)
    return ActorCritic(in_dim, action_space, net.hidden, net.activation, softmod=softmod)


class Actor(nn.Module):
    """pi(a | x). ``kind`` is ``"categorical"`` or ``"gaussian"`` (state-independent log std)."""

    def __init__(self, in_dim: int, act_dim: int, kind: str, hidden: Sequence[int], activation: str, log_std_init: float = 0.0,
                 softmod: dict | None = None):
        super().__init__()
        if kind not in ("categorical", "gaussian"):
            raise ValueError(f"actor kind must be 'categorical' or 'gaussian', got {kind!r}")
        self.kind = kind
        self.act_dim = act_dim
        self.net = body(in_dim, hidden, act_dim, activation, 0.01, softmod)
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

    def __init__(self, in_dim: int, action_space: gym.Space, hidden: Sequence[int] = (64, 64, 64), activation: str = "tanh",
                 softmod: dict | None = None):
        """``softmod``: None for MLP bodies, else the keyword arguments of :class:`SoftModNet`
        other than ``in_dim``, ``out_dim``, ``activation`` and ``out_gain`` (``n_tasks``,
        ``modules``, ``layers``, ``width``)."""
        super().__init__()
        if isinstance(action_space, gym.spaces.Discrete):
            kind, act_dim = "categorical", int(action_space.n)
        elif isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
            kind, act_dim = "gaussian", int(action_space.shape[0])
        else:
            raise ValueError(f"unsupported action space {action_space}: use Discrete or a 1-D Box")
        self.in_dim = in_dim
        self.actor = Actor(in_dim, act_dim, kind, hidden, activation, softmod=softmod)
        self.critic = body(in_dim, hidden, 1, activation, 1.0, softmod)

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
