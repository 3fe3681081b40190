"""The policy seen as a function of its flat parameter vector: what every per-sample gradient
(:mod:`.features`, :mod:`.structured`), first-order error (:mod:`.first_order`) and gradient
baseline (:mod:`policygradex.compare.groupings`) builds on.

The actor's parameters are flattened in ``named_parameters`` order (:func:`flat_params`) and
split back by :func:`unflatten`; :class:`LogProbModule` makes ``actor.log_prob`` the
``forward`` that ``torch.func.functional_call`` invokes.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

__all__ = ["actor_params", "flat_params", "unflatten", "LogProbModule", "functional_params", "eval_mode", "prepare_inputs"]


def actor_params(actor: nn.Module) -> dict[str, torch.Tensor]:
    """The actor's parameters, detached, in ``named_parameters`` order."""
    return {name: p.detach() for name, p in actor.named_parameters()}


def flat_params(actor: nn.Module) -> torch.Tensor:
    """All actor parameters as one vector ``[p]``, in ``named_parameters`` order."""
    return torch.cat([p.detach().reshape(-1) for p in actor.parameters()])


def unflatten(vec: torch.Tensor, actor: nn.Module) -> dict[str, torch.Tensor]:
    """Split a ``[p]`` vector into tensors shaped like the actor's parameters (views of ``vec``)."""
    params = actor_params(actor)
    p = sum(t.numel() for t in params.values())
    if vec.dim() != 1 or vec.numel() != p:
        raise ValueError(f"vec must have shape [{p}] (the actor's parameter count), got {tuple(vec.shape)}")
    out: dict[str, torch.Tensor] = {}
    offset = 0
    for name, t in params.items():
        out[name] = vec[offset : offset + t.numel()].view(t.shape)
        offset += t.numel()
    return out


class LogProbModule(nn.Module):
    """Makes ``actor.log_prob`` the ``forward`` that ``functional_call`` invokes."""

    def __init__(self, actor: nn.Module) -> None:
        super().__init__()
        self.actor = actor

    def forward(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self.actor.log_prob(x, a)


def functional_params(actor: nn.Module, requires_grad: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(parameters, buffers)`` of ``actor`` for ``functional_call`` on a :class:`LogProbModule`
    (names prefixed ``actor.``), detached; the parameters require grad when ``requires_grad``
    (an autograd pass to the layers' outputs) and not otherwise (``torch.func.grad``)."""
    params = {f"actor.{n}": p.detach().requires_grad_(requires_grad) for n, p in actor.named_parameters()}
    buffers = {f"actor.{n}": b.detach() for n, b in actor.named_buffers()}
    return params, buffers


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Run the block with ``module`` in eval mode, then restore its training flag."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def prepare_inputs(actor: nn.Module, x: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Check shapes and cast ``x`` (and a Gaussian ``a``) to the actor's dtype."""
    first = next(actor.parameters(), None)
    if first is None:
        raise ValueError("the actor has no parameters")
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError(f"x must be a [N, in] tensor, got {getattr(x, 'shape', type(x).__name__)}")
    if not isinstance(a, torch.Tensor) or a.dim() not in (1, 2) or a.shape[0] != x.shape[0]:
        raise ValueError(f"a must be a [N] or [N, act] tensor with N = {x.shape[0]}, got {getattr(a, 'shape', type(a).__name__)}")
    # computed where the actor lives (a GPU when the pipeline put it there); results are stored
    # on the inputs' device by the callers
    x = x.to(device=first.device, dtype=first.dtype)
    a = a.to(first.device).long() if getattr(actor, "kind", None) == "categorical" else a.to(device=first.device, dtype=first.dtype)
    return x, a
