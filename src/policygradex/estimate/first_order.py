"""The exact first-order prediction of a policy's log-probabilities and its error (METHOD.md,
"Validation"; docs/validation.md).

For a step from ``theta*`` to ``theta``, ``Delta_true_t = log pi_theta(a_t|x_t) - log
pi_theta*(a_t|x_t)`` is compared with ``Delta_lin_t = g_t^T (theta - theta*)``, ``g_t =
grad_theta log pi_theta*(a_t|x_t)``, computed exactly (no projection) by one forward-mode
``torch.func.jvp``; the error is ``||Delta_true - Delta_lin||_2 / ||Delta_true||_2``.  Used by
``policygradex validate`` (along the real adaptation paths) and by the run's group stage (along
the surrogate's own steps).
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call, jvp

from .persample import LogProbModule, unflatten

__all__ = ["functional_logprob", "float64_copy", "logprob_change", "functional_logprob_change", "relative_error"]


def functional_logprob(actor: nn.Module, x: torch.Tensor, a: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``vec -> log pi_vec(a_t | x_t)`` for all rows, ``vec`` the flat actor parameters [p].

    Computed in the dtype of ``actor`` (the caller passes a float64 copy for exactness);
    the actor is used in eval mode, its own parameters are never changed.
    """
    wrapper = LogProbModule(actor).eval()
    dtype = next(actor.parameters()).dtype
    x = x.to(dtype)
    a = a.long() if getattr(actor, "kind", None) == "categorical" else a.to(dtype)
    buffers = {f"actor.{k}": b for k, b in actor.named_buffers()}

    def logp(vec: torch.Tensor) -> torch.Tensor:
        params = {f"actor.{k}": v for k, v in unflatten(vec, actor).items()}
        return functional_call(wrapper, (params, buffers), (x, a))

    return logp


def float64_copy(actor: nn.Module) -> nn.Module:
    """A float64 copy of ``actor`` in eval mode (the exact computations run on it)."""
    return copy.deepcopy(actor).double().eval()


def logprob_change(actor: nn.Module, theta_star: torch.Tensor, theta: torch.Tensor, x: torch.Tensor,
                   a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Delta_true, Delta_lin)`` per row, in float64.

    ``Delta_true_t = log pi_theta(a_t|x_t) - log pi_theta*(a_t|x_t)`` and ``Delta_lin_t =
    g_t^T (theta - theta*)`` with ``g_t = grad_theta log pi_theta*(a_t|x_t)``, computed
    exactly (no projection) as a Jacobian-vector product: one forward-mode pass in the
    direction ``theta - theta*`` gives all rows' directional derivatives at once.

    Args:
        actor: an actor module (its architecture; its parameter values are not used).
        theta_star, theta: flat parameter vectors [p] (``flat_params`` order).
        x: inputs [N, in]; a: actions [N] or [N, act].
    """
    d_true, d_lin, _ = functional_logprob_change(functional_logprob(float64_copy(actor), x, a), theta_star, theta)
    return d_true, d_lin


def functional_logprob_change(f: Callable[[torch.Tensor], torch.Tensor], theta_star: torch.Tensor,
                              theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(Delta_true, Delta_lin, log pi_theta)`` for a float64 functional log-prob ``f``."""
    ts = theta_star.detach().to(torch.float64)
    th = theta.detach().to(torch.float64)
    with torch.no_grad():
        logp_star, d_lin = jvp(f, (ts,), (th - ts,))
        logp = f(th)
    return logp - logp_star, d_lin, logp


def relative_error(delta_true: torch.Tensor, delta_lin: torch.Tensor) -> float:
    """``||Delta_true - Delta_lin||_2 / ||Delta_true||_2`` over the rows (NaN if Delta_true = 0)."""
    num = torch.linalg.vector_norm((delta_true - delta_lin).double())
    den = torch.linalg.vector_norm(delta_true.double())
    return float(num / den) if float(den) > 0 else float("nan")
