"""Divergence checks shared by every learner (PPO, SAC, fine-tuning, compare's group training,
meta-RL): a loss, a gradient norm or a parameter that stops being finite becomes one
:class:`Divergence` (a :class:`~policygradex.errors.UserError`) at the update where it appears,
naming the update, the quantity and the options to change.  The error is raised before anything
of that update is written, so checkpoints written earlier stay valid.

The checks are cheap: a handful of scalars per optimizer step (the loss, the total gradient norm
that gradient clipping computes anyway, the largest parameter magnitude), stacked and synced
once; the per-quantity diagnosis runs only on failure.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterable, Iterator, Sequence

import torch

from ..errors import UserError

__all__ = ["Divergence", "OVERFLOW_SCALE", "describe", "first_nonfinite", "max_abs", "now", "overflow_guard",
           "reward_overflow"]

#: Returns (or rewards) above this magnitude overflow float32 when squared (a value loss) or
#: accumulated (GAE); a non-finite loss with such returns is blamed on the rewards' scale.
OVERFLOW_SCALE = 1e18


class Divergence(UserError):
    """Training diverged (a non-finite loss, gradient or parameter) or its numbers overflow."""

    transient = False  # training is seeded: a rerun diverges at the same update


def now(value: float) -> str:
    """A float as it appears in a message: ``1e+300``, ``0.001``, ``100.0``."""
    return repr(float(value))


def describe(value: float) -> str:
    """``NaN``, ``inf`` or ``-inf`` (or the value, if finite)."""
    v = float(value)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.3g}"


def max_abs(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """The largest magnitude over ``tensors`` as a scalar tensor (NaN if any holds NaN); no sync."""
    ts = [t.detach() for t in tensors if t is not None and t.numel()]
    if not ts:
        return torch.zeros(())
    return torch.nn.utils.get_total_norm(ts, norm_type=math.inf)


def first_nonfinite(named: Sequence[tuple[str, torch.Tensor | float]]) -> tuple[str, float] | None:
    """The first ``(name, value)`` of ``named`` whose value is NaN or infinite; one sync."""
    dev = next((v.device for _, v in named if isinstance(v, torch.Tensor)), torch.device("cpu"))
    vals = torch.stack([v.detach().reshape(()).float().to(dev) if isinstance(v, torch.Tensor)
                        else torch.tensor(float(v), device=dev) for _, v in named]).cpu()  # the one sync
    ok = torch.isfinite(vals)
    if bool(ok.all()):
        return None
    i = int((~ok).nonzero()[0, 0])
    return named[i][0], float(vals[i])


def reward_overflow(where: str, values: torch.Tensor, task_of: torch.Tensor, task_names: Sequence[str] | None,
                    what: str = "returns") -> Divergence | None:
    """The error for rewards whose scale overflows float32 arithmetic: ``values`` (returns,
    advantages or rewards, one per sample, task ``task_of``) holding a non-finite entry or one
    beyond :data:`OVERFLOW_SCALE`; None when their scale is fine."""
    v = values.detach().float().reshape(-1).cpu()
    mag = torch.where(torch.isfinite(v), v.abs(), torch.full_like(v, math.inf))
    top = float(mag.max()) if mag.numel() else 0.0
    if not top > OVERFLOW_SCALE:
        return None
    t = int(task_of.reshape(-1).cpu()[int(mag.argmax())])
    name = task_names[t] if task_names is not None and 0 <= t < len(task_names) else f"#{t}"
    size = "overflow float32 (inf)" if math.isinf(top) else f"reach {top:.3g}, too large for float32 losses"
    return Divergence(f"{where}: task {name!r}: its {what} {size}: the task's rewards are too large; scale them down in the "
                      "environment (e.g. gymnasium.wrappers.TransformReward(env, lambda r: r * 1e-30))")


@contextlib.contextmanager
def overflow_guard(where: str, quantity: str, advice: str) -> Iterator[None]:
    """Turn torch's ``value cannot be converted to type float without overflow`` (a step size or
    coefficient beyond float32, e.g. a learning rate of 1e300) into a :class:`Divergence`."""
    try:
        yield
    except RuntimeError as exc:
        if "overflow" not in str(exc):
            raise
        raise Divergence(f"{where}: {quantity} overflows float32 (the parameters' type); {advice}") from None
