"""PCGrad (Yu et al. 2020, "Gradient Surgery for Multi-Task Learning") as a PPO update hook.

For per-task gradients ``g_1..g_T`` of one minibatch, each ``g_i`` is projected, in a random
order of the other tasks, onto the normal plane of every ``g_j`` it conflicts with:

    g_i <- g_i - (g_i . g_j) / ||g_j||^2 * g_j      whenever g_i . g_j < 0

(``g_j`` the *original* gradient of task j; ``g_i`` the running, already projected one), and
the update direction is ``sum_i g_i``.  Without conflicts this is the ordinary gradient.

In the PPO update the per-task losses are the minibatch's per-sample PPO losses (clipped policy
term - entropy bonus + value term) of each task, summed and divided by the minibatch size,
so that ``sum_i g_i`` without surgery equals the gradient of the usual minibatch-mean loss.
Surgery is applied to the flattened gradient of all parameters (actor and critic are both
shared by every task; the task is an input).  Gradient clipping applies to the combined
gradient afterwards, as in the ordinary update.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["pcgrad_coefficients", "pcgrad_combine", "PCGrad"]


def pcgrad_coefficients(gram: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """Coefficients ``c`` with ``sum_i g_i^PC = sum_j c_j g_j``, from the Gram matrix ``K = G G^T``.

    Every projection only ever subtracts multiples of original gradients, so each ``g_i^PC``
    stays in their span: ``g_i^PC = sum_j C_ij g_j``, and ``g_i^PC . g_j = C_i . K[:, j]``.
    The surgery therefore runs on a ``T x T`` matrix, whatever the number of parameters.
    """
    K = np.asarray(gram, dtype=np.float64)
    T = K.shape[0]
    rng = rng if rng is not None else np.random.default_rng(0)
    C = np.eye(T)
    for i in range(T):
        for j in rng.permutation(T):
            if j == i or K[j, j] <= 0:
                continue
            dot = C[i] @ K[:, j]
            if dot < 0:
                C[i, j] -= dot / K[j, j]
    return C.sum(0)


def pcgrad_combine(grads: torch.Tensor, generator: np.random.Generator | int | None = None) -> torch.Tensor:
    """The PCGrad direction ``sum_i g_i^PC`` of per-task gradients ``grads`` [T, p].

    ``generator``: the random order of the projections (a numpy Generator or a seed)."""
    if grads.dim() != 2:
        raise ValueError(f"grads must be [tasks, params], got shape {tuple(grads.shape)}")
    rng = generator if isinstance(generator, np.random.Generator) else np.random.default_rng(generator)
    G64 = grads.detach().double()
    c = pcgrad_coefficients((G64 @ G64.T).numpy(), rng)
    return (torch.as_tensor(c) @ G64).to(grads.dtype)


class PCGrad:
    """A ``grad_surgery`` hook for :func:`policygradex.rl.ppo.ppo_update`.

    ``conflicts`` and ``pairs`` count, over all calls, the task pairs whose gradients
    conflicted and the pairs compared (a diagnostic recorded by ``compare``).
    """

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.conflicts = 0
        self.pairs = 0

    def __call__(self, model: nn.Module, per_sample_loss: torch.Tensor, task_of: torch.Tensor) -> None:
        params = [p for p in model.parameters() if p.requires_grad]
        B = per_sample_loss.numel()
        tasks = torch.unique(task_of)
        # one batched backward: row t of the cotangent selects task t's samples (weight 1/B)
        W = (task_of.unsqueeze(0) == tasks.unsqueeze(1)).to(per_sample_loss.dtype) / B
        gs = torch.autograd.grad(per_sample_loss, params, grad_outputs=W, is_grads_batched=True, allow_unused=True)
        G = torch.cat([(torch.zeros(len(tasks), p.numel(), dtype=p.dtype) if g is None else g.reshape(len(tasks), -1))
                       for p, g in zip(params, gs)], dim=1)
        G64 = G.double()
        K = (G64 @ G64.T).numpy()
        T = len(tasks)
        if T > 1:
            iu = np.triu_indices(T, 1)
            self.conflicts += int((K[iu] < 0).sum())
            self.pairs += len(iu[0])
        combined = (torch.as_tensor(pcgrad_coefficients(K, self.rng)) @ G64).to(G.dtype)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = combined[offset:offset + n].view_as(p).clone()
            offset += n
