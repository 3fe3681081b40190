r"""Stage 4: evaluators ``f(S, i)`` - how well the surrogate of subset S does on task i.

For every subset ``S`` (a row of ``members``) with surrogate solution ``u_S`` (a row of ``u``,
from :func:`policygradex.estimate.surrogate.fit_subsets`) and every task ``i in S``, an
evaluator scores ``theta_S = theta* + P u_S`` on the **held-out** transitions of task ``i``.
Because ``g~_t^T u = g_t^T (P u)`` exactly, every score below needs only the projected
features: the inner product ``z_t = g~_t^T u_S`` is the first-order change of
``log pi(a_t | s_t)`` when the policy moves from ``theta*`` to ``theta_S``.

Every evaluator has the signature ``(G, y, w, task, heldout, members, u) -> ndarray [m, n]``
(float64) with ``NaN`` exactly where task ``i`` is not in subset ``S``; **higher is better**
for all of them.  The affinity (``U_ij`` = mean of the standardized ``f(S, i)`` over the
subsets containing i and j) is built from this matrix elsewhere.

Evaluators (the registry :data:`EVALUATORS`)
--------------------------------------------
``"first_order_ppo"`` (the default, :data:`DEFAULT_EVALUATOR`)
    ``f(S, i) = mean_t A_t (exp(z_t) - 1)`` over the held-out rows of task ``i``, with
    ``A_t = y_t w_t`` the advantage.  ``exp(z_t)`` is the first-order estimate of the PPO
    ratio ``pi_theta_S / pi_theta*``, so this is the estimated improvement of the PPO
    surrogate objective ``mean_t A_t r_t`` - the quantity PPO itself maximizes - over its
    value ``mean_t A_t`` at ``theta*`` (the constant does not change comparisons).  It is the
    default because it measures what the downstream training optimizes, in the units of the
    advantage, rather than a classification loss.
``"surrogate_loss"``
    ``f(S, i) = -mean_t w_t log(1 + exp(-y_t z_t))``: minus the weighted logistic loss of
    stage 3 on the held-out rows (averaged over rows, like the training objective).

At a small relative distance (``delta`` of about 1% or less) both reduce to inner products
of projected per-task policy gradients and agree (METHOD.md, prototype notes: expanding to
first order in ``z``, ``A_t (exp(z_t) - 1) ~ A_t z_t`` and
``-w_t log(1 + exp(-y_t z_t)) ~ -w_t log 2 + A_t z_t / 2``); they diverge only at larger
``delta``.  The real return of ``theta_S`` (slow, the honest reference) is not an evaluator
of projected features and lives with the rollout code.

All evaluators are vectorized: one ``[m_i, d] x [d, h_i]`` product per task (``m_i`` subsets
containing task ``i``, ``h_i`` held-out rows), no loop over subset-task pairs.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import Tensor

from .surrogate_checks import as_tensor, validate_data

__all__ = ["DEFAULT_EVALUATOR", "EVALUATORS", "Evaluator", "first_order_ppo", "get_evaluator", "surrogate_loss"]

Evaluator = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor], np.ndarray]

_DTYPE = torch.float64


def _per_task(
    G: Tensor,
    y: Tensor,
    w: Tensor,
    task: Tensor,
    heldout: Tensor,
    members: Tensor,
    u: Tensor,
    score: Callable[[Tensor, Tensor, Tensor], Tensor],
) -> np.ndarray:
    """Apply ``score(z [m_i, h_i], y_i [h_i], w_i [h_i]) -> [m_i]`` task by task."""
    G, y, w, task, members, heldout = validate_data(G, y, w, task, members, heldout, mask_name="heldout")
    m, n = members.shape
    d = G.shape[1]
    u = as_tensor("u", u)
    if u.shape != (m, d) or not u.is_floating_point() or not torch.isfinite(u).all():
        raise ValueError(
            f"The 'u' parameter must be a finite float tensor of shape (m, d) = ({m}, {d}). Got shape {tuple(u.shape)}."
        )
    u = u.to(device=G.device, dtype=_DTYPE)
    out = torch.full((m, n), float("nan"), dtype=_DTYPE, device=G.device)
    for i in range(n):
        sub = torch.nonzero(members[:, i]).flatten()
        if sub.numel() == 0:
            continue
        rows = torch.nonzero((task == i) & heldout).flatten()
        if rows.numel() == 0:
            raise ValueError(
                f"The 'heldout' parameter selects no rows of task {i}, which is in {sub.numel()} subset(s): "
                "every task in a subset needs held-out rows to be evaluated."
            )
        z = u.index_select(0, sub) @ G.index_select(0, rows).T  # [m_i, h_i]
        out[sub, i] = score(z, y[rows], w[rows])
    return out.cpu().numpy()


def first_order_ppo(
    G: Tensor, y: Tensor, w: Tensor, task: Tensor, heldout: Tensor, members: Tensor, u: Tensor
) -> np.ndarray:
    """``f(S, i) = mean_t A_t (exp(g_t^T u_S) - 1)`` over task i's held-out rows, ``A_t = y_t w_t``.

    The first-order estimate of the improvement of the PPO objective on task ``i`` when the
    policy moves to ``theta_S``.  Returns ``[m, n]`` float64, NaN where ``i`` is not in ``S``.
    """

    def score(z: Tensor, yi: Tensor, wi: Tensor) -> Tensor:
        return torch.expm1(z) @ (yi * wi) / z.shape[1]

    return _per_task(G, y, w, task, heldout, members, u, score)


def surrogate_loss(
    G: Tensor, y: Tensor, w: Tensor, task: Tensor, heldout: Tensor, members: Tensor, u: Tensor
) -> np.ndarray:
    """``f(S, i) = -mean_t w_t log(1 + exp(-y_t g_t^T u_S))`` over task i's held-out rows.

    Minus the stage-3 weighted logistic loss, so that higher is better.  Returns ``[m, n]``
    float64, NaN where ``i`` is not in ``S``.
    """

    def score(z: Tensor, yi: Tensor, wi: Tensor) -> Tensor:
        return -(torch.nn.functional.softplus(-yi * z) @ wi) / z.shape[1]

    return _per_task(G, y, w, task, heldout, members, u, score)


EVALUATORS: dict[str, Evaluator] = {
    "first_order_ppo": first_order_ppo,
    "surrogate_loss": surrogate_loss,
}
"""Evaluator name -> function ``(G, y, w, task, heldout, members, u) -> ndarray [m, n]``."""

DEFAULT_EVALUATOR = "first_order_ppo"


def get_evaluator(name: str) -> Evaluator:
    """The evaluator registered under ``name``; a ValueError lists the valid names."""
    try:
        return EVALUATORS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"The 'evaluator' parameter must be one of {sorted(EVALUATORS)}. Got {name!r} instead."
        ) from None
