"""The baseline groupings: random, gradient similarity, and TAG-style lookahead affinity.

All of them use the number of groups ``k`` that PolicyGradEx found (or was given), so that the
comparison isolates *which* tasks are put together, not how many groups there are.

Gradient similarity (the paper's baseline)
    ``g_i = grad_theta mean_{t in task i} A_t log pi_theta(a_t | s_t)`` at theta*, over the
    actor's parameters, from the run's own collection of theta* (all rows of the task, GAE
    advantages from theta*'s critic): the exact per-task mean policy gradient, one backward
    pass per task.  ``U_ij = cos(g_i, g_j)``, grouped by the same SDP as PolicyGradEx with
    ``trace X = k``.  The run's feature store would give the projected version ``P^T g_i``
    exactly (the projection is linear, so the mean of projected per-sample gradients is the
    projection of the mean), whose cosines match the exact ones up to the JL error
    (~1/sqrt(d)); the exact gradient costs one backward pass per task, so it is used, and the
    largest difference between the two cosine matrices is recorded as a check.

TAG-style lookahead affinity (Fifty et al. 2021, adapted to PPO; not in the paper)
    At ``tag_checkpoints`` evenly spaced checkpoints of the run's joint (meta-)training, each
    task's transitions are collected with that checkpoint (half of the environment copies held
    out) and advantages computed with its critic and standardized per task.  For every task i,
    the lookahead step ``theta'_i = theta - eta g_i`` (``g_i`` the gradient of task i's PPO
    loss on its training rows; one ``eta`` per checkpoint, chosen so that the mean step has
    relative length ``tag_delta``) is evaluated on every task j's held-out rows with the
    clipped PPO objective: ``dL_ij = L_j(theta) - L_j(theta'_i)`` (> 0: i's step helps j).
    TAG's ``1 - L'/L`` is undefined here (the PPO loss is ~0 at theta for standardized
    advantages), so each target's column is divided by ``mean_i |dL_ij|`` instead; the
    normalized affinities are averaged over checkpoints, symmetrized and grouped by the same
    SDP with ``trace X = k`` (TAG's own branch-and-bound search is replaced by the common
    grouping step, so only the affinity signal differs between methods).

Random grouping
    A uniformly random partition with PolicyGradEx's group sizes; a fresh draw per seed
    (``seed`` is the draw's seed), so the spread over seeds covers draws and training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.func import functional_call

from ..config import PPOConfig
from ..estimate.collect import load_meta_policy
from ..estimate.persample import LogProbModule, flat_params, unflatten
from ..errors import UserError
from ..group.sdp import group_tasks, groups_from_labels, random_grouping
from ..rl.ppo import clipped_surrogate
from ..tasks import TaskSuite
from ..estimate.collect import collect, load_rollouts
from ..estimate.features import FeatureStore
from ..rl.checkpoint import list_checkpoints, load_checkpoint

__all__ = ["random_groups", "gradient_similarity", "tag_affinity", "groups_from_affinity"]


def random_groups(sizes: list[int], n: int, seed: int) -> list[list[int]]:
    """A random partition of ``n`` tasks with the given group sizes (sorted task indices)."""
    return groups_from_labels(random_grouping(sizes, n, seed=seed))


def groups_from_affinity(U: np.ndarray, k: int) -> list[list[int]]:
    """The SDP grouping of ``U`` with exactly ``k`` groups (k = 1: all tasks together)."""
    n = U.shape[0]
    if k == 1:
        return [list(range(n))]
    if k >= n:
        return [[i] for i in range(n)]
    return [list(g) for g in group_tasks(U, k=k).groups]


def per_task_mean_gradients(actor, x: torch.Tensor, a: torch.Tensor, adv: torch.Tensor, task: torch.Tensor, n: int) -> torch.Tensor:
    """``[n, p]``: ``grad mean_{t in task i} A_t log pi(a_t | x_t)`` for every task i."""
    params = [p for p in actor.parameters()]
    out = []
    for i in range(n):
        m = task == i
        if not m.any():
            raise UserError(f"no transitions of task {i} in the run's collection")
        obj = (adv[m] * actor.log_prob(x[m], a[m])).mean()
        gs = torch.autograd.grad(obj, params, allow_unused=True)
        out.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, gs)]))
    return torch.stack(out).detach()


def _cosine(G: torch.Tensor) -> np.ndarray:
    G = G.double()
    Gn = G / G.norm(dim=1, keepdim=True).clamp_min(1e-300)
    C = (Gn @ Gn.T).numpy()
    return 0.5 * (C + C.T)


def gradient_similarity(run_dir: Path, n: int) -> dict:
    """Cosine similarity of per-task mean policy gradients at theta* (module docstring)."""

    model = load_meta_policy(run_dir)
    c = load_rollouts(run_dir)
    G = per_task_mean_gradients(model.actor, c.x, c.actions, c.adv, c.task, n)
    U = _cosine(G)
    info = {"gradient_norms": G.norm(dim=1).tolist()}
    store = FeatureStore.load(run_dir / "features")
    Gp = torch.stack([(store.adv[store.task == i, None] * store.G[store.task == i]).mean(0) for i in range(n)])
    info["projected_cosine_max_abs_diff"] = float(np.abs(_cosine(Gp) - U).max())
    return {"U": U, "info": info}


def _clipped_objective_loss(logp_new: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor, clip: float) -> torch.Tensor:
    return clipped_surrogate((logp_new - logp_old).exp(), adv, clip).mean()


def tag_affinity(run_dir: Path, suite: TaskSuite, cfg: PPOConfig, checkpoints: int, transitions: int, delta: float,
                 seed: int = 0, envs_per_task: int = 8, on_step: Callable[[int], None] | None = None) -> dict:
    """TAG-style lookahead affinity averaged over the run's training checkpoints (module docstring)."""

    ckpts = list_checkpoints(run_dir / "train" / "checkpoints")
    if not ckpts:
        raise UserError(f"no training checkpoints under {run_dir / 'train' / 'checkpoints'}; the tag method needs the run's meta-training")
    chosen = sorted(set(np.round(np.linspace(0, len(ckpts) - 1, min(checkpoints, len(ckpts)))).astype(int).tolist()))
    n = suite.n
    Z_sum = np.zeros((n, n))
    used, etas, env_steps = [], [], 0
    for c in chosen:
        model, _, _, ck = load_checkpoint(ckpts[c])
        col = collect(model, suite, cfg, transitions, envs_per_task, 0.5, seed + 7919 * (c + 1), on_step=on_step)
        env_steps += int(col.x.shape[0])
        actor = model.actor.eval()
        x, a, task, held = col.x, col.actions, col.task, col.heldout
        adv = col.adv.clone()
        for i in range(n):
            m = task == i
            adv[m] = (adv[m] - adv[m].mean()) / (adv[m].std() + 1e-8)
        with torch.no_grad():
            logp_old = actor.log_prob(x, a)
        params = [p for p in actor.parameters()]
        grads = []
        for i in range(n):
            m = (task == i) & ~held
            loss = -(adv[m] * actor.log_prob(x[m], a[m])).mean()  # the PPO loss's gradient at theta (ratio 1)
            gs = torch.autograd.grad(loss, params, allow_unused=True)
            grads.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, gs)]))
        G = torch.stack(grads).detach()
        theta = flat_params(actor)
        eta = float(delta * theta.norm() / G.norm(dim=1).mean().clamp_min(1e-30))
        wrapper = LogProbModule(actor)
        evals = [(task == j) & held for j in range(n)]
        base = np.array([float(-adv[e].mean()) for e in evals])  # clipped loss at theta (ratio 1)
        dL = np.zeros((n, n))
        with torch.no_grad():
            for i in range(n):
                prm = {f"actor.{k}": v for k, v in unflatten(theta - eta * G[i], actor).items()}
                logp_new = functional_call(wrapper, prm, (x, a))
                for j in range(n):
                    e = evals[j]
                    dL[i, j] = base[j] - float(_clipped_objective_loss(logp_new[e], logp_old[e], adv[e], cfg.clip_coef))
        scale = np.abs(dL).mean(axis=0)
        Z_sum += dL / np.where(scale > 0, scale, 1.0)
        used.append(int(ck["global_step"]))
        etas.append(eta)
    Z = Z_sum / len(chosen)
    U = 0.5 * (Z + Z.T)
    np.fill_diagonal(U, 1.0)
    return {"U": U, "Z": Z, "info": {"checkpoint_steps": used, "eta": etas, "env_steps": env_steps,
                                      "transitions_per_task": transitions, "delta": delta}}
