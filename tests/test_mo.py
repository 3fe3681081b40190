"""Multi-objective preference families on MO-Gymnasium (tasks/mo.py): the truth from a Pareto
front, the scalarized reward, the drawn preferences, and the user's mistakes."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

pytest.importorskip("mo_gymnasium")

from conftest import assert_one_line, run_main, seeded
from policygradex.errors import UserError
from policygradex.tasks import Task, load_suite
from policygradex.tasks.mo import FloatObservation, best_points, draw_preferences, truth

FRONT = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.6]])


def test_truth_of_a_hand_made_front():
    w = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.5, 0.5], [0.45, 0.55]])
    names = ["a", "b", "c", "d", "e"]
    partition, ties, point = truth(w, FRONT, names)
    # (1,0): 1 vs 0.6; (0.9,0.1): 0.9 vs 0.6; (0,1): 1 vs 0.6; (0.5,0.5): 0.6 vs 0.5; (0.45,0.55): 0.6 vs 0.55
    assert point == [0, 0, 1, 2, 2] and ties == []
    assert partition == [["a", "b"], ["c"], ["d", "e"]]


def test_near_ties_are_left_out_not_assigned():
    front = np.array([[1.0, 0.0], [0.0, 1.0]])
    w = np.array([[0.8, 0.2], [0.5, 0.5], [0.502, 0.498], [0.2, 0.8]])
    partition, ties, point = truth(w, front, ["a", "tie", "almost", "d"], tie_tolerance=0.01)
    # (0.502 - 0.498) / 0.502 = 0.8% < 1%: a near-tie too
    assert ties == ["tie", "almost"] and point == [0, -1, -1, 1]
    assert partition == [["a"], ["d"]]
    best, gap = best_points(np.array([0.7, 0.3]), front)
    assert best[0] == 0 and gap[0] == pytest.approx((0.7 - 0.3) / 0.7)


def test_drawn_preferences_select_their_anchor_by_the_margin():
    rng = np.random.default_rng(0)
    front = rng.uniform(0, 10, size=(12, 3))
    w, anchor_of, points, centres = draw_preferences(3, front, n=10, k=3, seed=7, margin=0.05)
    assert w.shape == (10, 3) and np.all(w >= 0) and np.allclose(w.sum(axis=1), 1)
    assert list(anchor_of) == [i % 3 for i in range(10)] and len(set(points)) == 3
    best, gap = best_points(w, front)
    assert [points[a] for a in anchor_of] == list(best) and np.all(gap >= 0.05)
    again = draw_preferences(3, front, n=10, k=3, seed=7, margin=0.05)
    assert np.array_equal(w, again[0])  # seeded
    assert not np.array_equal(w, draw_preferences(3, front, n=10, k=3, seed=8, margin=0.05)[0])


def test_too_many_anchors_for_the_front_is_a_user_error():
    with pytest.raises(UserError, match="--anchors 4: only 2 points"):
        draw_preferences(2, np.array([[1.0, 0.0], [0.0, 1.0]]), n=8, k=4, seed=0)


def test_scalarized_reward_is_w_dot_r_on_recorded_steps():
    w = [0.3, 0.7]
    env = Task(name="t", env_id="deep-sea-treasure-v0", weights=w).make()
    assert isinstance(env.observation_space.sample(), np.ndarray)
    obs, _ = env.reset(seed=seeded(0))
    assert obs.dtype == np.float32 and np.all(np.abs(obs) <= 1)  # int32 grid coordinates, rescaled
    rng = np.random.default_rng(seeded(0))
    seen = 0
    for _ in range(200):
        obs, r, term, trunc, info = env.step(int(rng.integers(4)))
        v = np.asarray(info["vector_reward"], dtype=np.float64)
        assert v.shape == (2,) and r == pytest.approx(float(np.dot(v, w)), rel=1e-6, abs=1e-6)
        seen += 1
        if term or trunc:
            obs, _ = env.reset()
    assert seen == 200


def test_float_observation_rescales_a_bounded_integer_box():
    import gymnasium as gym

    class Grid(gym.Env):
        observation_space = gym.spaces.Box(0, 10, shape=(2,), dtype=np.int32)
        action_space = gym.spaces.Discrete(2)

        def reset(self, *, seed=None, options=None):
            return np.array([0, 10], dtype=np.int32), {}

        def step(self, a):
            return np.array([5, 10], dtype=np.int32), 0.0, True, False, {}

    env = FloatObservation(Grid())
    assert env.observation_space.dtype == np.float32
    assert np.array_equal(env.reset()[0], [-1.0, 1.0]) and np.array_equal(env.step(0)[0], [0.0, 1.0])


def test_mo_suite_truth_and_record():
    s = load_suite("mo:deep-sea-treasure-v0", n_tasks=6, anchors=2, seed=seeded(3))
    assert s.n == 6 and len(s.true_partition) == 2 and s.truth_excluded == []
    assert [t.name.split("-")[0] for t in s.tasks] == ["anchor0", "anchor1"] * 3
    # the truth is each preference's best point of the published front, the anchors' points
    front = np.asarray(s.metadata["front"])
    best, _ = best_points(np.asarray([t.weights for t in s.tasks]), front)
    assert [s.metadata["anchor_points"][i % 2] for i in range(6)] == list(best)
    assert s.nmi_vs_truth([i % 2 for i in range(6)]) == pytest.approx(1.0)
    assert "weights" in s.to_dict()["tasks"][0] and "weights" not in load_suite("cartpole").to_dict()["tasks"][0]
    per = load_suite("mo:deep-sea-treasure-v0:objectives")
    assert [t.weights for t in per.tasks] == [[1.0, 0.0], [0.0, 1.0]]


def test_listed_weights_with_a_near_tie(tmp_path):
    # deep-sea-treasure's first two front points at gamma 0.98: (0.7, -1) and (8.0368..., -2.9701)
    # scaled by the discount; a preference that values both equally is a near-tie
    from policygradex.tasks.mo import env_facts

    _, front = env_facts("deep-sea-treasure-v0", 0.98, "test")
    a, b = front[0], front[1]
    t = float((b[1] - a[1]) / ((a[0] - b[0]) + (b[1] - a[1])))  # w = (t, 1 - t) gives a.w == b.w
    path = tmp_path / "dst.toml"
    path.write_text(textwrap.dedent(f"""
        env_id = "deep-sea-treasure-v0"
        weights = [[1.0, 0.0], [{t!r}, {1 - t!r}], [0.02, 0.98], [0.95, 0.05]]
    """))
    s = load_suite(str(path))
    assert s.truth_excluded == ["pref-01"] and "near-ties" in s.description and "pref-01" in s.description
    assert sorted(x for g in s.true_partition for x in g) == ["pref-00", "pref-02", "pref-03"]
    labels = [0, 5, 1, 0]  # pref-01's label does not count
    assert s.nmi_vs_truth(labels) == pytest.approx(s.nmi_vs_truth([0, 0, 1, 0]))


def test_tasks_form_of_a_suite_file_gets_the_front_truth(tmp_path):
    path = tmp_path / "ft.toml"
    path.write_text(textwrap.dedent("""
        name = "dst-mine"
        [[tasks]]
        name = "treasure"
        env_id = "deep-sea-treasure-v0"
        weights = [1.0, 0.0]
        [[tasks]]
        name = "hurry"
        env_id = "deep-sea-treasure-v0"
        weights = [0.0, 1.0]
    """))
    s = load_suite(str(path))
    assert s.name == "dst-mine"
    assert sorted(s.true_partition) == [["hurry"], ["treasure"]]  # two front points, one task each
    own = tmp_path / "own.toml"  # a file's own partition wins over the front's
    own.write_text('true_partition = [["treasure", "hurry"]]\nsuccess_key = "done"\n' + path.read_text())
    s = load_suite(str(own))
    assert s.true_partition == [["treasure", "hurry"]] and s.success_key == "done" and "true_partition" in s.description


@pytest.mark.parametrize("args,needles", [
    (["--suite", "mo:no-such-env-v0"], ["mo:no-such-env-v0", "not an MO-Gymnasium environment", "fruit-tree-v0"]),
    (["--suite", "mo:"], ["mo: needs an MO-Gymnasium id"]),
    (["--suite", "mo:fruit-tree-v0:sideways"], ["unknown preference mode", "objectives"]),
    (["--suite", "mo:deep-sea-treasure-v0", "--anchors", "9"], ["--anchors 9", "only 3 points", "between 1 and 3"]),
    (["--suite", "mo:deep-sea-treasure-v0", "--anchors", "0"], ["--anchors", "between 1 and the number of tasks"]),
    (["--suite", "cartpole", "--anchors", "2"], ["--anchors applies to mo:"]),
    (["--suite", "mo:CartPole-v1"], ["CartPole-v1", "no vector reward"]),
])
def test_bad_mo_suites(tmp_path, args, needles):
    code, err = run_main("run", *args, "--out", str(tmp_path / "o"))
    assert_one_line(code, err, *needles)


@pytest.mark.parametrize("body,needles", [
    ('env_id = "deep-sea-treasure-v0"\nweights = [[0.5, 0.3, 0.2]]', ["weights[0] has 3 numbers", "2 objectives"]),
    ('env_id = "deep-sea-treasure-v0"\nweights = [[0.5, -0.5]]', ["weights[0]", "non-negative"]),
    ('env_id = "deep-sea-treasure-v0"\nweights = [[0.0, 0.0]]', ["weights[0]", "not all be zero"]),
    ('[[tasks]]\nname = "a"\nenv_id = "deep-sea-treasure-v0"\nweights = [1.0, -1.0]', ["weights", "non-negative"]),
    ('[[tasks]]\nname = "a"\nenv_id = "CartPole-v1"\nweights = [1.0]', ["CartPole-v1", "no vector reward"]),
    ('[[tasks]]\nname = "a"\nenv_id = "deep-sea-treasure-v0"\nweights = [1.0, 0.5, 0.2]',
     ["task 'a' has 3 weights", "2 objectives"]),
    ('weights = [[1.0, 0.0]]', ["env_id and weights go together"]),
])
def test_bad_preferences_in_suite_files(tmp_path, body, needles):
    path = tmp_path / "s.toml"
    path.write_text(body + "\n")
    code, err = run_main("run", "--suite", str(path), "--out", str(tmp_path / "o"))
    assert_one_line(code, err, *needles)


def test_without_the_mo_extra_one_line(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "mo_gymnasium", None)  # import fails as when it is not installed
    code, err = run_main("run", "--suite", "mo:fruit-tree-v0", "--out", str(tmp_path / "o"))
    assert_one_line(code, err, "needs MO-Gymnasium", "pip install 'policygradex[mo]'")


@pytest.mark.trains
def test_small_mo_suite_end_to_end(tmp_path):
    """A preference family through `run` (one replicate, small budgets): groups, the NMI against the
    front's truth, and the weights recorded with the suite."""
    from conftest import run_cli

    out = tmp_path / "run"
    cfg = tmp_path / "small.toml"
    cfg.write_text("[ppo]\nenvs_per_task = 2\nnum_steps = 32\ncheckpoint_every = 2\nupdate_epochs = 4\n"
                   "[estimate]\nprobe_transitions = 64\n[group]\nbootstrap = 5\n")
    proc = run_cli("run", "--suite", "mo:deep-sea-treasure-v0", "--tasks", "4", "--anchors", "2", "--suite-seed", "1",
                   "--steps", "2048", "--seed", str(seeded(0)), "--replicates", "1", "--null-permutations", "10",
                   "--transitions", "128", "--d", "16", "--theta-window", "1", "--config", str(cfg), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    g = json.loads((out / "groups.json").read_text())
    assert sorted(x for grp in g["groups"] for x in grp) == sorted(f"anchor{i % 2}-{i:02d}" for i in range(4))
    assert 0.0 <= g["nmi_vs_true_partition"] <= 1.0
    conf = json.loads((out / "config.json").read_text())
    assert all(len(t["weights"]) == 2 for t in conf["suite"]["tasks"])
    assert "NMI vs the suite's known partition" in proc.stdout


@pytest.mark.trains
def test_training_logs_vector_returns_consistent_with_the_scalar_ones(tmp_path):
    """train_history.json holds each preference task's mean vector return next to its mean return
    (the same episodes, so return = w . vector return), also when rebuilt on a rerun."""
    from conftest import run_cli

    out = tmp_path / "t"
    args = ("train", "--suite", "mo:deep-sea-treasure-v0", "--tasks", "2", "--anchors", "2", "--steps", "4096",
            "--checkpoint-every", "4", "--seed", str(seeded(0)), "--eval-episodes", "1", "--out", str(out))
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    hist = json.loads((out / "train_history.json").read_text())
    weights = {t.name: t.weights for t in load_suite("mo:deep-sea-treasure-v0", n_tasks=2, anchors=2).tasks}
    assert len(hist) == 2
    for h in hist:
        for name, r in h["returns"].items():
            v = h["vector_returns"][name]
            assert len(v) == 2 and r == pytest.approx(float(np.dot(weights[name], v)), rel=1e-5, abs=1e-5)
    proc = run_cli(*args)  # a rerun finds the training done and rebuilds the history from the checkpoints
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((out / "train_history.json").read_text()) == hist
