"""End to end through the real CLI on the planted family, plus caching and bad inputs."""

import csv
import json
import shutil

import pytest

from conftest import assert_user_error, run_cli

SMALL = ["--suite", "cartpole-planted", "--steps", "20000", "--transitions", "4096", "--null-permutations", "50"]


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("planted")
    proc = run_cli("run", *SMALL, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_planted_partition_is_recovered(planted_run):
    out, proc = planted_run
    g = json.loads((out / "groups.json").read_text())
    assert g["nmi_vs_true_partition"] == pytest.approx(1.0)
    assert g["k"] == 2 and g["null_p"] < 0.05 and g["distinguishable_from_noise"]
    names = set(g["tasks"])
    assert sorted(x for grp in g["groups"] for x in grp) == sorted(names)
    for grp in g["groups"]:  # each group is all-normal or all-mirrored
        assert len({name.split("-")[0] for name in grp}) == 1
    assert 0.005 < g["delta"]["median"] < 0.02 and g["delta"]["lam"] > 0
    assert "NMI vs the suite's known partition: 1.000" in proc.stdout
    assert g["stability"]["mean_ari"] > 0.5 and min(g["stability"]["per_task"].values()) > 0.5
    assert 0 < g["approx_error_at_delta"]["median"] < 0.2


def test_output_files(planted_run):
    out, _ = planted_run
    g = json.loads((out / "groups.json").read_text())
    rows = list(csv.reader((out / "affinity.csv").open()))
    assert rows[0][1:] == g["tasks"] and [r[0] for r in rows[1:]] == g["tasks"]
    U = [[float(x) for x in r[1:]] for r in rows[1:]]
    assert all(abs(U[i][j] - U[j][i]) < 1e-12 for i in range(8) for j in range(8))
    assert (out / "affinity.png").read_bytes()[:4] == b"\x89PNG"
    report = (out / "report.md").read_text()
    assert "Null test" in report and "theta*" in report and "delta median" in report
    meta = json.loads((out / "collect" / "meta_policy.json").read_text())
    assert meta["healthy"] and meta["probes"]


def test_rerun_skips_finished_stages_and_option_change_recomputes_only_dependents(planted_run, tmp_path):
    src, _ = planted_run
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.manifest.json")}
    before = (out / "groups.json").read_bytes()
    proc = run_cli("run", *SMALL, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.manifest.json")} == mtimes
    assert (out / "groups.json").read_bytes() == before
    # a grouping option recomputes the group stage only
    proc = run_cli("run", *SMALL[:-1], "30", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    now = {p.name: p.stat().st_mtime_ns for p in out.glob("*.manifest.json")}
    changed = {k for k in now if now[k] != mtimes[k]}
    assert changed == {"group.manifest.json"}
    assert json.loads((out / "groups.json").read_text())["null_statistic"]["permutations"] == 30


def test_corrupted_feature_file_is_recomputed(planted_run, tmp_path):
    src, _ = planted_run
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    f = out / "features" / "task_000.pt"
    f.write_bytes(f.read_bytes()[:100])
    proc = run_cli("run", *SMALL, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "groups.json").read_text())["nmi_vs_true_partition"] == pytest.approx(1.0)


@pytest.mark.parametrize("args,needles", [
    (["--k", "0"], ["--k"]),
    (["--k", "9"], ["--k", "exceeds"]),
    (["--subset-size", "1"], ["--subset-size"]),
    (["--subset-size", "12"], ["--subset-size", "exceeds"]),
    (["--d", "0"], ["--d"]),
    (["--evaluator", "magic"], ["--evaluator", "first_order_ppo"]),
    (["--target-delta", "-1"], ["--target-delta"]),
    (["--transitions", "3"], ["--transitions"]),
    (["--coverage", "0"], ["--coverage"]),
    (["--null-permutations", "0"], ["--null-permutations"]),
])
def test_bad_run_options(tmp_path, args, needles):
    proc = run_cli("run", "--suite", "cartpole-planted", "--steps", "64", *args, "--out", str(tmp_path / "o"))
    assert_user_error(proc, *needles)


def test_single_task_suite_cannot_be_grouped(tmp_path):
    assert_user_error(run_cli("run", "--suite", "env:CartPole-v1", "--out", str(tmp_path)), "at least 2")


def test_weak_meta_policy_is_refused(planted_run, tmp_path):
    src, _ = planted_run
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    assert_user_error(run_cli("run", *SMALL, "--min-return", "100000", "--out", str(out)), "too weak", "--min-return")


def test_missing_checkpoint_is_named(planted_run, tmp_path):
    src, _ = planted_run
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    assert_user_error(run_cli("run", *SMALL, "--checkpoint", "7", "--out", str(out)), "--checkpoint 7", "available steps")


def test_rollout_return_evaluator_uses_common_random_numbers(planted_run):
    import numpy as np
    import torch

    from policygradex.estimate.features import FeatureStore
    from policygradex.estimate.rollout_eval import rollout_return
    from policygradex.rl.checkpoint import load_checkpoint

    out, _ = planted_run
    meta = json.loads((out / "collect" / "meta_policy.json").read_text())
    model, suite, _, _ = load_checkpoint(out / "train" / "checkpoints" / meta["checkpoint"])
    store = FeatureStore.load(out / "features")
    members = np.zeros((3, suite.n), dtype=bool)
    members[0, :4] = members[1, :4] = True
    members[2, 4:] = True
    u = torch.zeros(3, store.d, dtype=torch.float64)
    u[2] = torch.randn(store.d, dtype=torch.float64) * 50
    f = rollout_return(model, suite, store.projector, u, members, episodes=2, seed=3)
    assert np.isnan(f[0, 4:]).all() and np.isfinite(f[0, :4]).all() and np.isfinite(f[2, 4:]).all()
    assert np.array_equal(f[0, :4], f[1, :4])  # same parameters, same seeds -> same returns
    ev_zero = rollout_return(model, suite, store.projector, torch.zeros(1, store.d, dtype=torch.float64),
                             members[2:], episodes=2, seed=3)
    assert not np.array_equal(ev_zero[0, 4:], f[2, 4:])  # a large step changes the returns


def test_python_api_reuses_a_cli_run(planted_run, tmp_path):
    import policygradex as pgx

    src, _ = planted_run
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    cfg = json.loads((out / "config.json").read_text())["config"]
    res = pgx.run(pgx.load_suite("cartpole-planted"), pgx.RunConfig.model_validate(cfg), out)
    assert res.groups == json.loads((src / "groups.json").read_text())
    assert res.affinity.shape == (8, 8) and res.task_names == res.groups["tasks"]
    with pytest.raises(AttributeError):
        pgx.no_such_thing
