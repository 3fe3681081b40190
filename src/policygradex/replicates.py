"""Replicates: R independent estimates of the task affinity (stages 1-6 run R times).

Replicate 0 is the run itself (its stages live in the run directory, as with one replicate);
replicate ``i >= 1`` lives in ``<run>/replicates/r<i>/`` with the same layout.  What differs
between replicates (``--replicate-over``, :func:`replicate_config`):

``seeds`` (default)
    the meta-training seed, the collection seed, the projector seed and the subset seed are each
    replaced by :func:`replicate_seed`: independent trainings, each with its own theta*, rollouts,
    projection and subsets.  Only these replicates make the consensus verdict calibrated
    (:mod:`policygradex.group.consensus`).
``checkpoints``
    one training (replicate 0's); replicate ``i`` pins theta* to the ``i``-th other checkpoint
    nearest to replicate 0's, with its own collection, projection and subsets.  Captures how much
    the answer depends on where training is stopped, not on the training run.
``projection``
    one theta* and one set of rollouts (replicate 0's); other projector and subset seeds.
    Captures the estimate's own noise (projection, subset sampling, surrogate fits) only.

:func:`policygradex.pipeline.estimate_all` runs them: with ``seeds`` each replicate's training
(with its theta*) is a unit on the execution backend (a local process pool or Ray), and once it is
done its estimate and each member of its theta window are units of their own; with the other two,
replicate 0 runs first (the others reuse its training) and the rest are one unit each.  Each unit runs its stages serially with
its progress bars silenced; the results do not depend on the backend.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import artifacts as art
from .config import RunConfig
from .errors import UserError
from .stages import Estimate

__all__ = ["digest", "pinned_steps", "replicate_config", "replicate_dir", "replicate_seed", "window_config", "window_dir", "window_steps"]


def replicate_dir(run_dir: Path, i: int) -> Path:
    return run_dir if i == 0 else run_dir / "replicates" / f"r{i}"


def replicate_seed(seed: int, i: int) -> int:
    """Replicate ``i``'s seed for a run seeded ``seed``: a hash of both (numpy's ``SeedSequence``),
    not ``seed + i``, so that replicate 1 of ``--seed 0`` is not replicate 0 of ``--seed 1`` (two runs
    with nearby seeds share no training).  Below 2**31, so that the offsets added to a seed inside
    the pipeline (``seed + 1`` for the collection, ...) stay valid seeds."""
    return seed if i == 0 else int(np.random.SeedSequence([seed, i]).generate_state(1, np.uint32)[0]) % 2**31


def replicate_config(cfg: RunConfig, i: int, pinned_step: int | None = None) -> RunConfig:
    """Replicate ``i``'s config (replicate 0's is ``cfg`` itself); ``pinned_step``: its theta*
    checkpoint with ``replicate_over = checkpoints``."""
    if i == 0:
        return cfg
    over, est = cfg.group.replicate_over, cfg.estimate
    est_update = {"projector_seed": replicate_seed(est.projector_seed, i), "subset_seed": replicate_seed(est.subset_seed, i)}
    update = {}
    if over in ("seeds", "checkpoints"):
        est_update["seed"] = replicate_seed(est.seed, i)
    if over == "checkpoints":
        est_update["checkpoint"] = pinned_step
    if over == "seeds":
        learner = cfg.learner()
        if cfg.algo == "imported":  # independently trained policies, one per replicate (run --policy A --policy B ...)
            update[cfg.algo] = learner.model_copy(update={"spec": learner.more[i - 1], "sha256": learner.more_sha256[i - 1],
                                                          "more": (), "more_sha256": ()})
        else:
            update[cfg.algo] = learner.model_copy(update={"seed": replicate_seed(learner.seed, i)})
    return cfg.model_copy(update={**update, "estimate": est.model_copy(update=est_update)})


def pinned_steps(first: Estimate, r: int) -> list[int]:
    """The steps of the ``r - 1`` checkpoints nearest to replicate 0's theta* (later first on ties)."""
    steps = [int(p.stem.split("_")[1]) for p in first.checkpoints]
    own = int(first.theta.meta.step)
    others = sorted((s for s in steps if s != own), key=lambda s: (abs(s - own), -s))
    if len(others) < r - 1:
        raise UserError(f"--replicate-over checkpoints with --replicates {r} needs {r} checkpoints; the training has "
                        f"{len(steps)}; lower --replicates or save checkpoints more often (ppo.checkpoint_every)")
    return others[:r - 1]


def window_steps(checkpoints: list[Path], own: int, w: int) -> list[int]:
    """The steps of the ``w - 1`` checkpoints (of ``checkpoints``) that join theta* (at step
    ``own``) in its training's estimate (``theta_window``): the next ones after theta*, then the
    nearest before it when training ends first; fewer when the training has fewer checkpoints
    (``groups.json`` lists those used)."""
    steps = sorted(int(p.stem.split("_")[1]) for p in checkpoints)
    own = int(own)
    later, earlier = [s for s in steps if s > own], [s for s in reversed(steps) if s < own]
    return (later + earlier)[:w - 1]


def window_config(cfg: RunConfig, step: int) -> RunConfig:
    """A window member's config: the replicate's own, theta* pinned to ``step``."""
    return cfg.model_copy(update={"estimate": cfg.estimate.model_copy(update={"checkpoint": step})})


def window_dir(replicate: Path, j: int) -> Path:
    return replicate / "window" / f"c{j}"


def digest(estimates: list[Estimate]) -> str:
    """One digest of every replicate's stages, its window's included (the group stage's ``replicates`` upstream)."""
    return art.config_hash([{**e.digests, "window": [w.digests for w in e.window]} if e.window else e.digests for e in estimates])
