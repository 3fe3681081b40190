"""The surrogate's batched solver (:func:`fit_subsets`): majorization steps from the Gram-matrix
curvature bound, Newton-CG steps where those converge slowly, all subsets of a chunk at once,
chunk after chunk (the method and its constants are explained in the docstring of
:mod:`.surrogate`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .surrogate_blocks import TaskBlocks
from .surrogate_checks import DTYPE, as_tensor, check_positive_float, check_rows, check_solver_args, validate_data
from .surrogate_chunk import Chunk, pcg
from .surrogate_precond import Preconditioner

__all__ = ["SurrogateFit", "fit_prepared", "fit_subsets"]

# Data products (margins, gradients, Hessian-vector products) run in float32 when tol >= this
# (errors of the gradient about 1e-8 to 1e-7 of ||grad at 0||, see the docstring of .surrogate),
# in float64 otherwise.
_FAST_TOL = 1e-6
# Newton steps (data Hessian): CG forcing term min(_ETA_MAX, ||g|| / ||g_0||).
_ETA_MAX = 0.01
# Majorization (H0) steps: CG tolerance of the first step from u = 0, and of the later ones
# _MM_ETA_SAFETY * tol * ||g_0|| / ||g|| clamped to [_MM_ETA_MIN, _MM_ETA_MAX] (H0 products are
# cheap, so these solves aim at the final tolerance in one step).
_MM_ETA_FIRST = 3e-5
_MM_ETA_SAFETY = 0.3
_MM_ETA_RATIO = 0.03
_MM_ETA_MIN = 1e-6
_MM_ETA_MAX = 0.01
# A subset switches from majorization steps to Newton steps once a majorization step reduces
# its gradient norm by less than this factor (the first step from u = 0, an exact Newton step,
# by less than _RHO_SWITCH_FIRST).
_RHO_SWITCH = 0.1
_RHO_SWITCH_FIRST = 0.05
# Majorization steps are lengthened by a Newton step on the step length, kept in [1, _T_MAX]
# (any length in (0, 2) decreases the objective, see _ChunkSolve.majorization_lengths).
_T_MAX = 1.9
# Preconditioners of one chunk of subsets take at most this many bytes (m_chunk * d * d * 4).
_PRECOND_BYTES = 2**28
_MAX_CHUNK = 256
_ARMIJO_C = 1e-4
# fast mode: Newton steps that fail to halve a gradient already below this (relative to the
# gradient at 0) send the subset to float64 (see _fit_chunk)
_FLOOR_REL = 1e-4
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
        Iterations (majorization or Newton steps, see the docstring of :mod:`.surrogate`)
        taken by each subset.
    cg_iterations : int
        Batched conjugate-gradient iterations in all (one product with ``H0`` from the Gram
        matrices, or one Hessian-vector product over the data, each).
    converged : Tensor, bool, shape (m,)
        Whether ``||grad|| <= tol * ||grad at u = 0||`` was reached.
    grad_norm : Tensor, float64, shape (m,)
        Final gradient norm of each subset's objective.
    grad_norm0 : Tensor, float64, shape (m,)
        Gradient norm at ``u = 0`` (the scale the tolerance is relative to).
    n_rows : Tensor, int64, shape (m,)
        ``|D_S|``: the number of training rows of each subset.
    preconditioner : str
        ``"cholesky"`` when the Cholesky factors of ``H0`` were used (Newton steps on an
        ill-conditioned problem), else ``"jacobi"`` (see the docstring of :mod:`.surrogate`);
        ``"cholesky+jacobi"`` when chunks of subsets used different ones.
    """

    u: Tensor
    lam: float
    iterations: Tensor
    cg_iterations: int
    converged: Tensor
    grad_norm: Tensor
    grad_norm0: Tensor
    n_rows: Tensor
    preconditioner: str


class _ChunkSolve:
    """The solve of one chunk of subsets: iterate ``u``, margins ``A``, gradient and flags.

    One iteration (:meth:`step`) takes a direction per active subset (:meth:`direction`: a
    majorization step ``-H0^{-1} g`` or a Newton-CG step), the direction's margins, a step
    length per subset (:meth:`step_lengths`) and the move (:meth:`advance`, which also switches
    slow subsets to Newton steps and marks stalled ones).
    """

    def __init__(self, data: TaskBlocks, members: Tensor, lam: float, u0: Tensor | None, tol: float,
                 max_cg: int, fast: bool):
        self.lam, self.tol, self.max_cg, self.fast = lam, tol, max_cg, fast
        self.chunk = chunk = Chunk(data, members, lam, fast)
        self.precond = Preconditioner(data, members, chunk.inv_n, lam)
        chunk.set_gram(self.precond.gram)
        m, d, dev = chunk.m, data.d, data.device
        self.g0norm = chunk.grad0.norm(dim=1)
        chunk.reset_curvature()
        if u0 is None or not bool((u0 != 0).any()):
            self.u = torch.zeros(m, d, dtype=DTYPE, device=dev)
            self.A = chunk.zeros()
            self.grad = chunk.grad0.clone()
            self.at_zero = True
        else:
            self.u = u0.to(device=dev, dtype=DTYPE).clone()
            self.u[self.g0norm == 0] = 0.0  # no signal: u = 0 is the exact solution
            every = chunk.select(torch.ones(m, dtype=torch.bool, device=dev))
            self.A = chunk.margins(self.u, every)
            self.grad = chunk.gradient(self.A, self.u, every)
            self.at_zero = False
        self.gnorm = self.grad.norm(dim=1)
        self.iterations = torch.zeros(m, dtype=torch.int64, device=dev)
        self.stalled = torch.zeros(m, dtype=torch.bool, device=dev)
        self.newton = torch.zeros(m, dtype=torch.bool, device=dev)  # per subset: Newton or majorization steps
        self.last_ratio = torch.zeros(m, dtype=DTYPE, device=dev)
        self.cg_total = 0

    def run(self, max_iter: int) -> Tensor:
        """Iterate until every subset has converged, stalled or used ``max_iter`` steps;
        returns the converged flags."""
        while True:
            converged = self.gnorm <= self.tol * self.g0norm
            active = ~converged & ~self.stalled & (self.iterations < max_iter)
            if not bool(active.any()):
                return converged
            self.step(active)

    def step(self, active: Tensor) -> None:
        """One iteration of the active subsets."""
        self.iterations += active.to(torch.int64)
        mm, nw = active & ~self.newton, active & self.newton
        P, GP = self.direction(mm, nw)
        # margins of the direction: a pass over the data, except for Newton steps in fast mode
        # (accumulated from CG's products)
        Zp = self.chunk.margins(P, self.chunk.select(mm if self.fast else active))
        if GP is not None:
            for i in self.chunk.tasks:
                Zp[i].add_(GP[i])
        t = self.step_lengths(P, Zp, active, mm, nw)
        self.advance(P, Zp, t, active, mm, nw)

    def direction(self, mm: Tensor, nw: Tensor) -> tuple[Tensor, dict[int, Tensor] | None]:
        """The step direction ``P`` of the majorization (``mm``) and Newton (``nw``) subsets, with
        the Newton directions' margins accumulated by CG in fast mode (else ``None``)."""
        chunk, grad, g0norm = self.chunk, self.grad, self.g0norm
        rel = torch.where(g0norm > 0, self.gnorm / torch.where(g0norm > 0, g0norm, 1.0), 0.0)
        P = torch.zeros(chunk.m, chunk.data.d, dtype=DTYPE, device=chunk.data.device)
        GP = None
        if bool(mm.any()):
            # majorization step p = -H0^{-1} g: H0 >= the Hessian everywhere, so it decreases
            # the objective without a line search; from u = 0 it is the exact Newton step
            if self.at_zero:
                eta = torch.full_like(rel, _MM_ETA_FIRST)
            else:  # aim at the tolerance, but no tighter than the last contraction allows
                eta = torch.maximum(_MM_ETA_SAFETY * self.tol / rel.clamp_min(1e-300), _MM_ETA_RATIO * self.last_ratio)
                eta = eta.clamp(_MM_ETA_MIN, _MM_ETA_MAX)
            Pm, _, k = pcg(chunk, self.precond, chunk.hvp_gram, -grad, mm, eta, self.max_cg)
            P.add_(Pm)
            self.cg_total += k
        if bool(nw.any()):
            self.precond.exact()
            S = chunk.weighted_curvature()  # w s (1 - s) at the current iterate
            eta = torch.clamp(rel, max=_ETA_MAX)  # forcing term: quadratic convergence near the optimum
            Pn, GP, k = pcg(
                chunk, self.precond, lambda V, live: chunk.hvp_data(S, V, live), -grad, nw, eta, self.max_cg,
                products=self.fast,
            )
            P.add_(Pn)
            self.cg_total += k
        return P, GP

    def step_lengths(self, P: Tensor, Zp: dict[int, Tensor], active: Tensor, mm: Tensor, nw: Tensor) -> Tensor:
        """Per subset: 1 for the first step from 0, :meth:`majorization_lengths` for the later
        majorization steps, Armijo backtracking (:meth:`backtrack`) for the Newton steps, 0 for
        the inactive subsets."""
        t = active.to(DTYPE)
        if bool(mm.any()) and not self.at_zero:
            t = torch.where(mm, self.majorization_lengths(P, Zp, mm), t)
        if bool(nw.any()):
            t = self.backtrack(P, Zp, nw, t)
        return t

    def majorization_lengths(self, P: Tensor, Zp: dict[int, Tensor], mm: Tensor) -> Tensor:
        """A Newton step on ``t -> f(u + t p)`` from ``t = 0``, with the exact curvature
        ``p^T H(u) p`` (``H <= H0`` makes the majorization step short along ``p``).

        By the ``H0`` bound ``f(u + t p) <= f(u) + t (1 - t / 2) g^T p``, so any ``t`` in
        ``(0, 2)`` satisfies Armijo's condition: ``t`` is kept in ``[1, _T_MAX]``, no line search
        needed.
        """
        slope = (self.grad * P).sum(dim=1)
        curv = self.chunk.curvature_along(Zp, self.chunk.select(mm)) + self.lam * (P * P).sum(dim=1)
        return torch.where(curv > 0, -slope / torch.where(curv > 0, curv, 1.0), 1.0).clamp(1.0, _T_MAX)

    def backtrack(self, P: Tensor, Zp: dict[int, Tensor], nw: Tensor, t: Tensor) -> Tensor:
        """Per-subset Armijo backtracking for the Newton steps (elementwise work only, the
        direction's margins being known); a subset that finds no step stalls (``t = 0``)."""
        chunk = self.chunk
        blocks = chunk.line_blocks(self.A, Zp, chunk.select(nw))
        f0 = chunk.loss_at(blocks, torch.zeros_like(t), self.u, P)
        slope = (self.grad * P).sum(dim=1)
        accepted = ~nw
        slack = 16 * torch.finfo(DTYPE).eps * f0.abs()  # round-off allowance near the optimum
        for _ in range(_MAX_BACKTRACK):
            ft = chunk.loss_at(blocks, t, self.u, P)
            accepted = accepted | (ft <= f0 + _ARMIJO_C * t * slope + slack)
            if bool(accepted.all()):
                break
            t = torch.where(accepted, t, 0.5 * t)
        failed = ~accepted
        t = torch.where(failed, 0.0, t)
        self.stalled |= failed
        return t

    def advance(self, P: Tensor, Zp: dict[int, Tensor], t: Tensor, active: Tensor, mm: Tensor, nw: Tensor) -> None:
        """Move to ``u + t P``; the new margins and gradient; switch or stop slow subsets."""
        chunk = self.chunk
        self.u = self.u + t[:, None] * P
        for i in chunk.tasks:  # Zp is zero on the rows of inactive subsets
            self.A[i].addcmul_(t.index_select(0, chunk.subs[i]).to(chunk.dt)[:, None], Zp[i])
        self.grad = torch.where(active[:, None], chunk.gradient(self.A, self.u, chunk.select(active)), self.grad)
        gnorm_new = self.grad.norm(dim=1)
        ratio = gnorm_new / torch.where(self.gnorm > 0, self.gnorm, 1.0)
        self.last_ratio = torch.where(active, ratio, self.last_ratio)
        # majorization steps converge linearly (by the factor ratio): a subset whose ratio is
        # poor (the problem is far from quadratic) switches to Newton steps
        limit = _RHO_SWITCH_FIRST if self.at_zero else _RHO_SWITCH
        unconverged = gnorm_new > self.tol * self.g0norm
        self.newton |= mm & unconverged & (ratio > limit)
        if self.fast:
            # a Newton step close to the optimum that does not halve the gradient: the float32
            # products have hit their rounding floor; such subsets are finished in float64
            self.stalled |= nw & unconverged & (ratio > 0.5) & (gnorm_new < _FLOOR_REL * self.g0norm)
        self.gnorm = gnorm_new
        self.at_zero = False

    def result(self, converged: Tensor) -> SurrogateFit:
        return SurrogateFit(
            u=self.u,
            lam=self.lam,
            iterations=self.iterations,
            cg_iterations=self.cg_total,
            converged=converged,
            grad_norm=self.gnorm,
            grad_norm0=self.g0norm,
            n_rows=self.chunk.n_rows.round().to(torch.int64),
            preconditioner=self.precond.kind,
        )


def _fit_chunk(
    data: TaskBlocks,
    members: Tensor,
    lam: float,
    u0: Tensor | None,
    tol: float,
    max_iter: int,
    max_cg: int,
    fast: bool | None = None,
) -> SurrogateFit:
    """Solve one chunk of subsets (float32 data products when ``fast``, by default when
    ``tol >= _FAST_TOL``); subsets stuck at the float32 rounding floor are finished in float64."""
    if fast is None:
        fast = tol >= _FAST_TOL
    solve = _ChunkSolve(data, members, lam, u0, tol, max_cg, fast)
    converged = solve.run(max_iter)
    fit = solve.result(converged)
    redo = solve.stalled & ~converged & (solve.iterations < max_iter)
    if fast and bool(redo.any()):
        # stuck at the float32 rounding floor of the gradient (not seen in practice at
        # tol >= _FAST_TOL): finish those subsets in float64 from where they are
        idx = torch.nonzero(redo).flatten()
        left = int((max_iter - fit.iterations.index_select(0, idx)).max())
        sub = _fit_chunk(data, members.index_select(0, idx), lam, fit.u.index_select(0, idx), tol, left, max_cg, False)
        fit.u[idx] = sub.u
        fit.iterations[idx] += sub.iterations
        fit.cg_iterations += sub.cg_iterations
        fit.converged[idx] = sub.converged
        fit.grad_norm[idx] = sub.grad_norm
        if sub.preconditioner != fit.preconditioner:
            fit.preconditioner = "+".join(sorted({fit.preconditioner, sub.preconditioner}))
    return fit


def _chunk_size(d: int, batch_size: int | None) -> int:
    """Subsets per chunk: ``batch_size``, or as many as fit ``_PRECOND_BYTES`` of Cholesky factors."""
    if batch_size is not None:
        return batch_size
    return max(1, min(_MAX_CHUNK, _PRECOND_BYTES // (4 * d * d)))


def fit_prepared(
    data: TaskBlocks,
    members: Tensor,
    lam: float,
    u0: Tensor | None,
    tol: float,
    max_iter: int,
    max_cg: int,
    batch_size: int | None,
) -> SurrogateFit:
    """:func:`fit_subsets` on data already checked and laid out (:class:`.surrogate_blocks.TaskBlocks`),
    chunk after chunk of ``batch_size`` subsets (default: see :func:`_chunk_size`)."""
    m = members.shape[0]
    step = _chunk_size(data.d, batch_size)
    parts = []
    for start in range(0, m, step):
        sl = slice(start, min(m, start + step))
        parts.append(_fit_chunk(data, members[sl], lam, None if u0 is None else u0[sl], tol, max_iter, max_cg))
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
        preconditioner="+".join(sorted({p.preconditioner for p in parts})),
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
        Subsets solved together; default as many as fit in 256 MiB of exact preconditioners
        (at most 256).

    Returns
    -------
    SurrogateFit
        ``u`` (float64, ``[m, d]``) and per-subset diagnostics.
    """
    G, y, w, task, members, train_mask = validate_data(G, y, w, task, members, train_mask)
    lam = check_positive_float("lam", lam)
    tol, max_iter, max_cg, batch_size = check_solver_args(tol, max_iter, max_cg, batch_size)
    m, d = members.shape[0], G.shape[1]
    if u0 is not None:
        u0 = as_tensor("u0", u0)
        if u0.shape != (m, d) or not torch.isfinite(u0).all():
            raise ValueError(
                f"The 'u0' parameter must be a finite tensor of shape (m, d) = ({m}, {d}). "
                f"Got shape {tuple(u0.shape)}."
            )
    data = TaskBlocks(G, y, w, task, train_mask, members.shape[1])
    check_rows(data.counts, members)
    return fit_prepared(data, members, lam, u0, tol, max_iter, max_cg, batch_size)
