"""Choosing the meta-policy theta* among checkpoints, and collecting its rollouts.

**Signal health.**  The surrogate learns from the sign and size of the advantages of theta*.
Once every task sits at its return cap (CartPole's 500) the advantages shrink to noise and the
affinity is noise too (METHOD.md, prototype notes); early in training the critic lags and the
labels are one-sided.  For a batch of advantages we report

* ``adv_scale``   mean |A| / (mean |value target| + 1e-8): how much the advantages say
  relative to the return scale (scale-free; CartPole at its 500 cap with gamma 0.98 has value
  targets ~50 and |A| ~ 0.002-0.05, mid-training ~1);
* ``frac_positive`` the fraction of A > 0.

The signal is *collapsed* when ``adv_scale < min_adv_scale`` or the labels are one-sided
(``frac_positive`` outside ``[min_label_frac, 1 - min_label_frac]``), per task or overall.

**Choice of theta*.**  ``select_checkpoint`` probes training checkpoints with a short rollout
and takes the newest one that (a) is not collapsed on at least ``min_healthy_frac`` of the
tasks and (b) keeps at least ``keep`` (default 1/2) of the first checkpoint's advantage scale
(bisection: the scale falls as training proceeds); if none does, it takes the probed one with
the largest signal and flags the run.  The search is limited to the checkpoints before the
training's mean return has made more than ``progress`` (default 1/2) of its improvement from the
first checkpoint to the best: on tasks without a return ceiling the advantage scale need not
fall, yet a policy that has learned its tasks has resolved their conflicts all the same (the
``thrusters`` family of the trust benchmark: docs/decisions.md).  A user can pin a checkpoint
instead.

Why so early: the affinity measures how tasks' gradients conflict at theta*.  A multi-task
policy that has mastered its tasks has already resolved their conflicts through the task id,
and its advantages carry little information.  Measured on ``cartpole-planted`` (n = 8,
100k training steps, docs/decisions.md): NMI against the planted partition was 1.0 with theta*
at 5k steps (adv scale 0.12) for suite seeds 0 and 2; at 10k steps (0.036-0.042) 1.0 for seed 0
but 0.19 for seed 2; 0.56 at 15-20k and 0.05 at 41k steps (seed 0).

**Collection.**  ``collect`` rolls out theta* (sampled actions) for ``transitions_per_task``
steps on every task over ``envs_per_task`` environment copies, computes GAE with theta*'s own
critic (same gamma and lambda as training, time-limit bootstrapping) and holds out the rows of
the last ``ceil(heldout_frac * envs_per_task)`` environment copies of each task: held-out rows
come from separate episodes, not from the same trajectories as the training rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..artifacts import read_json
from ..errors import UserError
from ..config import PPOConfig, SACConfig
from ..rl.checkpoint import load_checkpoint
from ..rl.checkpoint_io import read_checkpoint
from ..rl.collected import Collected, SignalHealth, signal_health
from ..rl.learners import learner_for
from ..tasks import TaskSuite

__all__ = ["SignalHealth", "signal_health", "Collected", "MetaPolicy", "load_rollouts", "load_meta_policy", "collect", "Selection",
           "select_checkpoint"]


def load_rollouts(run_dir: str | Path) -> Collected:
    """The collect stage's rollouts of theta* from a run directory, their schema checked."""
    path = Path(run_dir) / "collect" / "rollouts.pt"
    return Collected.from_dict(torch.load(path, weights_only=False), str(path))


@dataclass(frozen=True)
class MetaPolicy:
    """``collect/meta_policy.json``: the checkpoint chosen as theta* and what the collection saw.

    ``signal``: task -> its :class:`SignalHealth` as a dict (adv_scale, frac_positive, collapsed,
    reason, ...) over the collection; ``probes``: every probed checkpoint's health, newest first;
    ``probe_met_rule``: whether theta*'s short probe met the choice rule (None in files written
    before it was recorded); ``healthy``: the rule held and not every task collapsed."""

    checkpoint: str
    step: int
    mean_return: float
    per_task_return: dict[str, float | None]
    signal: dict[str, dict]
    probes: list[dict]
    healthy: bool = True
    probe_met_rule: bool | None = None
    training_returns: dict[str, float | None] | None = None

    REQUIRED = ("checkpoint", "step", "mean_return", "per_task_return", "signal", "probes")

    @classmethod
    def from_dict(cls, d: dict, where: str = "meta_policy.json") -> "MetaPolicy":
        """Checked: a missing field or an unknown one is named (with ``where``)."""
        if not isinstance(d, dict):
            raise UserError(f"{where}: expected a JSON object, got {type(d).__name__}")
        missing = [k for k in cls.REQUIRED if k not in d]
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if missing or unknown:
            raise UserError(f"{where}: " + "; ".join(x for x in (f"missing {', '.join(missing)}" if missing else "",
                                                                 f"unknown {', '.join(unknown)}" if unknown else "") if x)
                            + "; rerun to recompute the collect stage")
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def read(cls, run_dir: str | Path) -> "MetaPolicy":
        path = Path(run_dir) / "collect" / "meta_policy.json"
        return cls.from_dict(read_json(path), str(path))


def load_meta_policy(run_dir: str | Path):
    """The model theta* that the collect stage chose (``collect/meta_policy.json``) from a run directory."""
    meta = MetaPolicy.read(run_dir)
    model, _, _, _ = load_checkpoint(Path(run_dir) / "train" / "checkpoints" / meta.checkpoint)
    return model


def collect(model: torch.nn.Module, suite: TaskSuite, cfg: PPOConfig | SACConfig, transitions_per_task: int, envs_per_task: int,
            heldout_frac: float, seed: int, on_step=None) -> Collected:
    """theta*'s rollouts with the advantages of the learner that trained it (the model's
    ``algo``: ``Learner.collect``; PPO: GAE, ``rl.ppo.collect``; SAC: soft Q - V, ``rl.sac.collect``)."""
    return learner_for(model).collect(model, suite, cfg, transitions_per_task, envs_per_task, heldout_frac, seed, on_step)


@dataclass
class Selection:
    checkpoint: Path
    step: int
    returns: dict
    health: dict
    healthy: bool
    probes: list[dict]


def _probe(path: Path, probe_transitions: int, min_adv_scale: float, min_label_frac: float, min_healthy_frac: float,
           seed: int) -> Selection:
    model, suite, cfg, ckpt = load_checkpoint(path)
    c = collect(model, suite, cfg, probe_transitions, 4, 0.0, seed)
    per_task = c.per_task_health(suite.n, min_adv_scale, min_label_frac)
    frac_ok = float(np.mean([not h.collapsed for h in per_task]))
    overall = signal_health(c.adv, c.returns, min_adv_scale, min_label_frac)
    probe = {"checkpoint": path.name, "step": ckpt["global_step"], "healthy_task_frac": frac_ok,
             "overall": overall.to_dict(), "per_task": {n: h.to_dict() for n, h in zip(suite.names, per_task)}}
    healthy = frac_ok >= min_healthy_frac and not overall.collapsed
    return Selection(path, ckpt["global_step"], ckpt["returns"], probe, healthy, [])


def progress_cap(returns: list[float | None], cap: float | None) -> int:
    """How many of the checkpoints (oldest first; ``returns``: each one's mean training return, None
    where no episode finished) theta* may be chosen from: those up to the newest whose return has
    made at most ``cap`` of the training's improvement, from the first checkpoint's return to the
    best.  All of them without a cap, without an improvement, or with fewer than two returns."""
    known = [(i, r) for i, r in enumerate(returns) if r is not None and np.isfinite(r)]
    if cap is None or len(known) < 2:
        return len(returns)
    first, best = known[0][1], max(r for _, r in known)
    if not best > first:
        return len(returns)
    below = [i for i, r in known if r - first <= cap * (best - first)]
    return max(below) + 1


def mean_training_return(path: Path) -> float | None:
    """A checkpoint's mean per-task training return (None when no task has one yet)."""
    vals = [v for v in (read_checkpoint(path).get("returns") or {}).values() if v is not None and np.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def select_checkpoint(checkpoints: list[Path], probe_transitions: int, min_adv_scale: float, min_label_frac: float,
                      min_healthy_frac: float, seed: int, pinned: int | None = None, keep: float = 0.5,
                      progress: float | None = None, reference: str = "first") -> Selection:
    """The newest checkpoint that keeps at least ``keep`` x the first checkpoint's advantage scale
    and whose signal is not collapsed (see module docstring), among the checkpoints before the
    training's returns have made more than ``progress`` of their improvement (:func:`progress_cap`).

    ``reference = "first_healthy"`` takes the scale from the first checkpoint whose probe is healthy
    instead (found by probing from the oldest) and searches only from there.

    The advantage scale falls as training proceeds, so that checkpoint is found by bisection
    (about log2(#checkpoints) probes); every probe is recorded.  Without an acceptable
    checkpoint, the probed one with the largest signal is taken and flagged unhealthy.
    """
    if pinned is not None:
        checkpoints = [c for c in checkpoints if int(c.stem.split("_")[1]) == pinned]
    elif progress is not None:
        checkpoints = checkpoints[:progress_cap([mean_training_return(c) for c in checkpoints], progress)]
    probes: dict[int, Selection] = {}

    def probe(i: int) -> Selection:
        if i not in probes:
            probes[i] = _probe(checkpoints[i], probe_transitions, min_adv_scale, min_label_frac, min_healthy_frac, seed)
        return probes[i]

    last = len(checkpoints) - 1
    # reference "first_healthy": the first checkpoint whose probe is healthy (found oldest first) sets
    # the scale and theta* is not older than it; "first": the first checkpoint, healthy or not
    ref = 0 if reference == "first" else next((i for i in range(last + 1) if probe(i).healthy), None)
    floor = keep * probe(ref or 0).health["overall"]["adv_scale"]

    def ok(i: int) -> bool:
        sel = probe(i)
        return ref is not None and i >= ref and sel.healthy and sel.health["overall"]["adv_scale"] >= floor

    best = probes[last] if ok(last) else None
    if best is None:
        lo, hi = (last, last - 1) if ref is None else (ref, last - 1)
        while lo <= hi:  # bisection for the newest acceptable index in [lo, hi]
            mid = (lo + hi) // 2
            if ok(mid):
                best, lo = probes[mid], mid + 1
            else:
                hi = mid - 1
    chosen = best or max(probes.values(), key=lambda s: s.health["overall"]["adv_scale"])
    chosen.healthy = best is not None
    chosen.probes = [probes[i].health for i in sorted(probes, reverse=True)]
    return chosen
