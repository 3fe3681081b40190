"""The batched products of the surrogate's solver (:mod:`.surrogate_solver`) for one chunk of
subsets (:class:`Chunk`): margins, gradients, Hessian-vector products over the data or from the
Gram matrices, the objective along a direction; and batched preconditioned CG (:func:`pcg`) on
them.  The formulas are in the docstring of :mod:`.surrogate`.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor

from .surrogate_blocks import F32, PRECOND_DTYPE, TaskBlocks
from .surrogate_checks import DTYPE
from .surrogate_precond import Jacobi, Preconditioner

__all__ = ["Chunk", "Hvp", "pcg"]

# Per task block: the block-local positions of the selected subsets (None: all of them) and
# their chunk-local indices.
_Sel = Dict[int, Tuple[Optional[Tensor], Tensor]]


class Chunk:
    """Batched objective, gradient and Hessian-vector products for a chunk of subsets.

    Margins ``a_t = y_t g_t^T u_S`` are kept per task block as ``[m_i, N_i]`` matrices (``m_i``
    the subsets of the chunk that contain task ``i``), in the data dtype ``dt`` (float32 when
    ``fast``, float64 otherwise).
    """

    def __init__(self, data: TaskBlocks, members: Tensor, lam: float, fast: bool):
        self.data = data
        self.lam = lam
        self.dt = F32 if fast else DTYPE
        self.m = members.shape[0]
        mf = members.to(DTYPE)
        self.n_rows = mf @ data.counts  # [m]
        self.inv_n = 1.0 / self.n_rows
        # per task: the (chunk-local) indices of the subsets that contain it
        self.subs: list[Tensor] = [torch.nonzero(members[:, i]).flatten() for i in range(data.n)]
        self.tasks = [i for i in range(data.n) if self.subs[i].numel() and data.sizes[i]]
        self.Gy = {i: data.Gy(i, self.dt) for i in self.tasks}
        self.wd = {i: (data.w32 if fast else data.w)[data.rows[i]] for i in self.tasks}
        self.grad0 = -(mf @ data.b) * (0.5 * self.inv_n)[:, None]

    def select(self, mask: Tensor) -> _Sel:
        """Per task block, the subsets of ``mask`` that contain the task (blocks with none omitted)."""
        if bool(mask.all()):
            return {i: (None, self.subs[i]) for i in self.tasks}
        out = {}
        for i in self.tasks:
            keep = torch.nonzero(mask.index_select(0, self.subs[i])).flatten()
            if keep.numel():
                out[i] = (keep, self.subs[i].index_select(0, keep))
        return out

    def zeros(self) -> dict[int, Tensor]:
        return {
            i: torch.zeros(self.subs[i].numel(), self.data.sizes[i], dtype=self.dt, device=self.data.device)
            for i in self.tasks
        }

    def margins(self, V: Tensor, sel: _Sel) -> dict[int, Tensor]:
        """``y_t g_t^T v_S`` for the selected subsets: full ``[m_i, N_i]`` blocks, zero elsewhere."""
        Vd = V.to(self.dt)
        out = {}
        for i in self.tasks:
            if i not in sel:
                out[i] = torch.zeros(self.subs[i].numel(), self.data.sizes[i], dtype=self.dt, device=V.device)
                continue
            keep, sub = sel[i]
            Z = Vd.index_select(0, sub) @ self.Gy[i].T
            if keep is not None:
                full = torch.zeros(self.subs[i].numel(), Z.shape[1], dtype=self.dt, device=V.device)
                Z = full.index_copy_(0, keep, Z)
            out[i] = Z
        return out

    def gradient(self, A: dict[int, Tensor], u: Tensor, sel: _Sel) -> Tensor:
        """Gradient ``[m, d]`` (float64) on the selected subsets (other rows: ``g0 + lam u``).

        ``grad = g0 + lam u + G^T (w y (sigmoid(a) - 1/2)) / |D_S|``: only the last term, whose
        coefficients are ``w |a| / 4`` at most, needs a pass over the data.  Also records the
        curvature ``s (1 - s)`` of the selected subsets' rows in :attr:`curv`.
        """
        grad = self.grad0 + self.lam * u
        for i, (keep, sub) in sel.items():
            a = A[i] if keep is None else A[i].index_select(0, keep)
            s = torch.sigmoid(a)
            c = s * (1.0 - s)
            if keep is None:
                self.curv[i] = c
            else:
                self.curv[i].index_copy_(0, keep, c)
            e = s.sub_(0.5).mul_(self.wd[i])
            grad.index_add_(0, sub, (e @ self.Gy[i]).to(DTYPE) * self.inv_n.index_select(0, sub)[:, None])
        return grad

    def weighted_curvature(self) -> dict[int, Tensor]:
        """``w s (1 - s)`` per block, the row weights of the Hessian (times ``|D_S|``)."""
        return {i: self.curv[i] * self.wd[i] for i in self.tasks}

    def reset_curvature(self) -> None:
        """The curvature at ``u = 0``: ``s (1 - s) = 1/4``."""
        self.curv = {i: torch.full_like(z, 0.25) for i, z in self.zeros().items()}

    def curvature_along(self, Zp: dict[int, Tensor], sel: _Sel) -> Tensor:
        """``sum_t w_t s_t (1 - s_t) z_t^2 / |D_S|`` (float64, ``[m]``; zero off the selection):
        the data part of ``p^T H(u) p`` for a direction with margins ``z``."""
        out = torch.zeros(self.m, dtype=DTYPE, device=self.data.device)
        for i, (keep, sub) in sel.items():
            z = Zp[i] if keep is None else Zp[i].index_select(0, keep)
            c = self.curv[i] if keep is None else self.curv[i].index_select(0, keep)
            q = (z * z).mul_(c) @ self.wd[i]
            out.index_add_(0, sub, q.to(DTYPE) * self.inv_n.index_select(0, sub))
        return out

    def line_blocks(
        self, A: dict[int, Tensor], Zp: dict[int, Tensor], sel: _Sel
    ) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
        """Float64 margins of the selected subsets' rows and of a direction, for :meth:`loss_at`."""
        out = []
        for i, (keep, sub) in sel.items():
            a = A[i] if keep is None else A[i].index_select(0, keep)
            z = Zp[i] if keep is None else Zp[i].index_select(0, keep)
            out.append((sub, a.to(DTYPE), z.to(DTYPE), self.data.w[self.data.rows[i]]))
        return out

    def loss_at(self, blocks: list[tuple[Tensor, Tensor, Tensor, Tensor]], t: Tensor, u: Tensor, P: Tensor) -> Tensor:
        """Objective (float64) at ``u + t P`` on the subsets of ``blocks`` (other rows: penalty only)."""
        ut = u + t[:, None] * P
        out = 0.5 * self.lam * (ut * ut).sum(dim=1)
        for sub, a, z, w in blocks:
            ts = t.index_select(0, sub)[:, None]
            li = torch.nn.functional.softplus(-(a + ts * z)) @ w
            out.index_add_(0, sub, li * self.inv_n.index_select(0, sub))
        return out

    def set_gram(self, gram: Tensor) -> None:
        """Use ``gram`` (``[n, d, d]``) for :meth:`hvp_gram`; lays out the batched product."""
        dev = self.data.device
        self._gram_t = gram if len(self.tasks) == self.data.n else gram[self.tasks]
        width = max((self.subs[i].numel() for i in self.tasks), default=0)
        idx = torch.zeros(len(self.tasks), width, dtype=torch.int64, device=dev)
        scale = torch.zeros(len(self.tasks), width, dtype=DTYPE, device=dev)
        for k, i in enumerate(self.tasks):
            sub = self.subs[i]
            idx[k, : sub.numel()] = sub
            scale[k, : sub.numel()] = 0.25 * self.inv_n.index_select(0, sub)
        self._gram_idx = idx.flatten()
        self._gram_scale = scale  # zero on the padding

    def hvp_gram(self, V: Tensor, active: Tensor) -> tuple[Tensor, dict[int, tuple[Tensor | None, Tensor]]]:
        """``H0_S v_S = sum_{i in S} Gamma_i v_S / (4 |D_S|) + lam v_S`` from the Gram matrices.

        ``d^2`` instead of ``2 N_i d`` multiply-adds per task and subset, in ``PRECOND_DTYPE``,
        as one batched product over the tasks; returns no data products.
        """
        out = self.lam * V * active[:, None]
        if not self.tasks:
            return out, {}
        T, width = self._gram_scale.shape
        X = V.to(PRECOND_DTYPE).index_select(0, self._gram_idx).view(T, width, -1)
        scale = self._gram_scale * active.to(DTYPE).index_select(0, self._gram_idx).view(T, width)
        Y = torch.bmm(X, self._gram_t).mul_(scale.to(PRECOND_DTYPE)[:, :, None])
        acc = torch.zeros(V.shape, dtype=PRECOND_DTYPE, device=V.device)
        acc.index_add_(0, self._gram_idx, Y.view(T * width, -1))
        return out.add_(acc.to(DTYPE)), {}

    def hvp_data(
        self, S: dict[int, Tensor], V: Tensor, active: Tensor
    ) -> tuple[Tensor, dict[int, tuple[Tensor | None, Tensor]]]:
        """``H_S v_S`` on the active subsets (zero rows elsewhere), in the data dtype.

        ``S`` holds ``w s (1 - s)`` per block (:meth:`weighted_curvature`).  Also returns, per
        task block, ``(rows, y * G_i v)``: the products for the active subsets (``rows`` indexes
        the block's subsets; ``None`` means all of them).
        """
        out = self.lam * V * active[:, None]
        products: dict[int, tuple[Tensor | None, Tensor]] = {}
        Vd = V.to(self.dt)
        for i, (keep, sub) in self.select(active).items():
            Si = S[i] if keep is None else S[i].index_select(0, keep)
            Z = Vd.index_select(0, sub) @ self.Gy[i].T
            out.index_add_(0, sub, ((Si * Z) @ self.Gy[i]).to(DTYPE) * self.inv_n.index_select(0, sub)[:, None])
            products[i] = (keep, Z)
        return out, products


Hvp = Callable[[Tensor, Tensor], "tuple[Tensor, dict[int, tuple[Tensor | None, Tensor]]]"]


def pcg(
    chunk: Chunk,
    precond: Preconditioner | Jacobi,
    hvp: Hvp,
    rhs: Tensor,
    active: Tensor,
    eta: Tensor,
    max_cg: int,
    products: bool = False,
) -> tuple[Tensor, dict[int, Tensor] | None, int]:
    """Batched preconditioned CG for ``H_S p = rhs_S`` on the active subsets.

    Each subset stops once its residual is below ``eta`` times the initial one (or stays at
    zero when inactive).  Returns the solution ``P``, with ``products`` the margins
    ``y_t g_t^T p`` per task block (accumulated from the products the data Hessian-vector
    products return; zero on the rows of inactive subsets), and the number of batched
    iterations.
    """
    P = torch.zeros_like(rhs)
    GP = chunk.zeros() if products else None
    R = rhs * active[:, None]
    Z = precond.apply(R)
    Dir = Z.clone()
    rz = (R * Z).sum(dim=1)
    r0 = R.norm(dim=1)
    live = active & (r0 > 0)
    iters = 0
    while iters < max_cg and bool(live.any()):
        Hd, prods = hvp(Dir, live)
        iters += 1
        dHd = (Dir * Hd).sum(dim=1)
        pos = dHd > 0
        alpha = torch.where(live & pos, rz / torch.where(pos, dHd, 1.0), 0.0)
        P.add_(alpha[:, None] * Dir)
        if GP is not None:
            for i, (keep, Zi) in prods.items():
                a = alpha.index_select(0, chunk.subs[i]).to(chunk.dt)
                if keep is None:
                    GP[i].add_(a[:, None] * Zi)
                else:
                    GP[i].index_add_(0, keep, a.index_select(0, keep)[:, None] * Zi)
        R.sub_(alpha[:, None] * Hd)
        live = live & pos & (R.norm(dim=1) > eta * r0)
        if not bool(live.any()):
            break
        Z = precond.apply(R)
        rz_new = (R * Z).sum(dim=1)
        nz = rz != 0
        beta = torch.where(live & nz, rz_new / torch.where(nz, rz, 1.0), 0.0)
        Dir = Z + beta[:, None] * Dir
        rz = rz_new
    return P, GP, iters
