"""Choosing theta* among the checkpoints (estimate/collect.py): the learning-progress cap.

``progress_cap`` keeps theta* before the training's mean return has made more than a fraction of
its improvement (first checkpoint to best); the advantage-signal rule then chooses within it.
"""

from __future__ import annotations

import math

import pytest

from conftest import seeded
from policygradex.config import PPOConfig
from policygradex.estimate.collect import mean_training_return, progress_cap, select_checkpoint
from policygradex.rl.ppo import train
from policygradex.tasks import load_suite


def test_progress_cap_stops_at_the_newest_checkpoint_within_the_fraction():
    returns = [-93.4, -61.9, -20.1, -5.8, -4.6, -4.1]  # a training that plateaus (improvement 89.3)
    assert progress_cap(returns, 0.5) == 2  # -61.9 made 35% of it, -20.1 already 82%
    assert progress_cap(returns, 0.9) == 3
    assert progress_cap(returns, 1.0) == 6  # no limit
    assert progress_cap(returns, 0.0) == 1  # the first checkpoint is always allowed
    # a dip after a peak: the newest checkpoint within the fraction counts, not the first one past it
    assert progress_cap([10.0, 100.0, 30.0, 200.0], 0.5) == 3


@pytest.mark.parametrize("returns", [[], [None], [5.0], [5.0, None, float("nan")], [50.0, 40.0, 30.0], [7.0, 7.0]])
def test_progress_cap_without_an_improvement_keeps_every_checkpoint(returns):
    assert progress_cap(returns, 0.5) == len(returns)


def test_progress_cap_skips_checkpoints_without_a_return():
    assert progress_cap([None, 0.0, 10.0, None, 100.0], 0.5) == 3  # None: not counted, not a cut either


@pytest.mark.trains
def test_theta_star_is_chosen_within_the_cap_and_a_pin_overrides_it(tmp_path):
    """Any seed: with the cap at 0 theta* is among the checkpoints whose return has not improved on
    the first one's; without it, among all; a pinned checkpoint is taken wherever it lies."""
    suite = load_suite("cartpole-planted", 2, seeded(0))
    cfg = PPOConfig(total_steps=4096, envs_per_task=2, num_steps=64, minibatch_size=128, update_epochs=2, checkpoint_every=2,
                    seed=seeded(3))
    ckpts = train(suite, cfg, tmp_path).checkpoints
    assert len(ckpts) >= 3
    returns = [mean_training_return(c) for c in ckpts]
    allowed = progress_cap(returns, 0.0)
    first = next(r for r in returns if r is not None and math.isfinite(r))
    assert all(r is None or r <= first for r in returns[1:allowed])
    common = dict(probe_transitions=64, min_adv_scale=1e-3, min_label_frac=0.02, min_healthy_frac=0.8, seed=0)
    capped = select_checkpoint(ckpts, **common, progress=0.0)
    assert capped.checkpoint in ckpts[:allowed]
    assert select_checkpoint(ckpts, **common, progress=1.0).checkpoint in ckpts
    last = int(ckpts[-1].stem.split("_")[1])
    assert select_checkpoint(ckpts, **common, pinned=last, progress=0.0).checkpoint == ckpts[-1]
