"""The generalization measure of the validation (step 5): a Hutchinson estimate of the trace of
the Hessian of the policy loss ``L(theta) = -mean_t A_t log pi_theta(a_t|s_t)`` at theta* and at
a few theta_S (Hessian-vector products by forward-over-reverse ``torch.func``), next to the
measured gap between the loss on held-out and on training rows.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.func import grad, jvp, vmap

from ..config import ValidateConfig
from ..estimate.first_order import float64_copy, functional_logprob
from ..rl.collected import Collected

__all__ = ["policy_loss_fn", "hvp_fn", "hutchinson_trace", "exact_hessian_trace", "hessian_traces"]


def policy_loss_fn(actor: nn.Module, x: torch.Tensor, a: torch.Tensor, adv: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``vec -> L(vec) = -mean_t A_t log pi_vec(a_t | x_t)`` (in the actor's dtype)."""
    logp = functional_logprob(actor, x, a)
    w = adv.detach().to(next(actor.parameters()).dtype)

    def loss(vec: torch.Tensor) -> torch.Tensor:
        return -(w * logp(vec)).mean()

    return loss


def hvp_fn(loss: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``v -> H v`` with ``H`` the Hessian of ``loss`` at ``theta`` (forward-over-reverse:
    ``jvp`` of ``grad``, one pass costs a few gradient evaluations, ``H`` is never formed)."""
    g = grad(loss)

    def hvp(v: torch.Tensor) -> torch.Tensor:
        return jvp(g, (theta,), (v,))[1]

    return hvp


def hutchinson_trace(loss: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor, probes: int, seed: int = 0,
                     batch: int = 8) -> dict:
    """Hutchinson estimate ``tr H ~ (1/K) sum_k v_k^T H v_k`` with ``K = probes`` Rademacher
    vectors ``v_k`` (entries +-1, seeded).  Probes are evaluated ``batch`` at a time under
    ``vmap``.  Returns ``{trace, stderr, probes, samples}``; ``stderr`` is the sample standard
    deviation over probes divided by sqrt(K) (NaN for K = 1)."""
    if probes < 1:
        raise ValueError(f"probes must be >= 1, got {probes}")
    theta = theta.detach()
    gen = torch.Generator().manual_seed(int(seed))
    hvp = hvp_fn(loss, theta)
    batched = vmap(hvp)
    samples = []
    done = 0
    while done < probes:
        b = min(batch, probes - done)
        V = (torch.randint(0, 2, (b, theta.numel()), generator=gen) * 2 - 1).to(theta.dtype)
        HV = batched(V) if b > 1 else hvp(V[0]).unsqueeze(0)
        samples.append((V * HV).sum(dim=1).detach())
        done += b
    s = torch.cat(samples).double()
    return {"trace": float(s.mean()), "stderr": float(s.std() / math.sqrt(probes)) if probes > 1 else float("nan"),
            "probes": int(probes), "samples": s.tolist()}


def exact_hessian_trace(loss: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor) -> tuple[float, torch.Tensor]:
    """``(tr H, H)`` with the full Hessian from ``torch.func.hessian`` (tests; small p only)."""
    H = torch.func.hessian(loss)(theta.detach())
    return float(torch.diagonal(H).sum()), H


def hessian_traces(model, theta_star: torch.Tensor, ro: Collected, members: np.ndarray, paths: list[torch.Tensor],
                   vcfg: ValidateConfig, names: list[str]) -> list[dict]:
    """Hutchinson trace of the Hessian of the training-rows policy loss, and the loss gap.

    At theta* the rows of every task, at theta_S (the end of subset S's fine-tuning, for the
    first ``hessian_subsets`` subsets) the rows of S's tasks.  The trace is estimated on at
    most ``hessian_rows`` training rows drawn at random (seeded; an unbiased estimate of the
    all-rows trace), in float32; the losses use all rows, in float64.
    """
    act32 = copy.deepcopy(model.actor).float().eval()
    act64 = float64_copy(model.actor)
    gen = torch.Generator().manual_seed(vcfg.hessian_seed)
    out = []
    points = [("theta*", theta_star, np.ones(members.shape[1], dtype=bool))]
    for s in range(min(vcfg.hessian_subsets, len(paths))):
        points.append((f"subset {s}", paths[s][-1].to(theta_star.dtype), members[s]))
    for label, theta, tasks_mask in points:
        tasks = torch.as_tensor(np.flatnonzero(tasks_mask))
        in_tasks = torch.isin(ro.task, tasks)
        tr_idx = torch.nonzero(in_tasks & ~ro.heldout).flatten()
        ho_idx = torch.nonzero(in_tasks & ro.heldout).flatten()
        sample = tr_idx if tr_idx.numel() <= vcfg.hessian_rows else tr_idx[torch.randperm(tr_idx.numel(), generator=gen)[:vcfg.hessian_rows]]
        t0 = time.perf_counter()
        loss_h = policy_loss_fn(act32, ro.x[sample], ro.actions[sample], ro.adv[sample])
        est = hutchinson_trace(loss_h, theta.detach().to(torch.float32), vcfg.hessian_probes, seed=vcfg.hessian_seed)
        th = theta.detach().to(torch.float64)
        with torch.no_grad():
            l_tr = float(policy_loss_fn(act64, ro.x[tr_idx], ro.actions[tr_idx], ro.adv[tr_idx])(th))
            l_ho = float(policy_loss_fn(act64, ro.x[ho_idx], ro.actions[ho_idx], ro.adv[ho_idx])(th))
        out.append({"theta": label, "tasks": [names[i] for i in tasks.tolist()],
                    "delta": float((th - theta_star.double()).norm() / theta_star.double().norm()),
                    "trace": est["trace"], "stderr": est["stderr"], "probes": est["probes"], "rows": int(sample.numel()),
                    "loss_train": l_tr, "loss_heldout": l_ho, "generalization_gap": l_ho - l_tr,
                    "seconds": time.perf_counter() - t0})
    return out
