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
``_RHO_SWITCH`` in a step (``_RHO_SWITCH_FIRST`` for the first step; constants of
:mod:`.surrogate_solver`) switches to Newton-CG
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
stage 3): :class:`~.lam_search.LambdaSearch` (and :func:`choose_lambda`, the same search as a
function) picks one ``lam`` for the run so that the median relative distance
``delta(u) = sqrt(u^T P^T P u) / ||theta*||`` over subsets hits a target (1% by default).  It
starts from the ``lam`` at which the *quadratic model* (the first Newton step from 0, Gram
products only) hits the target, which in the near-quadratic regime is within the tolerance of
the answer, so a single real fit usually confirms it; otherwise it brackets and bisects on
``log(lam)`` (with log-log interpolation, safeguarded) with real fits, each warm-started from
the previous one when that one needed many iterations (from 0 otherwise: near-quadratic
problems converge faster from 0, whose first step needs no data pass).

Returned solutions and diagnostics are float64 (int64 / bool for counts and flags), on the
device of ``G``, whatever the dtype of the inputs.  (Written device-agnostic; exercised on
CPU only.)


Modules
-------
This module holds the method's description and the public names; the work is split by job:
:mod:`.surrogate_checks` (input checks), :mod:`.surrogate_blocks` (the rows grouped by task and
the per-task statistics, :class:`~.surrogate_blocks.TaskBlocks`), :mod:`.surrogate_precond`
(the preconditioners), :mod:`.surrogate_chunk` (the batched products of a chunk of subsets and
batched CG), :mod:`.surrogate_solver` (the iteration, :func:`fit_subsets`) and
:mod:`.lam_search` (the step size, :class:`LambdaSearch` and :func:`choose_lambda`).
"""

from __future__ import annotations

from .lam_search import LambdaSearch, NoAdvantageSignal, TargetDeltaUnreachable, choose_lambda, relative_distance
from .surrogate_solver import SurrogateFit, fit_subsets

__all__ = [
    "LambdaSearch",
    "NoAdvantageSignal",
    "SurrogateFit",
    "TargetDeltaUnreachable",
    "choose_lambda",
    "fit_subsets",
    "relative_distance",
]
