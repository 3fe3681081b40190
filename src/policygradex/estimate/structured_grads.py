"""The features of a structured projection: ``P^T grad log pi(a_t | x_t)`` per row for a
:class:`.structured.StructuredProjector` (:func:`structured_projected_grads`), from one batched
forward and backward per chunk, no per-sample weight gradient formed except the head's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from .persample import eval_mode, prepare_inputs
from .structured_hooks import Capture, vmap_grads

if TYPE_CHECKING:  # the projector's module re-exports this one's function
    from .structured import StructuredProjector

__all__ = ["structured_projected_grads"]


def structured_projected_grads(
    actor: nn.Module,
    x: torch.Tensor,
    a: torch.Tensor,
    projector: StructuredProjector,
    chunk_size: int,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """``P^T grad log pi(a_t | x_t)`` per row for a :class:`StructuredProjector`, ``[N, d]``.

    One batched forward + ``autograd.grad`` per chunk gives every linear layer's ``delta`` and
    ``a``; Khatri-Rao blocks are ``(delta U) * (a V)``; the dense part's per-sample gradients
    (last layer ``delta a^T``, biases ``delta``, fallback parameters from ``vmap(grad)``) are
    assembled into one ``[B, p_dense]`` buffer and multiplied by its random matrix (or, for an
    identity dense part, assembled directly in the output).
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    projector.check_actor(actor)
    x, a = prepare_inputs(actor, x, a)
    modules = dict(actor.named_modules())
    missing = [layer.module for layer in projector.layers if not isinstance(modules.get(layer.module), nn.Linear)]
    if missing:
        raise ValueError(f"the actor has no linear module {missing[0]!r} (the structured projector was fitted to another network)")
    mods = [modules[layer.module] for layer in projector.layers]
    kr_pos = [i for i, layer in enumerate(projector.layers) if layer.role == "khatri_rao"]
    vmap_names = [prm.name for prm in projector.dense if prm.source == "vmap"]
    dtype = projector.dtype
    factors = [(U.to(x.device), V.to(x.device)) for U, V in projector.factors()]
    M = projector.dense_matrix()
    M = M.to(x.device) if M is not None else None
    n = x.shape[0]
    out = torch.empty(n, projector.d, dtype=dtype, device=x.device)
    gd = (torch.empty(min(chunk_size, n), projector.p_dense, dtype=dtype, device=x.device)
          if projector.p_dense and not projector.dense_identity else None)
    with eval_mode(actor):
        cap = Capture(actor, mods)
        try:
            for start in range(0, n, chunk_size):
                stop = min(start + chunk_size, n)
                b = stop - start
                if mods:
                    with torch.enable_grad():
                        _, deltas, inputs = cap.run(x[start:stop], a[start:stop])
                with torch.no_grad():
                    for li, (U, V), sl in zip(kr_pos, factors, projector.slices):
                        out[start:stop, sl] = (deltas[li].to(dtype) @ U) * (inputs[li].to(dtype) @ V)
                    if projector.p_dense:
                        # an identity dense block is assembled in place in the output
                        buf = out[start:stop, projector.dense_slice] if projector.dense_identity else gd[:b]
                        vg = vmap_grads(actor, x[start:stop], a[start:stop], vmap_names) if vmap_names else {}
                        col = 0
                        for prm in projector.dense:
                            seg = buf[:, col : col + prm.numel]
                            if prm.source == "weight":
                                layer = projector.layers[prm.layer]
                                seg.view(b, layer.out, layer.inp).copy_(deltas[prm.layer].unsqueeze(2) * inputs[prm.layer].unsqueeze(1))
                            elif prm.source == "bias":
                                seg.copy_(deltas[prm.layer])
                            else:
                                seg.copy_(vg[prm.name].reshape(b, prm.numel))
                            col += prm.numel
                        if not projector.dense_identity:
                            out[start:stop, projector.dense_slice] = projector.dense_project(buf, M)
                if progress is not None:
                    progress(b)
        finally:
            cap.remove()
    return out
