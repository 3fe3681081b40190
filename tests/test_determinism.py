"""Reproducibility (issue 8, point 4): the same config and seed give byte-identical outputs on
the CPU, and a run records versions, seeds and the full resolved config (config.json)."""

from __future__ import annotations

import json

import pytest

from conftest import seeded
from reliability_helpers import cli, reference_run, tiny_run_args

SAME = ("groups.json", "affinity.csv", "f_table.csv", "subsets.json", "surrogate.pt", "collect/rollouts.pt",
        "collect/meta_policy.json", "train/train_history.json", "affinity.png")


@pytest.mark.trains
def test_two_runs_with_the_same_seed_are_identical(tmp_path):
    a, config = reference_run()  # one run (shared with test_crash), and a second one here
    b = tmp_path / "b"
    proc = cli(*tiny_run_args(b, config))
    assert proc.returncode == 0, proc.stderr
    for name in SAME:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    ca = sorted((a / "train" / "checkpoints").glob("step_*.pt"))
    cb = sorted((b / "train" / "checkpoints").glob("step_*.pt"))
    assert len(ca) == 4 and [p.read_bytes() for p in ca] == [p.read_bytes() for p in cb]
    g = json.loads((a / "groups.json").read_text())
    assert sorted(x for grp in g["groups"] for x in grp) == sorted(g["tasks"]) and len(g["tasks"]) == 4

    rec = json.loads((a / "config.json").read_text())
    assert {"torch", "numpy", "gymnasium", "python", "policygradex"} <= set(rec["versions"])
    s = seeded(0)  # --seed and --suite-seed of the tiny run
    assert rec["seeds"] == {"suite": {"suite": "cartpole-planted", "tasks": 4, "suite_seed": s, "profile": None},
                            "train": s, "collect": s, "projector": s, "subsets": s, "null_test": s}
    cfg = rec["config"]  # the full resolved config (defaults included): it validates back to itself
    from policygradex.config import RunConfig

    assert RunConfig.model_validate(cfg).model_dump(mode="json") == cfg
    assert cfg["ppo"]["checkpoint_every"] == 2 and cfg["estimate"]["d"] == 16 and cfg["group"]["bootstrap"] == 5
    assert rec["suite"]["name"] == "cartpole-planted" and len(rec["suite"]["tasks"]) == 4
    assert rec["command"][-2:] == ["--out", str(a)]
