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

The solver: batched majorization steps, Newton-CG where needed
---------------------------------------------------------------
All ``m`` subsets are solved together in torch.  With ``a_t = y_t g_t^T u`` (the margin),
``s_t = sigmoid(a_t)`` and ``G_S`` the rows of the subset, the gradient and Hessian are

.. math::

    \nabla L_S = g^0_S + \lambda u + \frac{1}{|D_S|} G_S^\top (w \odot y \odot (s - \tfrac12)),
    \qquad
    H_S = \frac{1}{|D_S|} G_S^\top \operatorname{diag}(w \odot s (1 - s)) G_S + \lambda I,

with ``g^0_S = -G_S^T (w y) / (2 |D_S|)`` the gradient at 0 (exact, float64, from the per-task
sums ``b_i = G_i^T (w_i y_i)``).  Rows are grouped by task, so a product over ``D_S`` is a sum
over the tasks ``i in S`` of products with the task's block ``G_i``; for each task the vectors
of *all* subsets that contain it are stacked into one matrix product (``[m_i, d] x [d, N_i]``),
which never touches the rows of tasks outside a subset.  The margins are kept per task block
and updated with the margins of each step, so every iteration costs two passes over the data:
the margins of the step and the gradient.

The curvature bound.  ``s (1 - s) <= 1/4``, so for every ``u``

.. math:: H_S(u) \preceq H^0_S = C_S + \lambda I, \qquad C_S = \frac{1}{4 |D_S|} \sum_{i \in S} \Gamma_i,
          \qquad \Gamma_i = G_i^\top \operatorname{diag}(w_i) G_i ,

the Hessian at ``u = 0`` (Boehning and Lindsay's bound for logistic regression), a sum of
per-task Gram matrices computed once per run (``n`` of them, ``d x d``); a product with
``H0_S`` costs ``d^2`` multiply-adds per task and subset instead of ``2 N_i d``, no pass over
the data.  It gives *majorization* steps: ``p = -H0^{-1} g`` (solved by CG on the Gram
products) decreases the objective, ``L(u + t p) <= L(u) + t (1 - t/2) g^T p`` for CG's
iterates, for any step length ``t`` in ``(0, 2)``, so no line search is needed.  From
``u = 0`` the step is the exact Newton step (the Hessian there *is* ``H0``), solved tightly.
Later steps are lengthened by one Newton step on ``t`` with the exact curvature along ``p``,
``p^T H(u) p`` (``H <= H0`` makes the majorization step short, and mostly along ``p``
itself): elementwise work with the direction's margins and the ``s (1 - s)`` recorded by the
previous gradient pass; ``t`` is kept in ``[1, 1.9]``.

In the regime the method is used in (relative parameter distance of about 1%, margins of
order 0.1) the problem is nearly quadratic: the first step leaves a gradient of a few 1e-3
of the initial one (the logistic loss has no cubic term), and each lengthened majorization
step divides it by a few hundred, so two iterations, four passes over the data, reach
``tol = 1e-6`` (benchmark: the first step's Gram products, then two passes, then two).
Majorization steps converge linearly, at a rate set by how far the curvature ``s (1 - s)``
falls below 1/4, i.e. by the margins: a subset whose gradient falls by less than a factor
``_RHO_SWITCH`` in a step (``_RHO_SWITCH_FIRST`` for the first step) switches to Newton-CG
steps, whose Hessian-vector products are data passes: the margins ``y_t g_t^T v`` and
``G^T (w s (1 - s) ...)``, and whose direction margins are accumulated from CG's products.
Newton steps are globalised by a per-subset Armijo backtracking line search (elementwise, the
direction's margins being known); their CG tolerance is ``min(0.01, ||g|| / ||g_0||)``.

Preconditioners.  ``H0_S`` is well conditioned when ``lam`` dominates:
``cond(H0_S) <= 1 + r`` with ``r = max_S trace(C_S) / lam``.  The systems in ``H0_S`` use
Jacobi CG (4 iterations at ``r = 1``, about 40 at ``r = 1000``, each a few milliseconds),
cheaper than ``m`` factorisations; the Newton systems, whose products are data passes, use
the Cholesky factor of ``H0_S`` (float32) once ``r > 2``, factorised on the first Newton
step (at once when ``r > 100``); ``SurrogateFit.preconditioner`` says whether it was used.

Why not solve the ``d x d`` Newton systems directly: forming the exact Hessians costs
``sum_S |D_S| d^2`` multiply-adds per Newton step (m = 200, |D_S| = 10,000, d = 400: 3.2e11),
plus ``m d^3 / 3`` to factorise them, while one batched Hessian-vector product costs
``2 sum_S |D_S| d`` (1.6e9): 200 times less.

Precision.  Iterates, gradients at 0, objective values and CG vectors are float64.  With
``tol >= 1e-6`` the data products (margins, gradients, Hessian-vector products) run in
float32: in the gradient above only the last term needs the data, and its coefficients
``w (s - 1/2)`` are about ``w a / 4`` (against ``w / 2`` in the textbook form), so its
float32 rounding costs about 1e-8 (margins ~0.1) to 1e-7 (margins ~1) of ``||grad at 0||``
on the benchmark data, well under the tolerance; the margins of the iterate accumulate the
float32 margins of the steps.  A subset stuck at that rounding floor (a Newton step that
does not halve a gradient already below 1e-4 of the initial one) is finished in float64.
With ``tol < 1e-6`` the data products are float64 throughout.  The Gram matrices only steer
search directions: float32, or products of bfloat16-rounded rows where the CPU has native
bfloat16 dot products and ``r <= 10`` (3x faster; relative error ~1e-3 of ``C_S``, itself at
most ``10 lam``, so it neither measurably slows the steps nor endangers the descent bound,
which has a factor 2 to spare).

Convergence.  Subset S has converged when ``||grad L_S(u)|| <= tol * ||grad L_S(0)||``; a
subset whose gradient at 0 is zero (e.g. all weights zero) has the exact solution ``u = 0``.
The solution is accurate to about ``tol`` in relative norm (tested against scikit-learn).
Subsets are processed in chunks (``batch_size``) so that the ``m`` Cholesky factors
(``4 d^2`` bytes each) fit in memory.

Step size: ``choose_lambda``
----------------------------
``lam`` alone does not control the size of the parameter change ``Delta = P u`` (METHOD.md,
stage 3): :func:`choose_lambda` picks one ``lam`` for the run so that the median relative
distance ``delta(u) = sqrt(u^T P^T P u) / ||theta*||`` over subsets hits a target (1% by
default).  It starts from the ``lam`` at which the *quadratic model* (the first Newton step
from 0, Gram products only) hits the target, which in the near-quadratic regime is within the
tolerance of the answer, so a single real fit usually confirms it; otherwise it brackets and
bisects on ``log(lam)`` (with log-log interpolation, safeguarded) with real fits, each
warm-started from the previous one when that one needed many iterations (from 0 otherwise:
near-quadratic problems converge faster from 0, whose first step needs no data pass).

Returned solutions and diagnostics are float64 (int64 / bool for counts and flags), on the
device of ``G``, whatever the dtype of the inputs.  (Written device-agnostic; exercised on
CPU only.)
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError

__all__ = ["NoAdvantageSignal", "SurrogateFit", "TargetDeltaUnreachable", "choose_lambda", "fit_subsets", "relative_distance"]

_DTYPE = torch.float64
# Data products (margins, gradients, Hessian-vector products) run in float32 when tol >= this
# (errors of the gradient about 1e-8 to 1e-7 of ||grad at 0||, see the module docstring), in
# float64 otherwise.
_FAST_TOL = 1e-6
_F32 = torch.float32
# The Gram matrices, the H0 products and the exact preconditioner run in float32: they only
# choose search directions.
_PRECOND_DTYPE = torch.float32
# Preconditioners and Gram matrices by r = max_S trace(C_S) / lam (cond(H0_S) <= 1 + r), see
# _Preconditioner: Newton systems use Jacobi up to _JACOBI_TRACE_RATIO, the Cholesky factor of
# H0 beyond (factorised up front beyond _CHOLESKY_TRACE_RATIO); H0 products use the
# low-precision Gram matrices up to _LOWP_TRACE_RATIO.
_JACOBI_TRACE_RATIO = 2.0
_CHOLESKY_TRACE_RATIO = 100.0
_LOWP_TRACE_RATIO = 10.0
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
# (any length in (0, 2) decreases the objective, see _fit_chunk).
_T_MAX = 1.9
# choose_lambda: the quadratic model that picks the starting lam (see _model_lambda), and
# warm starts only after fits that took more than _COLD_START_ITERS iterations.
_MODEL_STEPS = 8
_MODEL_MAX_CG = 20
_MODEL_ETA = 1e-3
_MODEL_MAX_LOG_STEP = math.log(100.0)
_COLD_START_ITERS = 3
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
        Iterations (majorization or Newton steps, see the module docstring) taken by each
        subset.
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
        ill-conditioned problem), else ``"jacobi"`` (see the module docstring);
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


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------


class NoAdvantageSignal(UserError, ValueError):
    """:func:`choose_lambda`: theta*'s advantage signal is zero where the surrogate needs it (every
    weight ``w = |A|`` of a task zero, or its weighted gradient features cancelling), so no
    ``lam`` gives a nonzero step: a user-facing condition (train longer, another checkpoint,
    rewards that vary), not a bug; a ``ValueError`` as before."""

    transient = False


class TargetDeltaUnreachable(UserError, ValueError):
    """:func:`choose_lambda`: the median relative distance cannot reach ``target_delta`` (too
    little signal for so large a step, or too much for so small a one)."""

    transient = False


_SIGNAL_ADVICE = ("train the meta-policy longer (--steps), pin theta* to another training checkpoint (--checkpoint), or "
                  "check that the tasks' rewards vary (constant rewards give zero advantages)")


def _no_signal_message(data: "_TaskBlocks", target_delta: float) -> str:
    """Why the surrogate's gradient at 0 vanishes: which tasks carry no signal."""
    n = data.n
    dead = [i for i in range(n) if not bool(torch.any(data.b[i] != 0))]
    if len(dead) == n:
        where = "theta*'s advantage signal is zero on every task (every advantage is 0, or the gradient features cancel)"
    else:
        shown = ", ".join(str(i) for i in dead[:10]) + (" ..." if len(dead) > 10 else "")
        where = (f"theta*'s advantage signal is zero on {len(dead)} of {n} tasks (task indices {shown}), which leaves at least "
                 "half of the subsets without a gradient" if dead else
                 "the advantage-weighted gradient features cancel on at least half of the subsets")
    return (f"{where}: the fitted surrogates do not move from theta* at any L2 strength, so none reaches "
            f"target_delta={target_delta} (--target-delta); {_SIGNAL_ADVICE}")


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


def _all_finite(x: Tensor) -> bool:
    """Whether a non-empty floating tensor holds no NaN or inf (min and max propagate NaN;
    much faster than ``isfinite(x).all()``, which materialises a boolean copy)."""
    lo, hi = torch.aminmax(x)
    return bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))


def _validate_data(
    G: Any, y: Any, w: Any, task: Any, members: Any, train_mask: Any, mask_name: str = "train_mask"
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Check shapes, dtypes and ranges; return float64 / int64 / bool tensors.

    ``train_mask=None`` means all rows; the mask is reported as ``mask_name`` in messages.
    """
    G = _as_tensor("G", G)
    if G.ndim != 2 or G.shape[0] == 0 or G.shape[1] == 0:
        raise ValueError(
            f"The 'G' parameter must be a non-empty 2-D tensor of shape (N, d). Got shape {tuple(G.shape)}."
        )
    if not (G.is_floating_point()):
        raise ValueError(f"The 'G' parameter must be a floating-point tensor. Got dtype {G.dtype}.")
    G = G.to(_DTYPE)
    dev = G.device
    if not _all_finite(G):
        raise ValueError("The 'G' parameter must be finite (it contains NaN or inf).")
    N = G.shape[0]

    y = _as_tensor("y", y)
    if y.shape != (N,):
        raise ValueError(f"The 'y' parameter must have shape (N,) = ({N},). Got shape {tuple(y.shape)}.")
    y = y.to(device=dev, dtype=_DTYPE)
    if not ((y == 1) | (y == -1)).all():
        raise ValueError("The 'y' parameter must contain only the labels +1 and -1.")

    w = _as_tensor("w", w)
    if w.shape != (N,):
        raise ValueError(f"The 'w' parameter must have shape (N,) = ({N},). Got shape {tuple(w.shape)}.")
    w = w.to(device=dev, dtype=_DTYPE)
    if not torch.isfinite(w).all() or (w < 0).any():
        raise ValueError("The 'w' parameter must be finite and >= 0.")

    members = _as_tensor("members", members)
    if members.dtype != torch.bool or members.ndim != 2 or members.shape[0] == 0 or members.shape[1] == 0:
        raise ValueError(
            "The 'members' parameter must be a non-empty bool tensor of shape (m, n). "
            f"Got dtype {members.dtype} and shape {tuple(members.shape)}."
        )
    members = members.to(dev)
    n = members.shape[1]

    task = _as_tensor("task", task)
    if task.shape != (N,) or task.is_floating_point() or task.dtype == torch.bool or task.is_complex():
        raise ValueError(
            f"The 'task' parameter must be an integer tensor of shape (N,) = ({N},). "
            f"Got dtype {task.dtype} and shape {tuple(task.shape)}."
        )
    task = task.to(device=dev, dtype=torch.int64)
    if N and (int(task.min()) < 0 or int(task.max()) >= n):
        raise ValueError(f"The 'task' parameter must take values in the range [0, n={n}) (n = members.shape[1]).")

    if train_mask is None:
        train_mask = torch.ones(N, dtype=torch.bool, device=dev)
    else:
        train_mask = _as_tensor(mask_name, train_mask)
        if train_mask.dtype != torch.bool or train_mask.shape != (N,):
            raise ValueError(
                f"The '{mask_name}' parameter must be a bool tensor of shape (N,) = ({N},). "
                f"Got dtype {train_mask.dtype} and shape {tuple(train_mask.shape)}."
            )
        train_mask = train_mask.to(dev)
    return G, y, w, task, members, train_mask


# --------------------------------------------------------------------------------------------
# data prepared once per run: training rows grouped by task, statistics reused by all fits
# --------------------------------------------------------------------------------------------


class _TaskBlocks:
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
        self.w32 = self.w.to(_F32)
        self.counts = counts.to(_DTYPE)
        bounds = [0, *torch.cumsum(counts, 0).tolist()]
        self.rows = [slice(bounds[i], bounds[i + 1]) for i in range(n)]
        self.sizes = [bounds[i + 1] - bounds[i] for i in range(n)]
        wy = self.w * self.y
        self.b = torch.zeros(n, self.d, dtype=_DTYPE, device=self.device)
        for i, r in enumerate(self.rows):
            if self.sizes[i]:
                self.b[i] = wy[r] @ self._G[r]
        gy = self._G.to(_F32)  # a copy, scaled in place
        gy.mul_(self.y.to(_F32)[:, None])
        self._Gy = {_F32: gy}
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
        gram = torch.zeros(self.n, d, d, dtype=_PRECOND_DTYPE, device=self.device)
        cuts = [round(k * d / 4) for k in range(5)]
        for i in range(self.n):
            if self.sizes[i]:
                x = (self.Gy(i, _F32) * self.w32[self.rows[i]].sqrt()[:, None]).to(dtype)
                for a, b in zip(cuts[:-1], cuts[1:]):
                    if b > a:
                        gram[i, a:b, a:] = x[:, a:b].T @ x[:, a:]
        upper = gram.triu()
        return upper + upper.transpose(1, 2).tril(-1)

    @property
    def gram(self) -> Tensor:
        """``[n, d, d]`` in ``_PRECOND_DTYPE``: ``Gamma_i = G_i^T diag(w_i) G_i``."""
        if self._gram is None:
            self._gram = self._gram_from(_PRECOND_DTYPE)
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
        return self.gram_lowp.diagonal(dim1=1, dim2=2).to(_DTYPE)


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


# --------------------------------------------------------------------------------------------
# preconditioner
# --------------------------------------------------------------------------------------------


class _Preconditioner:
    """Preconditioner for the linear systems of a chunk: the diagonal of ``H0_S`` or ``H0_S``.

    ``H0_S = C_S + lam I`` with ``C_S = sum_{i in S} Gamma_i / (4 |D_S|)``; with
    ``r = max_S trace(C_S) / lam`` (``cond(H0_S) <= 1 + r``):

    * the systems in ``H0_S`` (majorization steps) use the diagonal (Jacobi): their products
      come from the Gram matrices, cheap enough that CG iterations cost less than the ``m``
      factorisations of an exact preconditioner (4 iterations at ``r = 1``, about 40 at
      ``r = 1000`` on the benchmark data);
    * the Newton systems, whose products are passes over the data, use the Cholesky factor of
      ``H0_S`` (in ``_PRECOND_DTYPE``: it only steers CG, and float32 halves the factorisation
      time and the memory traffic of every application, two batched triangular solves that
      read all ``m`` factors) once ``r > _JACOBI_TRACE_RATIO``; it is factorised on the first
      Newton step (:meth:`exact`), or at once when ``r > _CHOLESKY_TRACE_RATIO``, where
      Newton steps are all but certain and Jacobi would need many iterations; once there it
      serves every system.

    The Gram matrices of the products (:attr:`gram`) are the low-precision ones where
    ``r <= _LOWP_TRACE_RATIO`` (their error is then small against ``lam``), else float32.
    """

    def __init__(self, data: _TaskBlocks, members: Tensor, inv_n: Tensor, lam: float):
        self.data, self.members, self.inv_n, self.lam = data, members, inv_n, lam
        diag = (members.to(_DTYPE) @ data.gram_diag) * (0.25 * inv_n)[:, None]  # diag(C_S), [m, d]
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
        H = (self.members.to(_PRECOND_DTYPE) @ self.gram.reshape(n, d * d)).reshape(m, d, d)
        H.mul_((0.25 * self.inv_n).to(_PRECOND_DTYPE)[:, None, None])
        H.diagonal(dim1=1, dim2=2).add_(self.lam)
        self.chol = _cholesky(H)

    def apply(self, R: Tensor) -> Tensor:
        L = self.chol
        if L is None:
            return R * self.inv_diag
        z = torch.linalg.solve_triangular(L, R.to(_PRECOND_DTYPE).unsqueeze(-1), upper=False)
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


# --------------------------------------------------------------------------------------------
# the batched solver for one chunk of subsets
# --------------------------------------------------------------------------------------------

# Per task block: the block-local positions of the selected subsets (None: all of them) and
# their chunk-local indices.
_Sel = Dict[int, Tuple[Optional[Tensor], Tensor]]


class _Chunk:
    """Batched objective, gradient and Hessian-vector products for a chunk of subsets.

    Margins ``a_t = y_t g_t^T u_S`` are kept per task block as ``[m_i, N_i]`` matrices (``m_i``
    the subsets of the chunk that contain task ``i``), in the data dtype ``dt`` (float32 when
    ``fast``, float64 otherwise).
    """

    def __init__(self, data: _TaskBlocks, members: Tensor, lam: float, fast: bool):
        self.data = data
        self.lam = lam
        self.dt = _F32 if fast else _DTYPE
        self.m = members.shape[0]
        mf = members.to(_DTYPE)
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

    def gradient(self, A: dict[int, Tensor], U: Tensor, sel: _Sel) -> Tensor:
        """Gradient ``[m, d]`` (float64) on the selected subsets (other rows: ``g0 + lam u``).

        ``grad = g0 + lam u + G^T (w y (sigmoid(a) - 1/2)) / |D_S|``: only the last term, whose
        coefficients are ``w |a| / 4`` at most, needs a pass over the data.  Also records the
        curvature ``s (1 - s)`` of the selected subsets' rows in :attr:`curv`.
        """
        grad = self.grad0 + self.lam * U
        for i, (keep, sub) in sel.items():
            a = A[i] if keep is None else A[i].index_select(0, keep)
            s = torch.sigmoid(a)
            c = s * (1.0 - s)
            if keep is None:
                self.curv[i] = c
            else:
                self.curv[i].index_copy_(0, keep, c)
            e = s.sub_(0.5).mul_(self.wd[i])
            grad.index_add_(0, sub, (e @ self.Gy[i]).to(_DTYPE) * self.inv_n.index_select(0, sub)[:, None])
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
        out = torch.zeros(self.m, dtype=_DTYPE, device=self.data.device)
        for i, (keep, sub) in sel.items():
            z = Zp[i] if keep is None else Zp[i].index_select(0, keep)
            c = self.curv[i] if keep is None else self.curv[i].index_select(0, keep)
            q = (z * z).mul_(c) @ self.wd[i]
            out.index_add_(0, sub, q.to(_DTYPE) * self.inv_n.index_select(0, sub))
        return out

    def line_blocks(
        self, A: dict[int, Tensor], Zp: dict[int, Tensor], sel: _Sel
    ) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
        """Float64 margins of the selected subsets' rows and of a direction, for :meth:`loss_at`."""
        out = []
        for i, (keep, sub) in sel.items():
            a = A[i] if keep is None else A[i].index_select(0, keep)
            z = Zp[i] if keep is None else Zp[i].index_select(0, keep)
            out.append((sub, a.to(_DTYPE), z.to(_DTYPE), self.data.w[self.data.rows[i]]))
        return out

    def loss_at(self, blocks: list[tuple[Tensor, Tensor, Tensor, Tensor]], t: Tensor, U: Tensor, P: Tensor) -> Tensor:
        """Objective (float64) at ``U + t P`` on the subsets of ``blocks`` (other rows: penalty only)."""
        Ut = U + t[:, None] * P
        out = 0.5 * self.lam * (Ut * Ut).sum(dim=1)
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
        scale = torch.zeros(len(self.tasks), width, dtype=_DTYPE, device=dev)
        for k, i in enumerate(self.tasks):
            sub = self.subs[i]
            idx[k, : sub.numel()] = sub
            scale[k, : sub.numel()] = 0.25 * self.inv_n.index_select(0, sub)
        self._gram_idx = idx.flatten()
        self._gram_scale = scale  # zero on the padding

    def hvp_gram(self, V: Tensor, active: Tensor) -> tuple[Tensor, dict[int, tuple[Tensor | None, Tensor]]]:
        """``H0_S v_S = sum_{i in S} Gamma_i v_S / (4 |D_S|) + lam v_S`` from the Gram matrices.

        ``d^2`` instead of ``2 N_i d`` multiply-adds per task and subset, in ``_PRECOND_DTYPE``,
        as one batched product over the tasks; returns no data products.
        """
        out = self.lam * V * active[:, None]
        if not self.tasks:
            return out, {}
        T, width = self._gram_scale.shape
        X = V.to(_PRECOND_DTYPE).index_select(0, self._gram_idx).view(T, width, -1)
        scale = self._gram_scale * active.to(_DTYPE).index_select(0, self._gram_idx).view(T, width)
        Y = torch.bmm(X, self._gram_t).mul_(scale.to(_PRECOND_DTYPE)[:, :, None])
        acc = torch.zeros(V.shape, dtype=_PRECOND_DTYPE, device=V.device)
        acc.index_add_(0, self._gram_idx, Y.view(T * width, -1))
        return out.add_(acc.to(_DTYPE)), {}

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
            out.index_add_(0, sub, ((Si * Z) @ self.Gy[i]).to(_DTYPE) * self.inv_n.index_select(0, sub)[:, None])
            products[i] = (keep, Z)
        return out, products


_Hvp = Callable[[Tensor, Tensor], "tuple[Tensor, dict[int, tuple[Tensor | None, Tensor]]]"]


def _pcg(
    chunk: _Chunk,
    precond: _Preconditioner,
    hvp: _Hvp,
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


def _fit_chunk(
    data: _TaskBlocks,
    members: Tensor,
    lam: float,
    u0: Tensor | None,
    tol: float,
    max_iter: int,
    max_cg: int,
    fast: bool | None = None,
) -> SurrogateFit:
    if fast is None:
        fast = tol >= _FAST_TOL
    chunk = _Chunk(data, members, lam, fast)
    precond = _Preconditioner(data, members, chunk.inv_n, lam)
    chunk.set_gram(precond.gram)
    m, d, dev = chunk.m, data.d, data.device
    g0norm = chunk.grad0.norm(dim=1)
    chunk.reset_curvature()
    if u0 is None or not bool((u0 != 0).any()):
        U = torch.zeros(m, d, dtype=_DTYPE, device=dev)
        A = chunk.zeros()
        grad = chunk.grad0.clone()
        at_zero = True
    else:
        U = u0.to(device=dev, dtype=_DTYPE).clone()
        U[g0norm == 0] = 0.0  # no signal: u = 0 is the exact solution
        every = chunk.select(torch.ones(m, dtype=torch.bool, device=dev))
        A = chunk.margins(U, every)
        grad = chunk.gradient(A, U, every)
        at_zero = False
    gnorm = grad.norm(dim=1)
    iterations = torch.zeros(m, dtype=torch.int64, device=dev)
    stalled = torch.zeros(m, dtype=torch.bool, device=dev)
    newton = torch.zeros(m, dtype=torch.bool, device=dev)  # per subset: Newton or majorization steps
    last_ratio = torch.zeros(m, dtype=_DTYPE, device=dev)
    cg_total = 0
    eps = torch.finfo(_DTYPE).eps
    while True:
        converged = gnorm <= tol * g0norm
        active = ~converged & ~stalled & (iterations < max_iter)
        if not bool(active.any()):
            break
        iterations += active.to(torch.int64)
        rel = torch.where(g0norm > 0, gnorm / torch.where(g0norm > 0, g0norm, 1.0), 0.0)
        mm, nt = active & ~newton, active & newton
        P = torch.zeros(m, d, dtype=_DTYPE, device=dev)
        GP = None
        if bool(mm.any()):
            # majorization step p = -H0^{-1} g: H0 >= the Hessian everywhere, so it decreases
            # the objective without a line search; from u = 0 it is the exact Newton step
            if at_zero:
                eta = torch.full_like(rel, _MM_ETA_FIRST)
            else:  # aim at the tolerance, but no tighter than the last contraction allows
                eta = torch.maximum(_MM_ETA_SAFETY * tol / rel.clamp_min(1e-300), _MM_ETA_RATIO * last_ratio)
                eta = eta.clamp(_MM_ETA_MIN, _MM_ETA_MAX)
            Pm, _, k = _pcg(chunk, precond, chunk.hvp_gram, -grad, mm, eta, max_cg)
            P.add_(Pm)
            cg_total += k
        if bool(nt.any()):
            precond.exact()
            S = chunk.weighted_curvature()  # w s (1 - s) at the current iterate
            eta = torch.clamp(rel, max=_ETA_MAX)  # forcing term: quadratic convergence near the optimum
            Pn, GP, k = _pcg(
                chunk, precond, lambda V, live: chunk.hvp_data(S, V, live), -grad, nt, eta, max_cg, products=fast
            )
            P.add_(Pn)
            cg_total += k
        # margins of the direction: a pass over the data, except for Newton steps in fast mode
        # (accumulated from CG's products)
        Zp = chunk.margins(P, chunk.select(mm if fast else active))
        if GP is not None:
            for i in chunk.tasks:
                Zp[i].add_(GP[i])
        t = active.to(_DTYPE)
        if bool(mm.any()) and not at_zero:
            # step length: a Newton step on t -> f(u + t p) from t = 0, with the exact curvature
            # p^T H(u) p (H <= H0 makes the majorization step short along p).  By the H0 bound
            # f(u + t p) <= f(u) + t (1 - t / 2) g^T p, so any t in (0, 2) satisfies Armijo's
            # condition: t is kept in [1, _T_MAX], no line search needed.
            slope = (grad * P).sum(dim=1)
            curv = chunk.curvature_along(Zp, chunk.select(mm)) + lam * (P * P).sum(dim=1)
            t_mm = torch.where(curv > 0, -slope / torch.where(curv > 0, curv, 1.0), 1.0).clamp(1.0, _T_MAX)
            t = torch.where(mm, t_mm, t)
        if bool(nt.any()):
            # per-subset Armijo backtracking for the Newton steps (elementwise work only)
            blocks = chunk.line_blocks(A, Zp, chunk.select(nt))
            f0 = chunk.loss_at(blocks, torch.zeros_like(t), U, P)
            slope = (grad * P).sum(dim=1)
            accepted = ~nt
            slack = 16 * eps * f0.abs()  # round-off allowance near the optimum
            for _ in range(_MAX_BACKTRACK):
                ft = chunk.loss_at(blocks, t, U, P)
                accepted = accepted | (ft <= f0 + _ARMIJO_C * t * slope + slack)
                if bool(accepted.all()):
                    break
                t = torch.where(accepted, t, 0.5 * t)
            failed = ~accepted
            t = torch.where(failed, 0.0, t)
            stalled |= failed
        U = U + t[:, None] * P
        for i in chunk.tasks:  # Zp is zero on the rows of inactive subsets
            A[i].addcmul_(t.index_select(0, chunk.subs[i]).to(chunk.dt)[:, None], Zp[i])
        grad = torch.where(active[:, None], chunk.gradient(A, U, chunk.select(active)), grad)
        gnorm_new = grad.norm(dim=1)
        ratio = gnorm_new / torch.where(gnorm > 0, gnorm, 1.0)
        last_ratio = torch.where(active, ratio, last_ratio)
        # majorization steps converge linearly (by the factor ratio): a subset whose ratio is
        # poor (the problem is far from quadratic) switches to Newton steps
        limit = _RHO_SWITCH_FIRST if at_zero else _RHO_SWITCH
        unconverged = gnorm_new > tol * g0norm
        newton |= mm & unconverged & (ratio > limit)
        if fast:
            # a Newton step close to the optimum that does not halve the gradient: the float32
            # products have hit their rounding floor; such subsets are finished in float64
            stalled |= nt & unconverged & (ratio > 0.5) & (gnorm_new < _FLOOR_REL * g0norm)
        gnorm = gnorm_new
        at_zero = False
    fit = SurrogateFit(
        u=U,
        lam=lam,
        iterations=iterations,
        cg_iterations=cg_total,
        converged=converged,
        grad_norm=gnorm,
        grad_norm0=g0norm,
        n_rows=chunk.n_rows.round().to(torch.int64),
        preconditioner=precond.kind,
    )
    redo = stalled & ~converged & (iterations < max_iter)
    if fast and bool(redo.any()):
        # stuck at the float32 rounding floor of the gradient (not seen in practice at
        # tol >= _FAST_TOL): finish those subsets in float64 from where they are
        idx = torch.nonzero(redo).flatten()
        left = int((max_iter - iterations.index_select(0, idx)).max())
        sub = _fit_chunk(data, members.index_select(0, idx), lam, U.index_select(0, idx), tol, left, max_cg, False)
        fit.u[idx] = sub.u
        fit.iterations[idx] += sub.iterations
        fit.cg_iterations += sub.cg_iterations
        fit.converged[idx] = sub.converged
        fit.grad_norm[idx] = sub.grad_norm
        if sub.preconditioner != fit.preconditioner:
            fit.preconditioner = "+".join(sorted({fit.preconditioner, sub.preconditioner}))
    return fit


def _chunk_size(d: int, batch_size: int | None) -> int:
    if batch_size is not None:
        return batch_size
    return max(1, min(_MAX_CHUNK, _PRECOND_BYTES // (4 * d * d)))


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
        Subsets solved together; default as many as fit in 256 MiB of exact preconditioners
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
            raise ValueError(
                f"The 'u0' parameter must be a finite tensor of shape (m, d) = ({m}, {d}). "
                f"Got shape {tuple(u0.shape)}."
            )
    data = _TaskBlocks(G, y, w, task, train_mask, members.shape[1])
    _check_rows(data, members)
    return _fit_prepared(data, members, lam, u0, tol, max_iter, max_cg, batch_size)


def relative_distance(U: Tensor, gram: Tensor, theta_norm: float) -> Tensor:
    """``delta(u) = sqrt(u^T gram u) / theta_norm`` for every row of ``U`` (float64, ``[m]``).

    With ``gram = P^T P`` this is ``||P u|| / ||theta*||``, the relative parameter distance of
    ``theta_S = theta* + P u``.
    """
    U = U.to(_DTYPE)
    q = ((U @ gram.to(device=U.device, dtype=_DTYPE)) * U).sum(dim=1).clamp_min(0.0)
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

    1. starts at ``lam_init`` or, by default, where the quadratic model of the surrogate
       (the first Newton step from ``u = 0``, computed from the Gram matrices without a pass
       over the data) has a median delta within ``rtol / 4`` of the target: a few secant
       steps on ``log(lam)`` from the large-``lam`` estimate
       ``median_S sqrt(g0_S^T gram g0_S) / (theta_norm * target_delta)`` (``g0_S`` the
       gradient at ``u = 0``; since ``||u_S|| <= ||g0_S|| / lam`` this ``lam`` gives a median
       delta of about the target or less).  In the near-quadratic regime the first real fit
       then meets the target;
    2. steps ``lam`` by factors of 10 until the target is bracketed, giving up after
       ``max_decades`` decades;
    3. narrows the bracket on ``log(lam)`` with log-log interpolation, safeguarded to stay
       inside the middle 80% of the bracket (plain bisection when interpolation stalls),
       until ``|median delta / target_delta - 1| <= rtol``.

    A fit is warm-started from the previous one when that one took more than 3 iterations,
    else started from 0 (cheaper for near-quadratic problems, see the module docstring).

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
        Starting point of the search (default: from the quadratic model, see above).
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
    NoAdvantageSignal
        (a :class:`~policygradex.errors.UserError` and ``ValueError``) if the gradient of the
        surrogate at ``u = 0`` vanishes for at least half of the subsets: no advantage signal
        (all weights zero on the subsets' tasks, or cancelling features), so no ``lam`` moves
        the median subset.  An error rather than a degenerate result (``u = 0``, one group):
        with no signal there is nothing to group by, and a "grouping" would only restate the
        absence of data.  The message names the tasks without signal and what to change.
    TargetDeltaUnreachable
        (a ``UserError`` and ``ValueError``) if the median delta stays on one side of the
        target over ``max_decades`` of ``lam``.
    ValueError
        On invalid inputs, or if the search does not converge within ``max_steps`` fits.
    """
    G, y, w, task, members, train_mask = _validate_data(G, y, w, task, members, train_mask)
    d = G.shape[1]
    gram = _as_tensor("gram", gram)
    if gram.shape != (d, d) or not gram.is_floating_point() or not torch.isfinite(gram).all():
        raise ValueError(
            f"The 'gram' parameter must be a finite float tensor of shape (d, d) = ({d}, {d}). "
            f"Got shape {tuple(gram.shape)}."
        )
    gram = gram.to(device=G.device, dtype=_DTYPE)
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

    data = _TaskBlocks(G, y, w, task, train_mask, members.shape[1])
    _check_rows(data, members)
    mf = members.to(_DTYPE)
    n_rows = mf @ data.counts
    grad0 = -(mf @ data.b) * (0.5 / n_rows)[:, None]
    scale = float(np.median(relative_distance(grad0, gram, 1.0).cpu().numpy()))
    if not scale > 0:  # the gradient at u = 0 vanishes for at least half of the subsets
        raise NoAdvantageSignal(_no_signal_message(data, target_delta))
    if lam_init is not None:
        lam = lam_init
    else:
        lam = scale / (theta_norm * target_delta)
        lam = _model_lambda(data, members, gram, theta_norm, target_delta, rtol, lam, max_decades)
    lam_start = lam

    steps = 0
    fit: SurrogateFit | None = None

    def evaluate(lam_: float) -> tuple[SurrogateFit, Tensor, float]:
        nonlocal steps, fit
        steps += 1
        # warm start only after a fit that needed many iterations: near-quadratic problems
        # converge faster from u = 0 (the first step is then exact up to third-order terms and
        # needs no pass over the data)
        u0 = None if fit is None or int(fit.iterations.max()) <= _COLD_START_ITERS else fit.u
        new_fit = _fit_prepared(data, members, lam_, u0, tol, max_iter, max_cg, batch_size)
        fit = new_fit
        deltas_ = relative_distance(new_fit.u, gram, theta_norm)
        return new_fit, deltas_, float(np.median(deltas_.cpu().numpy()))

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
                raise TargetDeltaUnreachable(
                    f"target_delta={target_delta} cannot be reached (--target-delta): the median relative distance "
                    f"is still {med:.3g} at lam={lam:.3g}; raise --target-delta"
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
                raise TargetDeltaUnreachable(
                    f"target_delta={target_delta} cannot be reached (--target-delta): the median relative distance "
                    f"is only {med:.3g} at lam={lam:.3g} ({max_decades:g} decades below the start); the data carry "
                    f"too little advantage signal for this step size: lower --target-delta, or {_SIGNAL_ADVICE}"
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


class _Jacobi:
    """Diagonal preconditioner (the interface of :class:`_Preconditioner`)."""

    kind = "jacobi"

    def __init__(self, inv_diag: Tensor):
        self.inv_diag = inv_diag

    def apply(self, R: Tensor) -> Tensor:
        return R * self.inv_diag


def _model_lambda(
    data: _TaskBlocks,
    members: Tensor,
    gram: Tensor,
    theta_norm: float,
    target: float,
    rtol: float,
    lam: float,
    max_decades: float,
) -> float:
    """A starting ``lam`` for :func:`choose_lambda` from the quadratic model of the surrogate.

    The model's solution is the first Newton step from ``u = 0``, ``-(C_S + lam I)^{-1} g0_S``,
    whose products come from the Gram matrices (no pass over the data); in the small-margin
    regime the method targets it differs from the solution by third-order terms only, so its
    median delta predicts the real one closely.  Secant steps on ``log(median delta)`` against
    ``log(lam)`` (slope -1 to begin with, the large-``lam`` behaviour), at most
    ``_MODEL_STEPS`` of them, each CG solve capped at ``_MODEL_MAX_CG`` iterations (a loose
    solve only biases the start; :func:`choose_lambda` checks every ``lam`` with real fits).
    Returns ``lam`` unchanged unless the model meets the target within ``rtol / 4`` and
    ``max_decades`` of ``lam``.
    """
    m = members.shape[0]
    chunk = _Chunk(data, members, lam, fast=True)
    chunk.set_gram(data.gram_lowp)
    diag = (members.to(_DTYPE) @ data.gram_diag) * (0.25 * chunk.inv_n)[:, None]
    everyone = torch.ones(m, dtype=torch.bool, device=data.device)
    eta = torch.full((m,), _MODEL_ETA, dtype=_DTYPE, device=data.device)
    log_t, x0, reach = math.log(target), math.log(lam), max_decades * math.log(10.0)

    def model_log_median(x_: float) -> float:
        chunk.lam = math.exp(x_)
        precond = _Jacobi(1.0 / (diag + chunk.lam))
        P, _, _ = _pcg(chunk, precond, chunk.hvp_gram, -chunk.grad0, everyone, eta, _MODEL_MAX_CG)
        med = float(np.median(relative_distance(P, gram, theta_norm).cpu().numpy()))
        return math.log(med) if med > 0 and math.isfinite(med) else float("nan")

    x, f = x0, model_log_median(x0)
    slope = -1.0
    for _ in range(_MODEL_STEPS + 1):
        if not math.isfinite(f) or abs(x - x0) > reach:
            break
        if abs(f - log_t) <= math.log1p(rtol / 4):
            return math.exp(x)
        x_new = x + max(-_MODEL_MAX_LOG_STEP, min(_MODEL_MAX_LOG_STEP, (log_t - f) / slope))
        f_new = model_log_median(x_new)
        if math.isfinite(f_new) and f_new != f:
            slope = min((f_new - f) / (x_new - x), -0.05)  # delta decreases as lam grows
        x, f = x_new, f_new
    return lam


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
