"""Replicates through the real CLI, at tiny budgets (the estimates are noise; what is asserted holds
for any seed): layout, parallel = serial, the verdict's label, the shared-training modes, and the
calibrated verdict on identical tasks (not significant in more than one of two seeds)."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import assert_user_error, run_cli, seeded

pytestmark = pytest.mark.trains

TINY = ["--steps", "3072", "--transitions", "256", "--d", "16", "--null-permutations", "39"]
OUTPUTS = ("groups.json", "affinity.csv", "coassociation.csv", "replicates.json", "f_table.csv")


def _identical_suite(tmp_path, n=6):
    """n CartPole-v1 tasks that differ only in their task id."""
    path = tmp_path / "identical.toml"
    path.write_text('name = "identical"\n' + "".join(f'[[tasks]]\nname = "t{i}"\nenv_id = "CartPole-v1"\n' for i in range(n)))
    return path


def _run(out, *args, seed=0):
    proc = run_cli("run", *TINY, "--seed", str(seeded(seed)), *args, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return json.loads((out / "groups.json").read_text()), proc


@pytest.fixture(scope="module")
def identical_runs(tmp_path_factory):
    """Three replicates over seeds on identical tasks with --k 2, on 2 workers and serially."""
    tmp = tmp_path_factory.mktemp("identical")
    suite = _identical_suite(tmp)
    args = ["--suite", str(suite), "--k", "2", "--replicates", "3"]
    return _run(tmp / "parallel", *args, "--workers", "2"), _run(tmp / "serial", *args, "--workers", "1"), tmp, args


def test_replicates_have_their_own_directories_and_parallel_equals_serial(identical_runs):
    (g, proc), _, tmp, _ = identical_runs
    par, ser = tmp / "parallel", tmp / "serial"
    for name in OUTPUTS:  # identical on the same machine
        assert (par / name).read_bytes() == (ser / name).read_bytes(), name
    for i in (1, 2):
        assert (par / "replicates" / f"r{i}" / "train.manifest.json").is_file()
    reps = json.loads((par / "replicates.json").read_text())["replicates"]
    assert [r["dir"] for r in reps] == [".", "replicates/r1", "replicates/r2"]
    trains = {json.loads((par / r["dir"] / "train.manifest.json").read_text())["key"] for r in reps}
    assert len(trains) == 3  # independent trainings
    v = g["verdict"]
    assert v["test"] == "replicate_consensus" and v["calibrated"] and v["replicates"] == 3
    assert g["null_p"] == v["p"] and g["distinguishable_from_noise"] == (v["p"] < v["alpha"])
    assert "calibrated" in proc.stdout and "not calibrated" not in proc.stdout
    # the co-association of 3 replicates takes the values 0, 1/3, 2/3, 1
    rows = (par / "coassociation.csv").read_text().splitlines()[1:]
    values = {round(float(x) * 3) / 3 for row in rows for x in row.split(",")[1:]}
    assert values <= {0, 1 / 3, 2 / 3, 1}
    # a rerun computes nothing
    proc = run_cli("run", *TINY, "--seed", str(seeded(0)), *identical_runs[3], "--out", str(par))
    assert proc.returncode == 0 and json.loads((par / "groups.json").read_text()) == g


def test_calibrated_verdict_on_identical_tasks_is_rarely_significant(identical_runs, tmp_path):
    """Not significant in both of two seeds (a calibrated test is significant in both with probability 0.25%)."""
    (g0, _), _, tmp, args = identical_runs
    g1, _ = _run(tmp_path / "seed1", *args, "--workers", "2", seed=1)
    assert not (g0["distinguishable_from_noise"] and g1["distinguishable_from_noise"]), (g0["null_p"], g1["null_p"])


def test_one_replicate_is_the_single_theta_star_test_labelled_uncalibrated(tmp_path):
    g, proc = _run(tmp_path / "one", "--suite", "cartpole-planted", "--tasks", "6", "--replicates", "1")
    v = g["verdict"]
    assert v["test"] == "single_theta_star_permutation" and not v["calibrated"] and "--replicates" in v["not_calibrated_because"]
    assert not (tmp_path / "one" / "replicates").exists() and not (tmp_path / "one" / "coassociation.csv").exists()
    assert "not calibrated" in proc.stdout
    report = (tmp_path / "one" / "report.md").read_text()
    assert "not calibrated" in report and "f permuted among each task's subsets" in report


def test_replicates_that_share_one_training_are_not_calibrated(tmp_path):
    """--replicate-over projection, then checkpoints on a copy of that run: one training serves both."""
    conf = tmp_path / "conf.toml"
    conf.write_text("[ppo]\ncheckpoint_every = 1\n")
    for over in ("projection", "checkpoints"):
        out = tmp_path / over
        if over == "checkpoints":
            shutil.copytree(tmp_path / "projection", out, ignore=shutil.ignore_patterns(".lock", "replicates"))
            trained = (out / "train.manifest.json").stat().st_mtime_ns
        g, proc = _run(out, "--suite", "cartpole-planted", "--tasks", "6", "--replicates", "2", "--replicate-over", over,
                       "--config", str(conf))
        if over == "checkpoints":  # the copied training was reused, not redone
            assert (out / "train.manifest.json").stat().st_mtime_ns == trained
        r1 = out / "replicates" / "r1"
        assert not (r1 / "train").exists()  # the training is replicate 0's
        assert (r1 / "collect").exists() == (over == "checkpoints")  # projection shares theta* and its rollouts too
        v = g["verdict"]
        assert not v["calibrated"] and over in v["not_calibrated_because"]
        reps = json.loads((out / "replicates.json").read_text())["replicates"]
        assert (reps[0]["step"] != reps[1]["step"]) == (over == "checkpoints")


def test_replicate_options_are_checked(tmp_path):
    assert_user_error(run_cli("run", "--replicates", "0", "--out", str(tmp_path / "a")), "--replicates", "greater than or equal to 1")
    assert_user_error(run_cli("run", "--replicate-over", "tasks", "--out", str(tmp_path / "b")), "--replicate-over", "seeds")
    proc = run_cli("run", *TINY, "--suite", "cartpole-planted", "--tasks", "6", "--replicates", "5",
                   "--replicate-over", "checkpoints", "--out", str(tmp_path / "c"))
    assert_user_error(proc, "--replicate-over checkpoints", "needs 5 checkpoints")


def _f(path):
    import numpy as np

    rows = path.read_text().splitlines()
    return np.array([[float(x) if x else np.nan for x in r.split(",")] for r in rows[1:]])


def test_theta_window_averages_each_training_s_checkpoints(tmp_path):
    """--theta-window 2: each training's estimate at theta* and at its next checkpoint (or the one
    before when theta* is the newest), in <replicate>/window/c1; the consensus averages each
    training's two standardized affinities first.  Recomputed here from the f tables."""
    import numpy as np

    from policygradex import artifacts as art
    from policygradex.estimate.affinity import consensus_affinity, table_affinity

    conf = tmp_path / "conf.toml"
    conf.write_text("[ppo]\ncheckpoint_every = 2\n")
    out = tmp_path / "w"
    args = ["--suite", "cartpole-planted", "--tasks", "6", "--theta-window", "2", "--config", str(conf)]
    g1, _ = _run(out, *args, "--replicates", "1")
    assert g1["verdict"]["test"] == "single_theta_star_permutation" and len(g1["meta_policy"]["window_steps"]) == 1
    g, _ = _run(out, *args, "--replicates", "2", "--workers", "1")
    reps = json.loads((out / "replicates.json").read_text())["replicates"]
    tables = []
    for r in reps:
        d = out / r["dir"]
        steps = sorted(int(p.stem.split("_")[1]) for p in (d / "train" / "checkpoints").glob("step_*.pt"))
        later = [s for s in steps if s > r["step"]]
        assert r["window_steps"] == [later[0] if later else max(s for s in steps if s < r["step"])]
        meta = json.loads((d / "window" / "c1" / "collect" / "meta_policy.json").read_text())
        assert meta["step"] == r["window_steps"][0]
        tables.append([_f(d / "f_table.csv"), _f(d / "window" / "c1" / "f_table.csv")])
    expected = consensus_affinity([table_affinity(t, ~np.isnan(t[0])) for t in tables])
    np.testing.assert_allclose(art.read_table(out / "affinity.csv", index=True), expected, atol=1e-9)
    assert g["verdict"]["calibrated"] and g["meta_policy"]["window_steps"] == reps[0]["window_steps"]
