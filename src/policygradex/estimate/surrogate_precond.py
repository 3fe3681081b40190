"""Preconditioners of the surrogate's linear systems (:mod:`.surrogate_solver`): the diagonal of
``H0_S = C_S + lam I`` (Jacobi) or its Cholesky factor, chosen by how far the data's curvature
bound dominates ``lam`` (see the docstring of :mod:`.surrogate`, "Preconditioners").
"""

from __future__ import annotations

import torch
from torch import Tensor

from .surrogate_blocks import PRECOND_DTYPE, TaskBlocks
from .surrogate_checks import DTYPE

__all__ = ["Jacobi", "Preconditioner"]

# Preconditioners and Gram matrices by r = max_S trace(C_S) / lam (cond(H0_S) <= 1 + r), see
# Preconditioner: Newton systems use Jacobi up to _JACOBI_TRACE_RATIO, the Cholesky factor of
# H0 beyond (factorised up front beyond _CHOLESKY_TRACE_RATIO); H0 products use the
# low-precision Gram matrices up to _LOWP_TRACE_RATIO.
_JACOBI_TRACE_RATIO = 2.0
_CHOLESKY_TRACE_RATIO = 100.0
_LOWP_TRACE_RATIO = 10.0


class Preconditioner:
    """Preconditioner for the linear systems of a chunk: the diagonal of ``H0_S`` or ``H0_S``.

    ``H0_S = C_S + lam I`` with ``C_S = sum_{i in S} Gamma_i / (4 |D_S|)``; with
    ``r = max_S trace(C_S) / lam`` (``cond(H0_S) <= 1 + r``):

    * the systems in ``H0_S`` (majorization steps) use the diagonal (Jacobi): their products
      come from the Gram matrices, cheap enough that CG iterations cost less than the ``m``
      factorisations of an exact preconditioner (4 iterations at ``r = 1``, about 40 at
      ``r = 1000`` on the benchmark data);
    * the Newton systems, whose products are passes over the data, use the Cholesky factor of
      ``H0_S`` (in ``PRECOND_DTYPE``: it only steers CG, and float32 halves the factorisation
      time and the memory traffic of every application, two batched triangular solves that
      read all ``m`` factors) once ``r > _JACOBI_TRACE_RATIO``; it is factorised on the first
      Newton step (:meth:`exact`), or at once when ``r > _CHOLESKY_TRACE_RATIO``, where
      Newton steps are all but certain and Jacobi would need many iterations; once there it
      serves every system.

    The Gram matrices of the products (:attr:`gram`) are the low-precision ones where
    ``r <= _LOWP_TRACE_RATIO`` (their error is then small against ``lam``), else float32.
    """

    def __init__(self, data: TaskBlocks, members: Tensor, inv_n: Tensor, lam: float):
        self.data, self.members, self.inv_n, self.lam = data, members, inv_n, lam
        diag = (members.to(DTYPE) @ data.gram_diag) * (0.25 * inv_n)[:, None]  # diag(C_S), [m, d]
        self.ratio = float((diag.sum(dim=1) / lam).max()) if members.shape[0] else 0.0
        self.inv_diag = 1.0 / (diag + lam)
        self.gram = data.gram_lowp if self.ratio <= _LOWP_TRACE_RATIO else data.gram
        self.chol: Tensor | None = None
        if self.ratio > _CHOLESKY_TRACE_RATIO:
            self.exact()

    @property
    def kind(self) -> str:
        return "jacobi" if self.chol is None else "cholesky"

    def exact(self) -> None:
        """Factorise ``H0_S`` (for the Newton systems) unless lam dominates it."""
        if self.chol is not None or self.ratio <= _JACOBI_TRACE_RATIO:
            return
        n, d, m = self.data.n, self.data.d, self.members.shape[0]
        H = (self.members.to(PRECOND_DTYPE) @ self.gram.reshape(n, d * d)).reshape(m, d, d)
        H.mul_((0.25 * self.inv_n).to(PRECOND_DTYPE)[:, None, None])
        H.diagonal(dim1=1, dim2=2).add_(self.lam)
        self.chol = _cholesky(H)

    def apply(self, R: Tensor) -> Tensor:
        L = self.chol
        if L is None:
            return R * self.inv_diag
        z = torch.linalg.solve_triangular(L, R.to(PRECOND_DTYPE).unsqueeze(-1), upper=False)
        z = torch.linalg.solve_triangular(L.transpose(1, 2), z, upper=True)
        return z.squeeze(-1).to(R.dtype)


def _cholesky(H: Tensor) -> Tensor:
    """Batched Cholesky; adds a little jitter where round-off makes ``H`` indefinite."""
    L, info = torch.linalg.cholesky_ex(H)
    jitter = 10 * torch.finfo(H.dtype).eps
    while bool((info > 0).any()):  # only for lam tiny against the data scale
        bad = info > 0
        scale = H[bad].diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(torch.finfo(H.dtype).tiny)
        Hb = H[bad].clone()
        Hb.diagonal(dim1=1, dim2=2).add_(jitter * scale[:, None])
        Lb, infob = torch.linalg.cholesky_ex(Hb)
        L[bad], info[bad] = Lb, infob
        jitter *= 100.0
    return L


class Jacobi:
    """Diagonal preconditioner (the interface of :class:`Preconditioner`)."""

    kind = "jacobi"

    def __init__(self, inv_diag: Tensor):
        self.inv_diag = inv_diag

    def apply(self, R: Tensor) -> Tensor:
        return R * self.inv_diag
