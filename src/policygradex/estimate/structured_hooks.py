"""What the structured projector (:mod:`.structured`) reads off the actor: every linear layer's
``delta_t`` and input ``a_t`` from one batched forward and backward with hooks (:class:`Capture`),
and per-sample gradients from ``vmap(grad)`` (:func:`vmap_grads`, :func:`vmap_logp_and_grads`)
where the shortcut does not apply, or to check it.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from .persample import LogProbModule, functional_params

__all__ = ["Capture", "inputs_sq", "spread", "vmap_grads", "vmap_logp_and_grads"]


class Capture:
    """Forward hooks on the given linear modules: input ``a`` and output ``z`` of each call.

    ``run(x, a)`` does one batched forward of ``log_prob`` (through ``functional_call`` with
    detached parameters that require grad, so the outputs are on the graph but the actor's own
    ``.grad`` is never touched) and one ``autograd.grad`` of ``sum_t log pi_t`` to every ``z``
    at once, returning ``(logp [B], deltas, inputs)``; ``calls``, ``input_dims`` and
    ``first_call`` record how each module was used (the last call is kept).
    """

    def __init__(self, actor: nn.Module, modules: Sequence[nn.Module]) -> None:
        self.actor = actor
        self.modules = list(modules)
        self.calls = [0] * len(self.modules)
        self.input_dims = [0] * len(self.modules)
        self.first_call = [math.inf] * len(self.modules)
        self._clock = 0
        self._io: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.modules)
        self._handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self.modules)]
        self._wrapper = LogProbModule(actor)

    def _hook(self, i: int) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            self.calls[i] += 1
            self.input_dims[i] = inputs[0].dim()
            if self.first_call[i] == math.inf:
                self.first_call[i] = self._clock
            self._clock += 1
            self._io[i] = (inputs[0], output)

        return hook

    def run(self, x: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor | None], list[torch.Tensor | None]]:
        """``(logp, deltas, inputs)``; a module that was not called gets ``None`` in both lists."""
        self._io = [None] * len(self.modules)
        params, buffers = functional_params(self.actor, True)
        logp = functional_call(self._wrapper, (params, buffers), (x, a))
        called = [i for i, io in enumerate(self._io) if io is not None and io[1].requires_grad]
        outs = [self._io[i][1] for i in called]  # type: ignore[index]
        grads = torch.autograd.grad(logp.sum(), outs, allow_unused=True) if outs else ()
        deltas: list[torch.Tensor | None] = [None] * len(self.modules)
        inputs: list[torch.Tensor | None] = [None] * len(self.modules)
        for i, g in zip(called, grads):
            z = self._io[i][1]  # type: ignore[index]
            deltas[i] = torch.zeros_like(z).detach() if g is None else g.detach()
            inputs[i] = self._io[i][0].detach()  # type: ignore[index]
        self._io = [None] * len(self.modules)
        return logp.detach(), deltas, inputs

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def vmap_logp_and_grads(actor: nn.Module, x: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-sample ``log pi`` and gradients over every parameter, one unbatched sample at a time under vmap."""
    wrapper = LogProbModule(actor)
    params, buffers = functional_params(actor, False)

    def f(prm: dict[str, torch.Tensor], xs: torch.Tensor, acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = functional_call(wrapper, (prm, buffers), (xs, acts))
        return out, out

    with torch.no_grad():
        grads, logp = vmap(grad(f, has_aux=True), in_dims=(None, 0, 0))(params, x, a)
    return logp, {k[len("actor."):]: v for k, v in grads.items()}


def vmap_grads(actor: nn.Module, x: torch.Tensor, a: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Per-sample gradients over the parameters ``names`` only (the others held fixed)."""
    wrapper = LogProbModule(actor)
    params, buffers = functional_params(actor, False)
    keys = [f"actor.{n}" for n in names]
    var = {k: params[k] for k in keys}
    fixed = {k: v for k, v in params.items() if k not in var}

    def f(v: dict[str, torch.Tensor], xs: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
        return functional_call(wrapper, ({**fixed, **v}, buffers), (xs, acts))

    with torch.no_grad():
        grads = vmap(grad(f), in_dims=(None, 0, 0))(var, x, a)
    return {k[len("actor."):]: v for k, v in grads.items()}


def spread(n: int, k: int) -> torch.Tensor:
    """``k`` evenly spaced row indices of ``range(n)`` (deterministic)."""
    if k >= n:
        return torch.arange(n)
    return torch.linspace(0, n - 1, k, dtype=torch.float64).round().long()


def inputs_sq(a: torch.Tensor) -> torch.Tensor:
    """``||a_t||^2`` per row, in float64."""
    return a.double().pow(2).sum(1)
