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


def _fake_probes(monkeypatch, table):
    """``_probe`` replaced by a table: checkpoint index -> (healthy, overall advantage scale)."""
    import policygradex.estimate.collect as collect_mod

    seen = []

    def probe(path, *args):
        i = int(path.stem.split("_")[1])
        seen.append(i)
        healthy, scale = table[i]
        return collect_mod.Selection(path, i, {}, {"checkpoint": path.name, "overall": {"adv_scale": scale}}, healthy, [])

    monkeypatch.setattr(collect_mod, "_probe", probe)
    return seen


# Thrusters on a fine grid: the untrained policy's signal is collapsed but its scale is the largest
COLLAPSED_FIRST = {0: (False, 0.32), 1: (False, 0.18), 2: (True, 0.08), 3: (True, 0.13), 4: (True, 0.12), 5: (True, 0.02)}


def _ckpts(tmp_path, n):
    return [tmp_path / f"step_{i:09d}.pt" for i in range(n)]


def test_reference_first_takes_the_collapsed_first_checkpoint_by_the_fallback(monkeypatch, tmp_path):
    _fake_probes(monkeypatch, COLLAPSED_FIRST)
    sel = select_checkpoint(_ckpts(tmp_path, 6), 16, 1e-3, 0.02, 0.8, 0)
    assert sel.step == 0 and not sel.healthy  # nothing keeps half of 0.32: the largest scale probed is taken


def test_reference_first_healthy_searches_from_the_first_healthy_checkpoint(monkeypatch, tmp_path):
    seen = _fake_probes(monkeypatch, COLLAPSED_FIRST)
    sel = select_checkpoint(_ckpts(tmp_path, 6), 16, 1e-3, 0.02, 0.8, 0, reference="first_healthy")
    # reference: checkpoint 2 (0.08, floor 0.04); the newest acceptable is 4 (5 has 0.02)
    assert sel.step == 4 and sel.healthy
    assert seen[:3] == [0, 1, 2]  # found oldest first
    # with every checkpoint collapsed, both references fall back to the largest scale probed
    _fake_probes(monkeypatch, {i: (False, s) for i, (_, s) in COLLAPSED_FIRST.items()})
    for reference in ("first", "first_healthy"):
        sel = select_checkpoint(_ckpts(tmp_path, 6), 16, 1e-3, 0.02, 0.8, 0, reference=reference)
        assert sel.step == 0 and not sel.healthy
