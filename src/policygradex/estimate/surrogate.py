r"""Stage 3: the per-subset surrogate, a weighted L2 logistic regression, fitted for all subsets at once.

The problem
-----------
For a subset S of tasks, ``D_S`` is the set of training transitions of the tasks in S, each
with a projected gradient feature ``g_t`` (``g~_t`` in METHOD.md, ``R^d``), a label
``y_t = sign(A_t)`` and a weight ``w_t = |A_t|``.  The surrogate is

.. math::

    u_S = \arg\min_u \; L_S(u) = \frac{1}{|D_S|} \sum_{t \in D_S} w_t \log(1 + e^{-y_t g_t^\top u})
          + \frac{\lambda}{2} \lVert u \rVert^2,

no intercept, with ``|D_S|`` the number of training rows of the subset (not the weight sum).
It has the same minimiser as scikit-learn's
``LogisticRegression(C=1 / (lam * |D_S|), fit_intercept=False).fit(G, y, sample_weight=w)``,
which minimises ``C * sum_t w_t log(1 + exp(-y_t g_t^T u)) + ||u||^2 / 2``.  Because
``lam > 0`` the objective is strongly convex, so the minimiser exists and is unique even when
every label of a subset is +1 (one-class subsets, which scikit-learn refuses).

The solver: batched, preconditioned Newton-CG
---------------------------------------------
All ``m`` subsets are solved together in torch, in float64.  With ``s_t = sigmoid(y_t z_t)``,
``z_t = g_t^T u``, the gradient and Hessian-vector product of subset S are

.. math::

    \nabla L_S = -\frac{1}{|D_S|} G_S^\top (w \odot y \odot (1 - s)) + \lambda u,
    \qquad
    H_S v = \frac{1}{|D_S|} G_S^\top (w \odot s (1 - s) \odot G_S v) + \lambda v .

Rows are grouped by task, so a product over ``D_S`` is a sum over the tasks ``i in S`` of
products with the task's block ``G_i``; for each task the vectors of *all* subsets that
contain it are stacked into one matrix product (``[m_i, d] x [d, N_i]``), which never touches
the rows of tasks outside a subset.

Preconditioner.  At ``u = 0``, ``s(1 - s) = 1/4`` and the Hessian is

.. math:: H^0_S = \frac{1}{4 |D_S|} \sum_{i \in S} \Gamma_i + \lambda I, \qquad
          \Gamma_i = G_i^\top \operatorname{diag}(w_i) G_i ,

a sum of per-task Gram matrices computed once.  Its Cholesky factor preconditions the
conjugate-gradient solve of every Newton system.  In the regime this method is used in (a
relative parameter distance of about 1%, so ``|g_t^T u|`` is small), ``H^0_S`` is nearly the
exact Hessian: the first Newton step from ``u = 0`` is exact, and later steps need one to three
CG iterations.  At small ``lam`` (large ``u``) the preconditioner is still the right
curvature *shape*, which is what plain CG lacked (257 iterations in the prototype).

Forming and factorising ``m`` exact ``d x d`` Hessians at every Newton step would cost
``sum_S |D_S| d^2 + m d^3 / 3`` flops per step (for the benchmark's m = 200, N = 20,000,
d = 400: about 3e11), while a Hessian-vector product costs ``4 sum_S |D_S| d`` (about 6e9):
Newton-CG is cheaper as long as fewer than ~50 CG iterations are needed, which the
preconditioner ensures.

Globalisation is a per-subset Armijo backtracking line search.  The search direction's
margins ``y_t g_t^T p`` are computed once per step, so each trial step costs only elementwise
work, and the margins of the new iterate are updated without another matrix product.
The inner CG tolerance follows Eisenstat-Walker (``eta = min(0.5, sqrt(||g|| / ||g_0||))``).

Convergence.  Subset S has converged when ``||grad L_S(u)|| <= tol * ||grad L_S(0)||``; a
subset whose gradient at 0 is zero (all weights zero) has the exact solution ``u = 0``.

Step size: ``choose_lambda``
----------------------------
``lam`` alone does not control the size of the parameter change ``Delta = P u`` (METHOD.md,
stage 3): :func:`choose_lambda` picks one ``lam`` for the run so that the median relative
distance ``delta(u) = sqrt(u^T P^T P u) / ||theta*||`` over subsets hits a target (1% by
default), by bracketing and bisection on ``log(lam)`` (with log-log interpolation, safeguarded),
each fit warm-started from the previous one.

All returned tensors are float64 (and int64 / bool) on the CPU device of the inputs.
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["SurrogateFit", "choose_lambda", "fit_subsets"]

_DTYPE = torch.float64
# Preconditioners of one chunk of subsets take at most this many bytes (m_chunk * d * d * 8).
_PRECOND_BYTES = 2**28
_MAX_CHUNK = 256
_ARMIJO_C = 1e-4
_MAX_BACKTRACK = 40


@dataclass
class SurrogateFit:
    """The result of :func:`fit_subsets` for ``m`` subsets in ``d`` dimensions.

    Attributes
    ----------
    u : Tensor, float64, shape (m, d)
        The minimiser of each subset's objective (``Delta_S = P u_S`` in parameter space).
    lam : float
        The L2 strength the fit used.
    iterations : Tensor, int64, shape (m,)
        Newton iterations taken by each subset.
    cg_iterations : int
        Batched conjugate-gradient iterations in all (one Hessian-vector product each).
    converged : Tensor, bool, shape (m,)
        Whether ``||grad|| <= tol * ||grad at u = 0||`` was reached.
    grad_norm : Tensor, float64, shape (m,)
        Final gradient norm of each subset's objective.
    grad_norm0 : Tensor, float64, shape (m,)
        Gradient norm at ``u = 0`` (the scale the tolerance is relative to).
    n_rows : Tensor, int64, shape (m,)
        ``|D_S|``: the number of training rows of each subset.
    """

    u: Tensor
    lam: float
    iterations: Tensor
    cg_iterations: int
    converged: Tensor
    grad_norm: Tensor
    grad_norm0: Tensor
    n_rows: Tensor


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------


def _as_tensor(name: str, value: Any) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach()
    try:
        return torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"The '{name}' parameter must be a tensor or array. Got {type(value).__name__}.") from exc


def _check_positive_float(name: str, value: Any, *, allow_zero: bool = False) -> float:
    bound = "[0, inf)" if allow_zero else "(0, inf)"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"The '{name}' parameter must be a float in the range {bound}. Got {value!r} instead.")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"The '{name}' parameter must be a float in the range {bound}. Got {value!r} instead.")
    return value


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < low:
        raise ValueError(f"The '{name}' parameter must be an int in the range [{low}, inf). Got {value!r} instead.")
    return int(value)


def _validate_data(
    G: Any, y: Any, w: Any, task: Any, members: Any, train_mask: Any
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Check shapes, dtypes and ranges; return float64 / int64 / bool tensors."""
    G = _as_tensor("G", G)
    if G.ndim != 2 or G.shape[0] == 0 or G.shape[1] == 0:
        raise ValueError(f"The 'G' parameter must be a non-empty 2-D tensor of shape (N, d). Got shape {tuple(G.shape)}.")
    if not (G.is_floating_point()):
        raise ValueError(f"The 'G' parameter must be a floating-point tensor. Got dtype {G.dtype}.")
    G = G.to(_DTYPE)
    if not torch.isfinite(G).all():
        raise ValueError("The 'G' parameter must be finite (it contains NaN or inf).")
    N = G.shape[0]

    y = _as_tensor("y", y)
    if y.shape != (N,):
        raise ValueError(f"The 'y' parameter must have shape (N,) = ({N},). Got shape {tuple(y.shape)}.")
    y = y.to(_DTYPE)
    if not ((y == 1) | (y == -1)).all():
        raise ValueError("The 'y' parameter must contain only the labels +1 and -1.")

    w = _as_tensor("w", w)
    if w.shape != (N,):
        raise ValueError(f"The 'w' parameter must have shape (N,) = ({N},). Got shape {tuple(w.shape)}.")
    w = w.to(_DTYPE)
    if not torch.isfinite(w).all() or (w < 0).any():
        raise ValueError("The 'w' parameter must be finite and >= 0.")

    members = _as_tensor("members", members)
    if members.dtype != torch.bool or members.ndim != 2 or members.shape[0] == 0 or members.shape[1] == 0:
        raise ValueError(
            "The 'members' parameter must be a non-empty bool tensor of shape (m, n). "
            f"Got dtype {members.dtype} and shape {tuple(members.shape)}."
        )
    n = members.shape[1]

    task = _as_tensor("task", task)
    if task.shape != (N,) or task.is_floating_point() or task.dtype == torch.bool or task.is_complex():
        raise ValueError(
            f"The 'task' parameter must be an integer tensor of shape (N,) = ({N},). "
            f"Got dtype {task.dtype} and shape {tuple(task.shape)}."
        )
    task = task.to(torch.int64)
    if N and (int(task.min()) < 0 or int(task.max()) >= n):
        raise ValueError(f"The 'task' parameter must take values in the range [0, n={n}) (n = members.shape[1]).")

    if train_mask is None:
        train_mask = torch.ones(N, dtype=torch.bool)
    else:
        train_mask = _as_tensor("train_mask", train_mask)
        if train_mask.dtype != torch.bool or train_mask.shape != (N,):
            raise ValueError(
                f"The 'train_mask' parameter must be a bool tensor of shape (N,) = ({N},). "
                f"Got dtype {train_mask.dtype} and shape {tuple(train_mask.shape)}."
            )
    return G, y, w, task, members, train_mask


# --------------------------------------------------------------------------------------------
# data prepared once per run: training rows grouped by task, per-task Gram matrices
# --------------------------------------------------------------------------------------------


@dataclass
class _TaskBlocks:
    """Training rows grouped by task, with the statistics the solver reuses."""

    G: list[Tensor]  # G_i: [N_i, d]
    y: list[Tensor]  # [N_i]
    w: list[Tensor]  # [N_i]
    wy: list[Tensor]  # w_i * y_i
    counts: Tensor  # [n] float64: N_i
    gram: Tensor  # [n, d, d]: Gamma_i = G_i^T diag(w_i) G_i
    b: Tensor  # [n, d]: G_i^T (w_i * y_i)
    d: int

    @property
    def n(self) -> int:
        return len(self.G)


def _prepare(G: Tensor, y: Tensor, w: Tensor, task: Tensor, train_mask: Tensor, n: int) -> _TaskBlocks:
    d = G.shape[1]
    Gs, ys, ws, wys = [], [], [], []
    counts = torch.zeros(n, dtype=_DTYPE)
    gram = torch.zeros(n, d, d, dtype=_DTYPE)
    b = torch.zeros(n, d, dtype=_DTYPE)
    for i in range(n):
        idx = torch.nonzero((task == i) & train_mask).flatten()
        Gi = G.index_select(0, idx).contiguous()
        yi, wi = y[idx].contiguous(), w[idx].contiguous()
        Gs.append(Gi)
        ys.append(yi)
        ws.append(wi)
        wys.append(wi * yi)
        counts[i] = idx.numel()
        if idx.numel():
            gram[i] = Gi.T @ (wi[:, None] * Gi)
            b[i] = Gi.T @ (wi * yi)
    return _TaskBlocks(Gs, ys, ws, wys, counts, gram, b, d)


# --------------------------------------------------------------------------------------------
# the batched solver for one chunk of subsets
# --------------------------------------------------------------------------------------------


class _Chunk:
    """Batched objective, gradient and Hessian-vector products for a chunk of subsets."""

    def __init__(self, data: _TaskBlocks, members: Tensor, lam: float):
        self.data = data
        self.lam = lam
        self.m = members.shape[0]
        mf = members.to(_DTYPE)
        self.n_rows = mf @ data.counts  # [m]
        self.inv_n = 1.0 / self.n_rows
        # per task: the (local) indices of the subsets that contain it
        self.subs: list[Tensor] = [torch.nonzero(members[:, i]).flatten() for i in range(data.n)]
        self.tasks = [i for i in range(data.n) if self.subs[i].numel() and data.G[i].shape[0]]
        self.inv_n_sub = {i: self.inv_n[self.subs[i]][:, None] for i in self.tasks}
        d = data.d
        # gradient at u = 0 and the preconditioner H0 = sum Gamma_i / (4 |D_S|) + lam I
        self.grad0 = -(mf @ data.b) * (0.5 * self.inv_n)[:, None]
        H0 = (mf @ data.gram.reshape(data.n, d * d)).reshape(self.m, d, d)
        H0.mul_((0.25 * self.inv_n)[:, None, None])
        H0.diagonal(dim1=1, dim2=2).add_(lam)
        self.chol = self._cholesky(H0)

    @staticmethod
    def _cholesky(H: Tensor) -> Tensor:
        L, info = torch.linalg.cholesky_ex(H)
        jitter = 1e-12
        while bool((info > 0).any()):  # only for lam tiny against the data scale
            bad = info > 0
            scale = H[bad].diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(1e-300)
            Hb = H[bad].clone()
            Hb.diagonal(dim1=1, dim2=2).add_(jitter * scale[:, None])
            Lb, infob = torch.linalg.cholesky_ex(Hb)
            L[bad], info[bad] = Lb, infob
            jitter *= 100.0
        return L

    def precondition(self, R: Tensor) -> Tensor:
        return torch.cholesky_solve(R.unsqueeze(-1), self.chol).squeeze(-1)

    def margins(self, U: Tensor) -> dict[int, Tensor]:
        """``y_t g_t^T u_S`` for every task block and every subset containing it."""
        d = self.data
        return {i: d.y[i] * (U.index_select(0, self.subs[i]) @ d.G[i].T) for i in self.tasks}

    def loss(self, A: dict[int, Tensor], U: Tensor) -> Tensor:
        out = 0.5 * self.lam * (U * U).sum(dim=1)
        for i in self.tasks:
            li = (torch.nn.functional.softplus(-A[i]) @ self.data.w[i]) * self.inv_n_sub[i][:, 0]
            out.index_add_(0, self.subs[i], li)
        return out

    def loss_at(self, A: dict[int, Tensor], Zp: dict[int, Tensor], t: Tensor, U: Tensor, P: Tensor) -> Tensor:
        """Loss at ``U + t P`` given the margins of ``U`` and of the direction ``P``."""
        Ut = U + t[:, None] * P
        out = 0.5 * self.lam * (Ut * Ut).sum(dim=1)
        for i in self.tasks:
            ti = t.index_select(0, self.subs[i])[:, None]
            li = (torch.nn.functional.softplus(-(A[i] + ti * Zp[i])) @ self.data.w[i]) * self.inv_n_sub[i][:, 0]
            out.index_add_(0, self.subs[i], li)
        return out

    def grad_and_curvature(self, A: dict[int, Tensor], U: Tensor) -> tuple[Tensor, dict[int, Tensor]]:
        """Gradient ``[m, d]`` and the Hessian's diagonal weights per task block."""
        grad = self.lam * U.clone()
        D: dict[int, Tensor] = {}
        for i in self.tasks:
            sneg = torch.sigmoid(-A[i])  # 1 - s
            coef = -(self.data.wy[i] * sneg) * self.inv_n_sub[i]
            grad.index_add_(0, self.subs[i], coef @ self.data.G[i])
            D[i] = (self.data.w[i] * sneg * (1.0 - sneg)) * self.inv_n_sub[i]
        return grad, D

    def hvp(self, D: dict[int, Tensor], V: Tensor, active: Tensor) -> Tensor:
        """``H_S v_S`` for the subsets where ``active`` is True (zero rows elsewhere)."""
        out = torch.zeros_like(V)
        all_active = bool(active.all())
        for i in self.tasks:
            sub = self.subs[i]
            Di = D[i]
            if not all_active:
                keep = torch.nonzero(active.index_select(0, sub)).flatten()
                if keep.numel() == 0:
                    continue
                sub = sub.index_select(0, keep)
                Di = Di.index_select(0, keep)
            Gi = self.data.G[i]
            out.index_add_(0, sub, (Di * (V.index_select(0, sub) @ Gi.T)) @ Gi)
        out.add_(self.lam * V * active[:, None])
        return out

    def direction_margins(self, P: Tensor) -> dict[int, Tensor]:
        return self.margins(P)


def _pcg(chunk: _Chunk, D: dict[int, Tensor], rhs: Tensor, active: Tensor, eta: Tensor, max_cg: int) -> tuple[Tensor, int]:
    """Batched preconditioned CG for ``H_S p = rhs_S`` on the active subsets."""
    P = torch.zeros_like(rhs)
    R = rhs * active[:, None]
    Z = chunk.precondition(R)
    Dir = Z.clone()
    rz = (R * Z).sum(dim=1)
    r0 = R.norm(dim=1)
    live = active.clone()
    iters = 0
    for _ in range(max_cg):
        Hd = chunk.hvp(D, Dir, live)
        iters += 1
        dHd = (Dir * Hd).sum(dim=1)
        alpha = torch.where(live & (dHd > 0), rz / torch.where(dHd > 0, dHd, 1.0), 0.0)
        P.add_(alpha[:, None] * Dir)
        R.sub_(alpha[:, None] * Hd)
        live = live & (R.norm(dim=1) > eta * r0) & (dHd > 0)
        if not bool(live.any()):
            break
        Z = chunk.precondition(R)
        rz_new = (R * Z).sum(dim=1)
        beta = torch.where(live & (rz != 0), rz_new / torch.where(rz != 0, rz, 1.0), 0.0)
        Dir = Z + beta[:, None] * Dir
        rz = rz_new
    return P, iters


def _fit_chunk(
    data: _TaskBlocks, members: Tensor, lam: float, u0: Tensor | None, tol: float, max_iter: int, max_cg: int
) -> SurrogateFit:
    chunk = _Chunk(data, members, lam)
    m, d = chunk.m, data.d
    U = torch.zeros(m, d, dtype=_DTYPE) if u0 is None else u0.to(_DTYPE).clone()
    A = chunk.margins(U)
    g0norm = chunk.grad0.norm(dim=1)
    iterations = torch.zeros(m, dtype=torch.int64)
    stalled = torch.zeros(m, dtype=torch.bool)
    cg_total = 0
    eps = torch.finfo(_DTYPE).eps
    for _ in range(max_iter + 1):
        grad, D = chunk.grad_and_curvature(A, U)
        gnorm = grad.norm(dim=1)
        converged = gnorm <= tol * g0norm
        active = ~converged & ~stalled & (iterations < max_iter)
        if not bool(active.any()):
            break
        iterations += active.to(torch.int64)
        rel = torch.where(g0norm > 0, gnorm / torch.where(g0norm > 0, g0norm, 1.0), 0.0)
        eta = torch.clamp(torch.sqrt(rel), max=0.5)
        P, k = _pcg(chunk, D, -grad, active, eta, max_cg)
        cg_total += k
        # per-subset Armijo backtracking on the exact objective
        Zp = chunk.direction_margins(P)
        f0 = chunk.loss(A, U)
        slope = (grad * P).sum(dim=1)
        t = active.to(_DTYPE)
        accepted = ~active
        slack = 16 * eps * f0.abs()  # round-off allowance near the optimum
        for _ in range(_MAX_BACKTRACK):
            ft = chunk.loss_at(A, Zp, t, U, P)
            ok = ft <= f0 + _ARMIJO_C * t * slope + slack
            accepted = accepted | ok
            if bool(accepted.all()):
                break
            t = torch.where(accepted, t, 0.5 * t)
        failed = ~accepted
        t = torch.where(failed, 0.0, t)
        stalled |= failed
        U = U + t[:, None] * P
        for i in chunk.tasks:
            A[i] = A[i] + t.index_select(0, chunk.subs[i])[:, None] * Zp[i]
    grad, _ = chunk.grad_and_curvature(chunk.margins(U), U)
    gnorm = grad.norm(dim=1)
    return SurrogateFit(
        u=U,
        lam=lam,
        iterations=iterations,
        cg_iterations=cg_total,
        converged=gnorm <= tol * g0norm,
        grad_norm=gnorm,
        grad_norm0=g0norm,
        n_rows=chunk.n_rows.round().to(torch.int64),
    )


def _chunk_size(d: int, batch_size: int | None) -> int:
    if batch_size is not None:
        return batch_size
    return max(1, min(_MAX_CHUNK, _PRECOND_BYTES // (8 * d * d)))


def _fit_prepared(
    data: _TaskBlocks,
    members: Tensor,
    lam: float,
    u0: Tensor | None,
    tol: float,
    max_iter: int,
    max_cg: int,
    batch_size: int | None,
) -> SurrogateFit:
    m = members.shape[0]
    step = _chunk_size(data.d, batch_size)
    parts = []
    for start in range(0, m, step):
        sl = slice(start, min(m, start + step))
        parts.append(
            _fit_chunk(data, members[sl], lam, None if u0 is None else u0[sl], tol, max_iter, max_cg)
        )
    if len(parts) == 1:
        return parts[0]
    return SurrogateFit(
        u=torch.cat([p.u for p in parts]),
        lam=lam,
        iterations=torch.cat([p.iterations for p in parts]),
        cg_iterations=sum(p.cg_iterations for p in parts),
        converged=torch.cat([p.converged for p in parts]),
        grad_norm=torch.cat([p.grad_norm for p in parts]),
        grad_norm0=torch.cat([p.grad_norm0 for p in parts]),
        n_rows=torch.cat([p.n_rows for p in parts]),
    )


def _check_solver_args(tol: Any, max_iter: Any, max_cg: Any, batch_size: Any) -> tuple[float, int, int, int | None]:
    tol = _check_positive_float("tol", tol)
    max_iter = _check_int("max_iter", max_iter, 1)
    max_cg = _check_int("max_cg", max_cg, 1)
    if batch_size is not None:
        batch_size = _check_int("batch_size", batch_size, 1)
    return tol, max_iter, max_cg, batch_size


def _check_rows(data: _TaskBlocks, members: Tensor) -> None:
    n_rows = members.to(_DTYPE) @ data.counts
    empty = torch.nonzero(n_rows == 0).flatten()
    if empty.numel():
        raise ValueError(
            f"The 'members' parameter has subsets with no training rows (rows {empty[:10].tolist()}): "
            "every subset must contain at least one task with training rows (see 'train_mask')."
        )


def fit_subsets(
    G: Tensor,
    y: Tensor,
    w: Tensor,
    task: Tensor,
    members: Tensor,
    lam: float,
    train_mask: Tensor | None = None,
    tol: float = 1e-6,
    max_iter: int = 50,
    *,
    max_cg: int = 100,
    u0: Tensor | None = None,
    batch_size: int | None = None,
) -> SurrogateFit:
    """Fit the weighted logistic surrogate of every subset, all subsets at once.

    Parameters
    ----------
    G : Tensor, float, shape (N, d)
        Projected per-sample policy gradients of all tasks.
    y : Tensor, shape (N,)
        Labels ``sign(A_t)`` in {+1, -1}.
    w : Tensor, shape (N,)
        Weights ``|A_t|`` (finite, >= 0).
    task : LongTensor, shape (N,)
        Task of each row, in ``[0, n)`` with ``n = members.shape[1]``.
    members : BoolTensor, shape (m, n)
        One row per subset (see :func:`policygradex.estimate.subsets.sample_subsets`).
    lam : float, > 0
        L2 strength.
    train_mask : BoolTensor, shape (N,), optional
        Rows used for fitting (default all); the others are held out for evaluation.
    tol : float, > 0
        Relative gradient tolerance: stop when ``||grad|| <= tol * ||grad at u = 0||``.
    max_iter : int, >= 1
        Newton iterations at most, per subset.
    max_cg : int, >= 1
        Conjugate-gradient iterations at most, per Newton step.
    u0 : Tensor, shape (m, d), optional
        Warm start (default zeros).
    batch_size : int, optional
        Subsets solved together; default as many as fit in 256 MiB of preconditioners
        (at most 256).

    Returns
    -------
    SurrogateFit
        ``u`` (float64, ``[m, d]``) and per-subset diagnostics.
    """
    G, y, w, task, members, train_mask = _validate_data(G, y, w, task, members, train_mask)
    lam = _check_positive_float("lam", lam)
    tol, max_iter, max_cg, batch_size = _check_solver_args(tol, max_iter, max_cg, batch_size)
    m, d = members.shape[0], G.shape[1]
    if u0 is not None:
        u0 = _as_tensor("u0", u0)
        if u0.shape != (m, d) or not torch.isfinite(u0).all():
            raise ValueError(f"The 'u0' parameter must be a finite tensor of shape (m, d) = ({m}, {d}). Got shape {tuple(u0.shape)}.")
    data = _prepare(G, y, w, task, train_mask, members.shape[1])
    _check_rows(data, members)
    return _fit_prepared(data, members, lam, u0, tol, max_iter, max_cg, batch_size)


def relative_distance(U: Tensor, gram: Tensor, theta_norm: float) -> Tensor:
    """``delta(u) = sqrt(u^T gram u) / theta_norm`` for every row of ``U`` (float64, ``[m]``).

    With ``gram = P^T P`` this is ``||P u|| / ||theta*||``, the relative parameter distance of
    ``theta_S = theta* + P u``.
    """
    U = U.to(_DTYPE)
    q = ((U @ gram.to(_DTYPE)) * U).sum(dim=1).clamp_min(0.0)
    return torch.sqrt(q) / theta_norm


def choose_lambda(
    G: Tensor,
    y: Tensor,
    w: Tensor,
    task: Tensor,
    members: Tensor,
    train_mask: Tensor | None,
    gram: Tensor,
    theta_norm: float,
    target_delta: float = 0.01,
    *,
    rtol: float = 0.05,
    lam_init: float | None = None,
    max_steps: int = 60,
    max_decades: float = 16.0,
    tol: float = 1e-6,
    max_iter: int = 50,
    max_cg: int = 100,
    batch_size: int | None = None,
) -> tuple[float, SurrogateFit, Tensor]:
    """Pick one ``lam`` so that the median relative distance over subsets hits ``target_delta``.

    ``delta_S(lam) = sqrt(u_S^T gram u_S) / theta_norm`` decreases as ``lam`` grows (for
    ``gram = P^T P`` with ``p >> d``, ``gram`` is close to a multiple of the identity, and
    ``||u_S(lam)||`` is decreasing).  The search

    1. starts at ``lam_init`` or at the large-``lam`` estimate
       ``median_S sqrt(g0_S^T gram g0_S) / (theta_norm * target_delta)`` (``g0_S`` the
       gradient at ``u = 0``; since ``||u_S|| <= ||g0_S|| / lam`` this ``lam`` gives a median
       delta of about the target or less);
    2. steps ``lam`` by factors of 10 until the target is bracketed, giving up after
       ``max_decades`` decades;
    3. narrows the bracket on ``log(lam)`` with log-log interpolation, safeguarded to stay
       inside the middle 80% of the bracket (plain bisection when interpolation stalls),
       until ``|median delta / target_delta - 1| <= rtol``.

    Every fit is warm-started from the previous one.

    Parameters
    ----------
    G, y, w, task, members, train_mask
        As in :func:`fit_subsets`.
    gram : Tensor, shape (d, d)
        ``P^T P`` for the random projection ``P`` (``Delta = P u``).
    theta_norm : float, > 0
        ``||theta*||``.
    target_delta : float, > 0
        Target median relative distance (METHOD.md: about 1% keeps the first-order
        approximation accurate).
    rtol : float, > 0
        Relative tolerance on the median delta.
    lam_init : float, optional
        Starting point of the search.
    max_steps : int
        Fits at most in the whole search.
    max_decades : float
        How far (in powers of 10) from the start the bracketing may go.
    tol, max_iter, max_cg, batch_size
        Solver settings, as in :func:`fit_subsets`.

    Returns
    -------
    lam : float
        The chosen L2 strength.
    fit : SurrogateFit
        The fit at ``lam``.
    deltas : Tensor, float64, shape (m,)
        The relative distance of every subset's solution.

    Raises
    ------
    ValueError
        On invalid inputs, or if the target cannot be reached (no advantage signal: all
        weights zero, or the median delta stays below the target even at the smallest
        ``lam`` tried), or the search does not converge within ``max_steps`` fits.
    """
    G, y, w, task, members, train_mask = _validate_data(G, y, w, task, members, train_mask)
    d = G.shape[1]
    gram = _as_tensor("gram", gram)
    if gram.shape != (d, d) or not gram.is_floating_point() or not torch.isfinite(gram).all():
        raise ValueError(f"The 'gram' parameter must be a finite float tensor of shape (d, d) = ({d}, {d}). Got shape {tuple(gram.shape)}.")
    gram = gram.to(_DTYPE)
    theta_norm = _check_positive_float("theta_norm", theta_norm)
    target_delta = _check_positive_float("target_delta", target_delta)
    rtol = _check_positive_float("rtol", rtol)
    if rtol >= 1:
        raise ValueError(f"The 'rtol' parameter must be a float in the range (0, 1). Got {rtol!r} instead.")
    if lam_init is not None:
        lam_init = _check_positive_float("lam_init", lam_init)
    max_steps = _check_int("max_steps", max_steps, 1)
    max_decades = _check_positive_float("max_decades", max_decades)
    tol, max_iter, max_cg, batch_size = _check_solver_args(tol, max_iter, max_cg, batch_size)

    data = _prepare(G, y, w, task, train_mask, members.shape[1])
    _check_rows(data, members)
    mf = members.to(_DTYPE)
    n_rows = mf @ data.counts
    grad0 = -(mf @ data.b) * (0.5 / n_rows)[:, None]
    scale = float(torch.median(relative_distance(grad0, gram, 1.0)))
    if not scale > 0:
        raise ValueError(
            "target_delta cannot be reached: the gradient of the surrogate at u = 0 is zero for at "
            "least half of the subsets (no advantage signal: all weights w are zero, or the "
            "weighted gradient features cancel). Check the advantages of the meta-policy."
        )
    lam = lam_init if lam_init is not None else scale / (theta_norm * target_delta)
    lam_start = lam

    steps = 0
    fit: SurrogateFit | None = None

    def evaluate(lam_: float) -> tuple[SurrogateFit, Tensor, float]:
        nonlocal steps, fit
        steps += 1
        u0 = None if fit is None else fit.u
        new_fit = _fit_prepared(data, members, lam_, u0, tol, max_iter, max_cg, batch_size)
        fit = new_fit
        deltas_ = relative_distance(new_fit.u, gram, theta_norm)
        return new_fit, deltas_, float(np.median(deltas_.numpy()))

    def done(med: float) -> bool:
        return abs(med / target_delta - 1.0) <= rtol

    cur_fit, deltas, med = evaluate(lam)
    if done(med):
        return _finish(lam, cur_fit, deltas)
    # bracket: lo has delta above the target, hi below
    lo = hi = None
    lo_med = hi_med = float("nan")
    if med > target_delta:
        lo, lo_med = lam, med
        while hi is None:
            if steps >= max_steps or math.log10(lam / lam_start) >= max_decades:
                raise ValueError(
                    f"target_delta={target_delta} cannot be reached: the median relative distance is still "
                    f"{med:.3g} at lam={lam:.3g}."
                )
            lam *= 10.0
            cur_fit, deltas, med = evaluate(lam)
            if done(med):
                return _finish(lam, cur_fit, deltas)
            if med > target_delta:
                lo, lo_med = lam, med
            else:
                hi, hi_med = lam, med
    else:
        hi, hi_med = lam, med
        while lo is None:
            if steps >= max_steps or math.log10(lam_start / lam) >= max_decades:
                raise ValueError(
                    f"target_delta={target_delta} cannot be reached: the median relative distance is only "
                    f"{med:.3g} at lam={lam:.3g} ({max_decades:g} decades below the start). The data carry "
                    "too little advantage signal for this step size; lower target_delta or check the "
                    "meta-policy's advantages."
                )
            lam /= 10.0
            cur_fit, deltas, med = evaluate(lam)
            if done(med):
                return _finish(lam, cur_fit, deltas)
            if med < target_delta:
                hi, hi_med = lam, med
            else:
                lo, lo_med = lam, med
    assert lo is not None and hi is not None
    log_t = math.log(target_delta)
    while steps < max_steps:
        a, b = math.log(lo), math.log(hi)
        fa, fb = math.log(lo_med) if lo_med > 0 else None, math.log(hi_med) if hi_med > 0 else None
        x = 0.5 * (a + b)
        if fa is not None and fb is not None and fa != fb:
            x_int = a + (log_t - fa) * (b - a) / (fb - fa)
            x = min(max(x_int, a + 0.1 * (b - a)), b - 0.1 * (b - a))
        lam = math.exp(x)
        cur_fit, deltas, med = evaluate(lam)
        if done(med):
            return _finish(lam, cur_fit, deltas)
        if med > target_delta:
            lo, lo_med = lam, med
        else:
            hi, hi_med = lam, med
    raise ValueError(
        f"choose_lambda did not reach target_delta={target_delta} within rtol={rtol} in "
        f"max_steps={max_steps} fits (bracket lam in [{lo:.6g}, {hi:.6g}], median delta "
        f"{lo_med:.4g} .. {hi_med:.4g}); increase 'max_steps' or 'rtol'."
    )


def _finish(lam: float, fit: SurrogateFit, deltas: Tensor) -> tuple[float, SurrogateFit, Tensor]:
    if not bool(fit.converged.all()):
        bad = int((~fit.converged).sum())
        warnings.warn(
            f"{bad} of {fit.u.shape[0]} subset fits did not converge at lam={lam:.4g} "
            "(see SurrogateFit.converged / grad_norm); raise max_iter or max_cg.",
            RuntimeWarning,
            stacklevel=3,
        )
    return lam, fit, deltas
