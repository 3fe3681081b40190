"""The data of the stage-3 surrogate (:mod:`.surrogate`), laid out once per run: the training rows
grouped by task, and the per-task statistics every fit of the run reuses (:class:`TaskBlocks`).

Rows are grouped by task so that a product over a subset's rows is a sum over its tasks of
products with each task's block, and the per-task Gram matrices ``Gamma_i = G_i^T diag(w_i) G_i``
give the curvature bound of the majorization steps without a pass over the data (see the
docstring of :mod:`.surrogate`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .surrogate_checks import DTYPE

__all__ = ["F32", "PRECOND_DTYPE", "TaskBlocks"]

#: The dtype of the fast data products (margins, gradients, Hessian-vector products).
F32 = torch.float32
#: The Gram matrices, the H0 products and the exact preconditioner run in float32: they only
#: choose search directions.
PRECOND_DTYPE = torch.float32


class TaskBlocks:
    """Training rows grouped by task, with the statistics every fit of a run reuses.

    The training rows are ordered by task (a view of ``G`` when they already are, a copy
    otherwise).  Per task ``i`` the data products use ``Gy_i = diag(y_i) G_i`` (margins:
    ``y_t g_t^T u = (Gy_i u)_t``; gradients and Hessian-vector products fold the weights into
    their row coefficients), in float32 (built once) or float64 (built on first use, for
    tight tolerances).  Also ``b_i = G_i^T (w_i y_i)`` in float64 (the gradient at 0 is
    ``-sum_{i in S} b_i / (2 |D_S|)``) and, on first use, the per-task Gram matrices
    ``Gamma_i = G_i^T diag(w_i) G_i``.
    """

    def __init__(self, G: Tensor, y: Tensor, w: Tensor, task: Tensor, train_mask: Tensor, n: int):
        self.d = G.shape[1]
        self.device = G.device
        keyed = torch.where(train_mask, task, n)  # held-out rows sort last
        counts = torch.bincount(keyed, minlength=n + 1)[:n]
        n_train = int(counts.sum())
        order = torch.argsort(keyed, stable=True)[:n_train]
        if bool((order == torch.arange(n_train, device=self.device)).all()):
            self._G = G[:n_train]  # already grouped by task: no copy
            self.y, self.w = y[:n_train], w[:n_train]
        else:
            self._G = G.index_select(0, order)
            self.y, self.w = y[order], w[order]
        self.w32 = self.w.to(F32)
        self.counts = counts.to(DTYPE)
        bounds = [0, *torch.cumsum(counts, 0).tolist()]
        self.rows = [slice(bounds[i], bounds[i + 1]) for i in range(n)]
        self.sizes = [bounds[i + 1] - bounds[i] for i in range(n)]
        wy = self.w * self.y
        self.b = torch.zeros(n, self.d, dtype=DTYPE, device=self.device)
        for i, r in enumerate(self.rows):
            if self.sizes[i]:
                self.b[i] = wy[r] @ self._G[r]
        gy = self._G.to(F32)  # a copy, scaled in place
        gy.mul_(self.y.to(F32)[:, None])
        self._Gy = {F32: gy}
        self._gram: Tensor | None = None
        self._gram_lowp: Tensor | None = None

    @property
    def n(self) -> int:
        return len(self.rows)

    def Gy(self, i: int, dtype: torch.dtype) -> Tensor:
        """``diag(y_i) G_i`` in ``dtype`` (float32, or float64 built on first use)."""
        if dtype not in self._Gy:
            self._Gy[dtype] = (self._G * self.y[:, None]).to(dtype)
        return self._Gy[dtype][self.rows[i]]

    def _gram_from(self, dtype: torch.dtype) -> Tensor:
        """``Gamma_i = X_i^T X_i``, ``X_i = diag(sqrt(w_i)) G_i`` rounded to ``dtype``: the upper
        block triangle (a quarter of the columns at a time, 5/8 of the full product), mirrored,
        so the result is exactly symmetric (as CG needs)."""
        d = self.d
        gram = torch.zeros(self.n, d, d, dtype=PRECOND_DTYPE, device=self.device)
        cuts = [round(k * d / 4) for k in range(5)]
        for i in range(self.n):
            if self.sizes[i]:
                x = (self.Gy(i, F32) * self.w32[self.rows[i]].sqrt()[:, None]).to(dtype)
                for a, b in zip(cuts[:-1], cuts[1:]):
                    if b > a:
                        gram[i, a:b, a:] = x[:, a:b].T @ x[:, a:]
        upper = gram.triu()
        return upper + upper.transpose(1, 2).tril(-1)

    @property
    def gram(self) -> Tensor:
        """``[n, d, d]`` in ``PRECOND_DTYPE``: ``Gamma_i = G_i^T diag(w_i) G_i``."""
        if self._gram is None:
            self._gram = self._gram_from(PRECOND_DTYPE)
        return self._gram

    @property
    def gram_lowp(self) -> Tensor:
        """The Gram matrices from bfloat16 products where the CPU has native bfloat16 dot
        products (about 3x faster than float32; relative error about 1e-3), else :attr:`gram`."""
        if self._gram_lowp is None:
            self._gram_lowp = self._gram_from(torch.bfloat16) if _fast_bf16(self.device) else self.gram
        return self._gram_lowp

    @property
    def gram_diag(self) -> Tensor:
        """``[n, d]`` float64: the diagonals of the Gram matrices (from :attr:`gram_lowp`)."""
        return self.gram_lowp.diagonal(dim1=1, dim2=2).to(DTYPE)


def _fast_bf16(device: torch.device) -> bool:
    """Whether bfloat16 matrix products run natively (AVX512-BF16 or AMX) on this CPU."""
    if device.type != "cpu":
        return False
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        probe = getattr(torch.cpu, name, None)
        try:
            if probe is not None and bool(probe()):
                return True
        except Exception:  # noqa: BLE001 - a private probe; no answer means no
            pass
    return False
