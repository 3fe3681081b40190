"""The honest (slow) evaluator: real returns of theta_S = theta* + P u_S.

For every subset S the actor's parameters are set to ``theta* + P u_S`` and every task of S
is rolled out for ``episodes`` episodes with sampled actions.  Common random numbers: every
subset uses the same environment seeds and the same action-sampling generator seed, so the
differences between subsets come from the parameters, not from luck.  METHOD.md's prototype
notes say this evaluator needs a larger step (delta ~5%) than the first-order ones to rise
above rollout noise; tasks whose f has zero variance are neutralized by the affinity's
zero-variance guard.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from ..rl.evaluate import evaluate_policy
from ..tasks import TaskSuite
from ..ui import progress_bar
from .persample import flat_params, unflatten
from .projection import Projector


def rollout_return(model, suite: TaskSuite, projector: Projector, u: torch.Tensor, members: np.ndarray,
                   episodes: int, seed: int) -> np.ndarray:
    """``f[s, i]`` = mean return of theta_S on task i (NaN where i is not in subset s)."""
    theta = flat_params(model.actor)
    f = np.full(members.shape, np.nan)
    probe = copy.deepcopy(model)
    with progress_bar(members.shape[0], "rollout evaluator", unit="subsets") as bar:
        for s in range(members.shape[0]):
            delta = projector.map_back(u[s].to(projector.dtype)).to(theta.dtype)
            params = unflatten(theta + delta, model.actor)
            with torch.no_grad():
                for name, p in probe.actor.named_parameters():
                    p.copy_(params[name])
            ev = evaluate_policy(probe, suite, episodes=episodes, deterministic=False, seed=seed,
                                 tasks=np.flatnonzero(members[s]).tolist())
            for i in np.flatnonzero(members[s]):
                f[s, i] = ev[suite.names[i]]["mean"]
            bar.advance(1)
    return f
