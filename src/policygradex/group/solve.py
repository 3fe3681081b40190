"""The SDP solve of the grouping relaxation (:mod:`policygradex.group.sdp`): build the cvxpy
problem and run a solver on it, falling back to the other one.

Solvers
-------
``solver="auto"`` uses Clarabel (interior point: an accurate, clean ``X``) for ``n <= 40`` and
SCS (first-order splitting, far cheaper per iteration) above: a whole ``group_tasks`` call
takes 1-3 s at n = 100 on two shared cores, where Clarabel's solve alone takes ~40 s.
``"clarabel"`` and ``"scs"`` force one. If the chosen solver fails, the other is tried; the one
that produced ``X`` is recorded in :attr:`~policygradex.group.sdp.Grouping.solver`. The solvers
see ``U`` and ``lam`` divided by ``max |U|`` (the problem is invariant to that scaling; it
keeps the solvers' arithmetic in range whatever the scale of ``U``). A failure is any exception
of the solver, including the ``PanicException`` (a ``BaseException``) that Clarabel, written in
Rust, raises when it panics; what a solver prints to stdout or stderr while it runs (a Rust
panic's message and backtrace) is discarded. When both fail,
:class:`~policygradex.group.sdp.GroupingSolverError` (a user error) says which option to
change.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import warnings

import cvxpy as cp
import numpy as np

__all__ = ["CLARABEL_MAX_N", "SOLVERS", "solve_sdp"]

#: Largest ``n`` for which ``solver="auto"`` picks Clarabel; SCS above.
CLARABEL_MAX_N = 40
#: The accepted values of ``solver``.
SOLVERS = ("auto", "clarabel", "scs")
_ACCEPTED_STATUS = (cp.OPTIMAL, cp.OPTIMAL_INACCURATE)
_SCS_OPTIONS = {"eps_abs": 1e-6, "eps_rel": 1e-6, "max_iters": 20_000}


def _solver_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a solver's failure rather than Ctrl-C or an exit: any ``Exception``, or
    the ``PanicException`` (a ``BaseException``) through which pyo3 reports a Rust panic."""
    return isinstance(exc, Exception) or type(exc).__name__ == "PanicException"


def _flush_c_stdio() -> None:
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except Exception:  # noqa: BLE001 - no C library to flush (best effort)
        pass


@contextlib.contextmanager
def _quiet_solver():
    """Send file descriptors 1 and 2 to a temporary file, and ``sys.stdout``/``sys.stderr`` to a
    buffer, while a solver runs (SCS prints errors to stdout; a Rust panic prints its message and
    backtrace to stderr before Python sees the exception); restored afterwards, the text dropped."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed or replaced stream
            pass
    try:
        tmp = tempfile.TemporaryFile()
        saved = [os.dup(1), os.dup(2)]
    except OSError:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
        return
    try:
        os.dup2(tmp.fileno(), 1)
        os.dup2(tmp.fileno(), 2)
        sink = io.StringIO()  # and Python-level writes (PySys_WriteStdout), wherever sys.stdout points
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield
    finally:
        _flush_c_stdio()  # what a C solver left in stdio's buffers belongs to the temporary file too
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        tmp.close()


def solve_sdp(U: np.ndarray, k: int | None, penalty: float, solver: str) -> tuple[np.ndarray, str, str]:
    """Solve the relaxation; return ``(X, solver_used, status)``.  Raises ``RuntimeError`` naming
    both solvers' failures when neither produced ``X``."""
    n = U.shape[0]
    first = solver if solver != "auto" else ("clarabel" if n <= CLARABEL_MAX_N else "scs")
    order = [first, "scs" if first == "clarabel" else "clarabel"]
    scale = float(np.max(np.abs(U)))
    if scale > 0:  # the same problem in units of max |U|: the solvers' arithmetic stays in range
        U, penalty = U / scale, penalty / scale
    X = cp.Variable((n, n), PSD=True)
    constraints = [X >= 0, cp.sum(X, axis=1) == 1]
    if k is None:
        objective = cp.Maximize(cp.sum(cp.multiply(U, X)) - penalty * cp.trace(X))
    else:
        objective = cp.Maximize(cp.sum(cp.multiply(U, X)))
        constraints.append(cp.trace(X) == k)
    problem = cp.Problem(objective, constraints)
    failures: list[str] = []
    for name in order:
        try:
            with warnings.catch_warnings(), _quiet_solver():
                # An inaccurate solution is reported in Grouping.status; rounding copes with it.
                warnings.simplefilter("ignore", UserWarning)
                if name == "clarabel":
                    problem.solve(solver=cp.CLARABEL)
                else:
                    problem.solve(solver=cp.SCS, **_SCS_OPTIONS)
        except BaseException as exc:  # noqa: BLE001 - Clarabel's Rust panics are BaseExceptions
            if not _solver_failure(exc):
                raise
            text = " ".join(str(exc).split()) or type(exc).__name__
            failures.append(f"{name}: {text[:200]}")
            continue
        if problem.status in _ACCEPTED_STATUS and X.value is not None and np.all(np.isfinite(X.value)):
            Xv = np.asarray(X.value, dtype=np.float64)
            return 0.5 * (Xv + Xv.T), name, str(problem.status)
        failures.append(f"{name}: status {problem.status}")
    raise RuntimeError("; ".join(failures))
