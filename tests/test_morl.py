"""MORL indicators (policygradex.morl) against hand-computed values, and the vector returns of
`evaluate` on a preference suite."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("mo_gymnasium")
pytest.importorskip("pymoo")

from conftest import assert_user_error, run_cli, seeded
from policygradex.morl import expected_utility, hypervolume


def test_hypervolume_by_hand():
    # three steps of a staircase above (0, 0): 1*3 + 1*2 + 1*1
    assert hypervolume([[1, 3], [2, 2], [3, 1]], [0, 0]) == pytest.approx(6.0)
    # a dominated point adds nothing; a point not above the reference adds nothing
    assert hypervolume([[1, 3], [2, 2], [3, 1], [1, 1], [5, -1]], [0, 0]) == pytest.approx(6.0)
    assert hypervolume([[1, 2, 3]], [0, 0, 0]) == pytest.approx(6.0)
    # two boxes of 1 and 2*0.5*0.5 overlapping in 1*0.5*0.5
    assert hypervolume([[1, 1, 1], [2, 0.5, 0.5]], [0, 0, 0]) == pytest.approx(1.25)
    # shifted reference (deep-sea-treasure's (0, -25)): the first treasure, one step
    assert hypervolume([[0.7, -1.0]], [0.0, -25.0]) == pytest.approx(0.7 * 24.0)
    assert hypervolume([[-1, -1]], [0, 0]) == 0.0
    with pytest.raises(ValueError, match="objectives"):
        hypervolume([[1, 2]], [0, 0, 0])


def test_expected_utility_by_hand():
    pts = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.6]]
    w = [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]
    assert expected_utility(pts, w) == pytest.approx((1.0 + 0.6 + 1.0) / 3)
    assert expected_utility([[1.0, 0.0]], w) == pytest.approx((1.0 + 0.5 + 0.0) / 3)


@pytest.mark.trains
def test_evaluate_reports_vector_returns_and_indicators(tmp_path):
    out = tmp_path / "t"
    proc = run_cli("train", "--suite", "mo:deep-sea-treasure-v0", "--tasks", "2", "--anchors", "2", "--steps", "512",
                   "--seed", str(seeded(0)), "--eval-episodes", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    ckpt = sorted((out / "checkpoints").glob("*.pt"))[-1]
    png = tmp_path / "front.png"
    proc = run_cli("evaluate", str(ckpt), "--episodes", "3", "--stochastic", "--json", "--plot", str(png))
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout)
    for name, r in res["tasks"].items():
        assert len(r["vector_mean"]) == 2 and len(r["discounted_vector_mean"]) == 2
        assert r["vector_gamma"] == pytest.approx(0.99)
    # the scalar return is w . (vector return), episode by episode and so on average
    from policygradex.rl.checkpoint import load_checkpoint

    _, suite, _, _ = load_checkpoint(ckpt)
    for t in suite.tasks:
        r = res["tasks"][t.name]
        assert r["mean"] == pytest.approx(float(np.dot(t.weights, r["vector_mean"])), rel=1e-5, abs=1e-5)
    ind = res["indicators"]
    assert ind["ref_point"] == [0.0, -25.0] and 0 <= ind["hypervolume"] <= ind["front_hypervolume"] + 1e-9
    assert ind["expected_utility"] <= ind["front_expected_utility"] + 1e-9
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # an existing file is the user's: refused before anything runs, left as it was
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"user data")
    assert_user_error(run_cli("evaluate", str(ckpt), "--plot", str(mine)), "--plot", "already exists")
    assert mine.read_bytes() == b"user data"
    assert_user_error(run_cli("evaluate", str(ckpt), "--plot", str(tmp_path / "no" / "dir.png")), "--plot",
                      "directory does not exist")


def test_plot_of_a_suite_without_vector_rewards_is_a_user_error(tmp_path):
    out = tmp_path / "t"
    proc = run_cli("train", "--suite", "cartpole", "--tasks", "2", "--steps", "256", "--eval-episodes", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    ckpt = sorted((out / "checkpoints").glob("*.pt"))[-1]
    assert_user_error(run_cli("evaluate", str(ckpt), "--plot", str(tmp_path / "p.png")), "--plot", "no vector rewards")
    assert not (tmp_path / "p.png").exists()
