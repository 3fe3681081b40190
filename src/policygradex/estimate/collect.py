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
the largest signal and flags the run.  A user can pin a checkpoint instead.

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

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import PPOConfig
from ..rl.checkpoint import load_checkpoint
from ..rl.rollout import MultiTaskEnv, RolloutCollector
from ..tasks import TaskSuite


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
    adv: torch.Tensor        # [N] GAE advantages (raw, not normalized)
    returns: torch.Tensor    # [N] value targets A + V
    task: torch.Tensor       # [N] task index
    heldout: torch.Tensor    # [N] bool
    episode_returns: list[list[float]] = field(default_factory=list)

    def per_task_health(self, n: int, min_adv_scale: float, min_label_frac: float) -> list[SignalHealth]:
        return [signal_health(self.adv[self.task == i], self.returns[self.task == i], min_adv_scale, min_label_frac) for i in range(n)]

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("x", "actions", "adv", "returns", "task", "heldout", "episode_returns")}


def load_rollouts(run_dir: str | Path) -> dict:
    """The collect stage's rollouts of theta* (``Collected.to_dict()``) from a run directory."""
    return torch.load(Path(run_dir) / "collect" / "rollouts.pt", weights_only=False)


def load_meta_policy(run_dir: str | Path):
    """The model theta* that the collect stage chose (``collect/meta_policy.json``) from a run directory."""
    from ..artifacts import read_json
    from ..rl.checkpoint import load_checkpoint

    meta = read_json(Path(run_dir) / "collect" / "meta_policy.json")
    model, _, _, _ = load_checkpoint(Path(run_dir) / "train" / "checkpoints" / meta["checkpoint"])
    return model


def collect(model, suite: TaskSuite, cfg: PPOConfig, transitions_per_task: int, envs_per_task: int,
            heldout_frac: float, seed: int, on_step=None) -> Collected:
    if getattr(model, "algo", "ppo") == "sac":  # MT-SAC theta*: advantages Q(s, a) - V(s) (rl.sac.collect)
        from ..rl.sac import collect as sac_collect

        return sac_collect(model, suite, cfg, transitions_per_task, envs_per_task, heldout_frac, seed, on_step)
    steps = math.ceil(transitions_per_task / envs_per_task)
    env = MultiTaskEnv(suite, envs_per_task, seed)
    gen = torch.Generator().manual_seed(seed)
    model.eval()
    ro = RolloutCollector(env, gen).collect(model, steps, on_step)
    env.close()
    adv, ret = ro.advantages(cfg.gamma, cfg.gae_lambda)
    T, E = adv.shape
    copy = torch.arange(E) % envs_per_task  # env e runs copy (e % envs_per_task) of task e // envs_per_task
    n_held = max(1, math.ceil(heldout_frac * envs_per_task)) if heldout_frac > 0 else 0
    held = (copy >= envs_per_task - n_held).unsqueeze(0).expand(T, E)
    # rows ordered task-major so each task's rows are contiguous
    order = torch.argsort(ro.task_ids, stable=True)

    def flat(t: torch.Tensor) -> torch.Tensor:
        t = t[:, order]
        return t.transpose(0, 1).reshape(T * E, *t.shape[2:])

    return Collected(flat(ro.x), flat(ro.actions), flat(adv), flat(ret), flat(ro.task_ids.unsqueeze(0).expand(T, E)),
                     flat(held), ro.episode_returns)


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


def select_checkpoint(checkpoints: list[Path], probe_transitions: int, min_adv_scale: float, min_label_frac: float,
                      min_healthy_frac: float, seed: int, pinned: int | None = None, keep: float = 0.5) -> Selection:
    """The newest checkpoint that keeps at least ``keep`` x the first checkpoint's advantage scale
    and whose signal is not collapsed (see module docstring).

    The advantage scale falls as training proceeds, so that checkpoint is found by bisection
    (about log2(#checkpoints) probes); every probe is recorded.  Without an acceptable
    checkpoint, the probed one with the largest signal is taken and flagged unhealthy.
    """
    if pinned is not None:
        checkpoints = [c for c in checkpoints if int(c.stem.split("_")[1]) == pinned]
    probes: dict[int, Selection] = {}

    def probe(i: int) -> Selection:
        if i not in probes:
            probes[i] = _probe(checkpoints[i], probe_transitions, min_adv_scale, min_label_frac, min_healthy_frac, seed)
        return probes[i]

    floor = keep * probe(0).health["overall"]["adv_scale"]

    def ok(i: int) -> bool:
        sel = probe(i)
        return sel.healthy and sel.health["overall"]["adv_scale"] >= floor

    last = len(checkpoints) - 1
    best = probes[last] if ok(last) else None
    if best is None:
        lo, hi = 0, last - 1
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
