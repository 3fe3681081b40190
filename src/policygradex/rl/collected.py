"""The rollout record of theta* (:class:`Collected`) and its signal health (:func:`signal_health`).

Every learner's ``collect`` (``Learner.collect``, :mod:`policygradex.rl.learners`) returns a
:class:`Collected`; the estimate stages read it (``policygradex.estimate.collect`` explains the
health rule and the choice of theta*).  It lives in ``rl/`` so that a learner can build one
without importing the estimate package.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import UserError

__all__ = ["SignalHealth", "signal_health", "Collected"]


@dataclass
class SignalHealth:
    adv_scale: float
    frac_positive: float
    mean_abs_adv: float
    collapsed: bool
    reason: str = ""

    def to_dict(self) -> dict:
        return {"adv_scale": self.adv_scale, "frac_positive": self.frac_positive, "mean_abs_adv": self.mean_abs_adv,
                "collapsed": self.collapsed, "reason": self.reason}


def signal_health(adv: torch.Tensor, returns: torch.Tensor, min_adv_scale: float, min_label_frac: float) -> SignalHealth:
    adv = adv.double()
    scale = float(adv.abs().mean() / (returns.double().abs().mean() + 1e-8)) if adv.numel() else 0.0
    pos = float((adv > 0).double().mean()) if adv.numel() else 0.0
    reasons = []
    if scale < min_adv_scale:
        reasons.append(f"advantage scale {scale:.2e} < {min_adv_scale:.0e}")
    if not (min_label_frac <= pos <= 1 - min_label_frac):
        reasons.append(f"labels one-sided ({pos:.1%} positive)")
    return SignalHealth(scale, pos, float(adv.abs().mean()) if adv.numel() else 0.0, bool(reasons), "; ".join(reasons))


@dataclass
class Collected:
    """Rollouts of theta*, flattened: one row per transition."""

    x: torch.Tensor          # [N, in] policy inputs (observation ++ one-hot)
    actions: torch.Tensor    # [N] or [N, act]
    adv: torch.Tensor        # [N] advantages (raw, not normalized): GAE for PPO, soft Q - V for SAC
    returns: torch.Tensor    # [N] value targets the advantages are measured against (PPO: A + V; SAC: Q(s, a))
    task: torch.Tensor       # [N] task index
    heldout: torch.Tensor    # [N] bool
    episode_returns: list[list[float]] = field(default_factory=list)

    def per_task_health(self, n: int, min_adv_scale: float, min_label_frac: float) -> list[SignalHealth]:
        return [signal_health(self.adv[self.task == i], self.returns[self.task == i], min_adv_scale, min_label_frac) for i in range(n)]

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("x", "actions", "adv", "returns", "task", "heldout", "episode_returns")}

    @classmethod
    def from_dict(cls, d: dict, source: str = "rollouts") -> Collected:
        """The record of :meth:`to_dict`, its schema checked: every field present, one row per
        transition in each tensor, integer task ids, a boolean held-out mask.  A mismatch is a
        :class:`UserError` naming ``source`` (an artifact from another version, or a damaged one)."""
        fields = ("x", "actions", "adv", "returns", "task", "heldout")
        if not isinstance(d, dict) or any(k not in d or not isinstance(d[k], torch.Tensor) for k in fields):
            missing = [k for k in fields if not isinstance(d, dict) or not isinstance(d.get(k), torch.Tensor)]
            raise UserError(f"{source} is not a rollout record (no tensor {missing[0]!r}); delete it and rerun")
        n = d["x"].shape[0]
        bad = [k for k in fields if d[k].shape[0] != n]
        if bad or d["x"].ndim != 2 or d["task"].dtype.is_floating_point or d["heldout"].dtype != torch.bool:
            what = f"{bad[0]} has {d[bad[0]].shape[0]} rows, x has {n}" if bad else "x, task or heldout has the wrong shape or type"
            raise UserError(f"{source} is not a consistent rollout record ({what}); delete it and rerun")
        return cls(*(d[k] for k in fields), episode_returns=list(d.get("episode_returns", [])))
