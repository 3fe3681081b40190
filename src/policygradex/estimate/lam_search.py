"""The step size of the stage-3 surrogate: one ``lam`` for the run, chosen so that the median
relative parameter distance of the subsets' solutions hits a target (METHOD.md, stage 3).

``lam`` alone does not control the size of the parameter change ``Delta = P u``: the search
(:class:`LambdaSearch`, scikit-learn style: parameters in the constructor, ``fit`` returns the
estimator, results in attributes ending in ``_``) picks ``lam`` so that the median over subsets
of ``delta(u) = sqrt(u^T P^T P u) / ||theta*||`` (:func:`relative_distance`) is within ``rtol``
of ``target_delta``.  It starts from the ``lam`` at which the *quadratic model* (the first Newton
step from 0, Gram products only) hits the target, which in the near-quadratic regime is within
the tolerance of the answer, so a single real fit usually confirms it; otherwise it brackets the
target by factors of 10 of ``lam`` and narrows the bracket on ``log(lam)`` (log-log
interpolation, safeguarded) with real fits (:func:`.surrogate_solver.fit_prepared`), each
warm-started from the previous one when that one needed many iterations (from 0 otherwise:
near-quadratic problems converge faster from 0, whose first step needs no data pass).

:func:`choose_lambda` is the same search as a function returning ``(lam, fit, deltas)``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError
from .surrogate_blocks import TaskBlocks
from .surrogate_checks import DTYPE, as_tensor, check_int, check_positive_float, check_rows, check_solver_args, validate_data
from .surrogate_chunk import Chunk, pcg
from .surrogate_precond import Jacobi
from .surrogate_solver import SurrogateFit, fit_prepared

__all__ = ["LambdaSearch", "NoAdvantageSignal", "TargetDeltaUnreachable", "choose_lambda", "relative_distance"]

# The quadratic model that picks the starting lam (see _model_lambda): secant steps at most, CG
# iterations and tolerance per model solve, the largest step on log(lam).
_MODEL_STEPS = 8
_MODEL_MAX_CG = 20
_MODEL_ETA = 1e-3
_MODEL_MAX_LOG_STEP = math.log(100.0)
# Real fits are warm-started only after fits that took more than this many iterations.
_COLD_START_ITERS = 3


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


def _no_signal_message(data: TaskBlocks, target_delta: float) -> str:
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


def _unreachable_message(target_delta: float, med: float, lam: float, up: bool, max_decades: float) -> str:
    """Why the bracketing gave up: still above the target after raising ``lam`` (``up``), or
    still below it after lowering ``lam``."""
    if up:
        return (f"target_delta={target_delta} cannot be reached (--target-delta): the median relative distance "
                f"is still {med:.3g} at lam={lam:.3g}; raise --target-delta")
    return (f"target_delta={target_delta} cannot be reached (--target-delta): the median relative distance "
            f"is only {med:.3g} at lam={lam:.3g} ({max_decades:g} decades below the start); the data carry "
            f"too little advantage signal for this step size: lower --target-delta, or {_SIGNAL_ADVICE}")


def relative_distance(u: Tensor, gram: Tensor, theta_norm: float) -> Tensor:
    """``delta(u) = sqrt(u^T gram u) / theta_norm`` for every row of ``u`` (float64, ``[m]``).

    With ``gram = P^T P`` this is ``||P u|| / ||theta*||``, the relative parameter distance of
    ``theta_S = theta* + P u``.
    """
    u = u.to(DTYPE)
    q = ((u @ gram.to(device=u.device, dtype=DTYPE)) * u).sum(dim=1).clamp_min(0.0)
    return torch.sqrt(q) / theta_norm


def _model_lambda(
    data: TaskBlocks,
    members: Tensor,
    gram: Tensor,
    theta_norm: float,
    target: float,
    rtol: float,
    lam: float,
    max_decades: float,
) -> float:
    """A starting ``lam`` for :class:`LambdaSearch` from the quadratic model of the surrogate.

    The model's solution is the first Newton step from ``u = 0``, ``-(C_S + lam I)^{-1} g0_S``,
    whose products come from the Gram matrices (no pass over the data); in the small-margin
    regime the method targets it differs from the solution by third-order terms only, so its
    median delta predicts the real one closely.  Secant steps on ``log(median delta)`` against
    ``log(lam)`` (slope -1 to begin with, the large-``lam`` behaviour), at most
    ``_MODEL_STEPS`` of them, each CG solve capped at ``_MODEL_MAX_CG`` iterations (a loose
    solve only biases the start; the search checks every ``lam`` with real fits).
    Returns ``lam`` unchanged unless the model meets the target within ``rtol / 4`` and
    ``max_decades`` of ``lam``.
    """
    m = members.shape[0]
    chunk = Chunk(data, members, lam, fast=True)
    chunk.set_gram(data.gram_lowp)
    diag = (members.to(DTYPE) @ data.gram_diag) * (0.25 * chunk.inv_n)[:, None]
    everyone = torch.ones(m, dtype=torch.bool, device=data.device)
    eta = torch.full((m,), _MODEL_ETA, dtype=DTYPE, device=data.device)
    log_t, x0, reach = math.log(target), math.log(lam), max_decades * math.log(10.0)

    def model_log_median(x_: float) -> float:
        chunk.lam = math.exp(x_)
        precond = Jacobi(1.0 / (diag + chunk.lam))
        P, _, _ = pcg(chunk, precond, chunk.hvp_gram, -chunk.grad0, everyone, eta, _MODEL_MAX_CG)
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


class _Search:
    """One run of :class:`LambdaSearch`: the prepared data and settings, the fits made so far.

    :meth:`evaluate` makes a real fit at a ``lam`` and keeps it as the current one (``lam``,
    ``fit``, ``deltas``, ``med``); :meth:`bracket` and :meth:`narrow` are the two phases of the
    search after the first fit.
    """

    def __init__(self, data: TaskBlocks, members: Tensor, gram: Tensor, theta_norm: float, target: float, rtol: float,
                 max_steps: int, max_decades: float, solver: tuple[float, int, int, int | None]):
        self.data, self.members, self.gram, self.theta_norm = data, members, gram, theta_norm
        self.target, self.rtol, self.max_steps, self.max_decades = target, rtol, max_steps, max_decades
        self.solver = solver  # tol, max_iter, max_cg, batch_size
        self.steps = 0
        self.lam = float("nan")
        self.fit: SurrogateFit | None = None
        self.deltas: Tensor | None = None
        self.med = float("nan")

    def evaluate(self, lam: float) -> bool:
        """Fit at ``lam``; whether its median delta is within ``rtol`` of the target."""
        self.steps += 1
        # warm start only after a fit that needed many iterations: near-quadratic problems
        # converge faster from u = 0 (the first step is then exact up to third-order terms and
        # needs no pass over the data)
        prev = self.fit
        u0 = None if prev is None or int(prev.iterations.max()) <= _COLD_START_ITERS else prev.u
        fit = fit_prepared(self.data, self.members, lam, u0, *self.solver)
        self.lam, self.fit = lam, fit
        self.deltas = relative_distance(fit.u, self.gram, self.theta_norm)
        self.med = float(np.median(self.deltas.cpu().numpy()))
        return abs(self.med / self.target - 1.0) <= self.rtol

    def bracket(self, lam_start: float) -> tuple[float, float, float, float] | None:
        """Step ``lam`` by factors of 10 from the current fit (made at ``lam_start``) until the
        median delta crosses the target: up while it is above the target, down while below.

        Returns ``(lo, lo_med, hi, hi_med)``, the median delta above the target at ``lo`` and
        below it at ``hi``; ``None`` when a fit on the way meets the target.  Raises
        :class:`TargetDeltaUnreachable` after ``max_decades`` decades (or ``max_steps`` fits)
        on the starting side.
        """
        up = self.med > self.target  # delta too large: raise lam (a NaN median lowers it)
        lam, med = self.lam, self.med
        near = (lam, med)  # the last fit on the starting side of the target
        while True:
            decades = math.log10(lam / lam_start) if up else math.log10(lam_start / lam)
            if self.steps >= self.max_steps or decades >= self.max_decades:
                raise TargetDeltaUnreachable(_unreachable_message(self.target, med, lam, up, self.max_decades))
            lam = lam * 10.0 if up else lam / 10.0
            if self.evaluate(lam):
                return None
            med = self.med
            if (med > self.target) if up else (med < self.target):
                near = (lam, med)
            else:
                far = (lam, med)
                break
        lo, hi = (near, far) if up else (far, near)
        return lo[0], lo[1], hi[0], hi[1]

    def narrow(self, lo: float, lo_med: float, hi: float, hi_med: float) -> bool:
        """Narrow the bracket on ``log(lam)`` with log-log interpolation, kept inside the
        middle 80% of the bracket (bisection when it stalls), until a fit meets the target
        (``True``) or ``max_steps`` fits are spent (ValueError)."""
        log_t = math.log(self.target)
        while self.steps < self.max_steps:
            a, b = math.log(lo), math.log(hi)
            fa, fb = math.log(lo_med) if lo_med > 0 else None, math.log(hi_med) if hi_med > 0 else None
            x = 0.5 * (a + b)
            if fa is not None and fb is not None and fa != fb:
                x_int = a + (log_t - fa) * (b - a) / (fb - fa)
                x = min(max(x_int, a + 0.1 * (b - a)), b - 0.1 * (b - a))
            lam = math.exp(x)
            if self.evaluate(lam):
                return True
            if self.med > self.target:
                lo, lo_med = lam, self.med
            else:
                hi, hi_med = lam, self.med
        raise ValueError(
            f"choose_lambda did not reach target_delta={self.target} within rtol={self.rtol} in "
            f"max_steps={self.max_steps} fits (bracket lam in [{lo:.6g}, {hi:.6g}], median delta "
            f"{lo_med:.4g} .. {hi_med:.4g}); increase 'max_steps' or 'rtol'."
        )


class LambdaSearch:
    """Pick one ``lam`` so that the median relative distance over subsets hits ``target_delta``.

    ``delta_S(lam) = sqrt(u_S^T gram u_S) / theta_norm`` decreases as ``lam`` grows (for
    ``gram = P^T P`` with ``p >> d``, ``gram`` is close to a multiple of the identity, and
    ``||u_S(lam)||`` is decreasing).  :meth:`fit`

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
    else started from 0 (cheaper for near-quadratic problems, see the docstring of
    :mod:`.surrogate`).

    Parameters
    ----------
    target_delta : float, > 0
        Target median relative distance (METHOD.md: about 1% keeps the first-order
        approximation accurate).
    rtol : float, in (0, 1)
        Relative tolerance on the median delta.
    lam_init : float, optional
        Starting point of the search (default: from the quadratic model, see above).
    max_steps : int
        Fits at most in the whole search.
    max_decades : float
        How far (in powers of 10) from the start the bracketing may go.
    tol, max_iter, max_cg, batch_size
        Solver settings, as in :func:`.surrogate_solver.fit_subsets`.

    Parameters are stored as given and checked by :meth:`fit`.

    Attributes
    ----------
    lam_ : float
        The chosen L2 strength.
    fit_ : SurrogateFit
        The fit at ``lam_``.
    deltas_ : Tensor, float64, shape (m,)
        The relative distance of every subset's solution.
    median_delta_ : float
        Their median (within ``rtol`` of ``target_delta``).
    lam_start_ : float
        Where the search started (``lam_init``, or the quadratic model's ``lam``).
    n_fits_ : int
        Real fits made.
    """

    def __init__(
        self,
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
    ) -> None:
        self.target_delta = target_delta
        self.rtol = rtol
        self.lam_init = lam_init
        self.max_steps = max_steps
        self.max_decades = max_decades
        self.tol = tol
        self.max_iter = max_iter
        self.max_cg = max_cg
        self.batch_size = batch_size

    _PARAMS = ("target_delta", "rtol", "lam_init", "max_steps", "max_decades", "tol", "max_iter", "max_cg", "batch_size")

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's parameters (scikit-learn's estimator interface)."""
        return {name: getattr(self, name) for name in self._PARAMS}

    def set_params(self, **params: Any) -> LambdaSearch:
        """Set constructor parameters by name; returns the estimator."""
        for name, value in params.items():
            if name not in self._PARAMS:
                raise ValueError(f"Invalid parameter {name!r} for LambdaSearch; valid parameters are {list(self._PARAMS)}.")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        return f"LambdaSearch({', '.join(f'{k}={v!r}' for k, v in self.get_params().items())})"

    def fit(
        self,
        G: Tensor,
        y: Tensor,
        w: Tensor,
        task: Tensor,
        members: Tensor,
        train_mask: Tensor | None,
        gram: Tensor,
        theta_norm: float,
    ) -> LambdaSearch:
        """Search ``lam`` for these data; returns ``self`` with the fitted attributes set.

        Parameters
        ----------
        G, y, w, task, members, train_mask
            As in :func:`.surrogate_solver.fit_subsets`.
        gram : Tensor, shape (d, d)
            ``P^T P`` for the random projection ``P`` (``Delta = P u``).
        theta_norm : float, > 0
            ``||theta*||``.

        Raises
        ------
        NoAdvantageSignal
            (a :class:`~policygradex.errors.UserError` and ``ValueError``) if the gradient of
            the surrogate at ``u = 0`` vanishes for at least half of the subsets: no advantage
            signal (all weights zero on the subsets' tasks, or cancelling features), so no
            ``lam`` moves the median subset.  An error rather than a degenerate result (``u =
            0``, one group): with no signal there is nothing to group by, and a "grouping" would
            only restate the absence of data.  The message names the tasks without signal and
            what to change.
        TargetDeltaUnreachable
            (a ``UserError`` and ``ValueError``) if the median delta stays on one side of the
            target over ``max_decades`` of ``lam``.
        ValueError
            On invalid inputs, or if the search does not converge within ``max_steps`` fits.

        Warns (RuntimeWarning) when some subset fits at the chosen ``lam`` did not converge.
        """
        return self._fit(G, y, w, task, members, train_mask, gram, theta_norm)

    def _fit(self, G: Tensor, y: Tensor, w: Tensor, task: Tensor, members: Tensor, train_mask: Tensor | None,
             gram: Tensor, theta_norm: float) -> LambdaSearch:
        """The body of :meth:`fit`, called by :meth:`fit` and :func:`choose_lambda` alike, so that the
        warning below names the line that called either."""
        search, lam_init = self._prepare(G, y, w, task, members, train_mask, gram, theta_norm)
        lam_start = self._start(search, lam_init)
        if not search.evaluate(lam_start):
            bracket = search.bracket(lam_start)
            if bracket is not None:
                search.narrow(*bracket)
        fit = search.fit
        assert fit is not None and search.deltas is not None
        if not bool(fit.converged.all()):
            bad = int((~fit.converged).sum())
            warnings.warn(
                f"{bad} of {fit.u.shape[0]} subset fits did not converge at lam={search.lam:.4g} "
                "(see SurrogateFit.converged / grad_norm); raise max_iter or max_cg.",
                RuntimeWarning,
                stacklevel=3,
            )
        self.lam_, self.fit_, self.deltas_ = search.lam, fit, search.deltas
        self.median_delta_ = search.med
        self.lam_start_ = lam_start
        self.n_fits_ = search.steps
        return self

    def _prepare(self, G: Tensor, y: Tensor, w: Tensor, task: Tensor, members: Tensor, train_mask: Tensor | None,
                 gram: Tensor, theta_norm: float) -> tuple[_Search, float | None]:
        """Check the parameters and data; lay the data out for the fits.  Returns the search and
        the checked ``lam_init``."""
        G, y, w, task, members, train_mask = validate_data(G, y, w, task, members, train_mask)
        d = G.shape[1]
        gram = as_tensor("gram", gram)
        if gram.shape != (d, d) or not gram.is_floating_point() or not torch.isfinite(gram).all():
            raise ValueError(
                f"The 'gram' parameter must be a finite float tensor of shape (d, d) = ({d}, {d}). "
                f"Got shape {tuple(gram.shape)}."
            )
        gram = gram.to(device=G.device, dtype=DTYPE)
        theta_norm = check_positive_float("theta_norm", theta_norm)
        target_delta = check_positive_float("target_delta", self.target_delta)
        rtol = check_positive_float("rtol", self.rtol)
        if rtol >= 1:
            raise ValueError(f"The 'rtol' parameter must be a float in the range (0, 1). Got {rtol!r} instead.")
        lam_init = None if self.lam_init is None else check_positive_float("lam_init", self.lam_init)
        max_steps = check_int("max_steps", self.max_steps, 1)
        max_decades = check_positive_float("max_decades", self.max_decades)
        solver = check_solver_args(self.tol, self.max_iter, self.max_cg, self.batch_size)
        data = TaskBlocks(G, y, w, task, train_mask, members.shape[1])
        check_rows(data.counts, members)
        return _Search(data, members, gram, theta_norm, target_delta, rtol, max_steps, max_decades, solver), lam_init

    def _start(self, search: _Search, lam_init: float | None) -> float:
        """The first ``lam``: ``lam_init``, or the quadratic model's (raises NoAdvantageSignal
        when the gradient at ``u = 0`` vanishes for at least half of the subsets)."""
        data, members = search.data, search.members
        mf = members.to(DTYPE)
        n_rows = mf @ data.counts
        grad0 = -(mf @ data.b) * (0.5 / n_rows)[:, None]
        scale = float(np.median(relative_distance(grad0, search.gram, 1.0).cpu().numpy()))
        if not scale > 0:  # the gradient at u = 0 vanishes for at least half of the subsets
            raise NoAdvantageSignal(_no_signal_message(data, search.target))
        if lam_init is not None:
            return lam_init
        lam = scale / (search.theta_norm * search.target)
        return _model_lambda(data, members, search.gram, search.theta_norm, search.target, search.rtol, lam,
                             search.max_decades)


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
    **search_options,
) -> tuple[float, SurrogateFit, Tensor]:
    """:class:`LambdaSearch` as a function: :meth:`LambdaSearch.fit`'s data, ``target_delta`` and
    the search's other keyword parameters (``search_options``: ``rtol``, ``lam_init``, ...) in one
    call (same checks, errors and warning).

    Returns
    -------
    lam : float
        The chosen L2 strength (``lam_``).
    fit : SurrogateFit
        The fit at ``lam`` (``fit_``).
    deltas : Tensor, float64, shape (m,)
        The relative distance of every subset's solution (``deltas_``).
    """
    search = LambdaSearch(target_delta, **search_options)
    search._fit(G, y, w, task, members, train_mask, gram, theta_norm)
    return search.lam_, search.fit_, search.deltas_
