"""Input checks of the stage-3 surrogate (:mod:`.surrogate`): the data, the subsets and the solver
settings, with messages that name the offending parameter.

Checked data come out as float64 (features, labels, weights), int64 (tasks) and bool (subsets,
masks) tensors on the device of ``G``; :data:`DTYPE` is the float dtype every solution and
diagnostic of the surrogate is returned in.  Shared by :mod:`.surrogate_solver`,
:mod:`.lam_search` and :mod:`.evaluators`.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "DTYPE",
    "all_finite",
    "as_tensor",
    "check_int",
    "check_positive_float",
    "check_rows",
    "check_solver_args",
    "validate_data",
]

#: The dtype of checked float data, iterates, solutions and diagnostics.
DTYPE = torch.float64


def as_tensor(name: str, value: Any) -> Tensor:
    """``value`` as a (detached) tensor; ValueError naming ``name`` when it is not array-like."""
    if isinstance(value, Tensor):
        return value.detach()
    try:
        return torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"The '{name}' parameter must be a tensor or array. Got {type(value).__name__}.") from exc


def check_positive_float(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """A finite real number > 0 (``>= 0`` with ``allow_zero``), as a float."""
    bound = "[0, inf)" if allow_zero else "(0, inf)"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"The '{name}' parameter must be a float in the range {bound}. Got {value!r} instead.")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"The '{name}' parameter must be a float in the range {bound}. Got {value!r} instead.")
    return value


def check_int(name: str, value: Any, low: int) -> int:
    """An integer ``>= low`` (not a bool), as an int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < low:
        raise ValueError(f"The '{name}' parameter must be an int in the range [{low}, inf). Got {value!r} instead.")
    return int(value)


def all_finite(x: Tensor) -> bool:
    """Whether a non-empty floating tensor holds no NaN or inf (min and max propagate NaN;
    much faster than ``isfinite(x).all()``, which materialises a boolean copy)."""
    lo, hi = torch.aminmax(x)
    return bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))


def validate_data(
    G: Any, y: Any, w: Any, task: Any, members: Any, train_mask: Any, mask_name: str = "train_mask"
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Check shapes, dtypes and ranges; return float64 / int64 / bool tensors.

    ``train_mask=None`` means all rows; the mask is reported as ``mask_name`` in messages.
    """
    G = as_tensor("G", G)
    if G.ndim != 2 or G.shape[0] == 0 or G.shape[1] == 0:
        raise ValueError(
            f"The 'G' parameter must be a non-empty 2-D tensor of shape (N, d). Got shape {tuple(G.shape)}."
        )
    if not (G.is_floating_point()):
        raise ValueError(f"The 'G' parameter must be a floating-point tensor. Got dtype {G.dtype}.")
    G = G.to(DTYPE)
    dev = G.device
    if not all_finite(G):
        raise ValueError("The 'G' parameter must be finite (it contains NaN or inf).")
    N = G.shape[0]

    y = as_tensor("y", y)
    if y.shape != (N,):
        raise ValueError(f"The 'y' parameter must have shape (N,) = ({N},). Got shape {tuple(y.shape)}.")
    y = y.to(device=dev, dtype=DTYPE)
    if not ((y == 1) | (y == -1)).all():
        raise ValueError("The 'y' parameter must contain only the labels +1 and -1.")

    w = as_tensor("w", w)
    if w.shape != (N,):
        raise ValueError(f"The 'w' parameter must have shape (N,) = ({N},). Got shape {tuple(w.shape)}.")
    w = w.to(device=dev, dtype=DTYPE)
    if not torch.isfinite(w).all() or (w < 0).any():
        raise ValueError("The 'w' parameter must be finite and >= 0.")

    members = as_tensor("members", members)
    if members.dtype != torch.bool or members.ndim != 2 or members.shape[0] == 0 or members.shape[1] == 0:
        raise ValueError(
            "The 'members' parameter must be a non-empty bool tensor of shape (m, n). "
            f"Got dtype {members.dtype} and shape {tuple(members.shape)}."
        )
    members = members.to(dev)
    n = members.shape[1]

    task = as_tensor("task", task)
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
        train_mask = as_tensor(mask_name, train_mask)
        if train_mask.dtype != torch.bool or train_mask.shape != (N,):
            raise ValueError(
                f"The '{mask_name}' parameter must be a bool tensor of shape (N,) = ({N},). "
                f"Got dtype {train_mask.dtype} and shape {tuple(train_mask.shape)}."
            )
        train_mask = train_mask.to(dev)
    return G, y, w, task, members, train_mask


def check_solver_args(tol: Any, max_iter: Any, max_cg: Any, batch_size: Any) -> tuple[float, int, int, int | None]:
    """The solver settings of :func:`.surrogate_solver.fit_subsets`, checked."""
    tol = check_positive_float("tol", tol)
    max_iter = check_int("max_iter", max_iter, 1)
    max_cg = check_int("max_cg", max_cg, 1)
    if batch_size is not None:
        batch_size = check_int("batch_size", batch_size, 1)
    return tol, max_iter, max_cg, batch_size


def check_rows(counts: Tensor, members: Tensor) -> None:
    """Every subset has training rows (``counts``: training rows per task, float64 ``[n]``)."""
    n_rows = members.to(DTYPE) @ counts
    empty = torch.nonzero(n_rows == 0).flatten()
    if empty.numel():
        raise ValueError(
            f"The 'members' parameter has subsets with no training rows (rows {empty[:10].tolist()}): "
            "every subset must contain at least one task with training rows (see 'train_mask')."
        )
