"""Execution backends (policygradex.backend): local serial, local process pool and Ray give the
same results; failing units are retried, then reported with their tasks; an interrupted
validation resumes from its finished units; user mistakes are one-line errors.

The Ray tests start one local Ray instance (2 CPUs, no dashboard) for the module and shut it
down at the end; they are skipped only when Ray is not installed (`make test` installs it).
"""

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_user_error, run_cli, seeded
from policygradex.backend import LocalBackend, Resources, Unit, UnitFailed, make_backend
from policygradex.errors import UserError


# ---------------------------------------------------------------- unit functions (module level: sent to workers)


def _square(ctx, payload):
    return {"value": payload * payload + ctx["offset"], "pid": os.getpid()}


def _setup_logged(shared):
    """Records every call (one file per call): the shared input must be prepared once per worker."""
    d = Path(shared["log"])
    d.mkdir(parents=True, exist_ok=True)
    (d / f"setup-{os.getpid()}-{len(list(d.iterdir()))}").write_text("")
    return {"offset": shared["offset"]}


def _attempt(marker_dir: str, key: str) -> int:
    """Counts this attempt in a file (visible across processes); returns the attempt number."""
    d = Path(marker_dir)
    d.mkdir(parents=True, exist_ok=True)
    with open(d / key, "a") as fh:
        fh.write("x")
    return (d / key).stat().st_size


def _flaky(ctx, payload):
    """Raises on its first attempt, succeeds on the second."""
    marker, key, how = payload
    if _attempt(marker, key) == 1:
        if how == "kill":
            os._exit(3)  # the worker process dies
        raise RuntimeError(f"transient failure of {key}")
    return key


def _always_fails(ctx, payload):
    marker, key, user = payload
    _attempt(marker, key)
    if user:
        raise UserError(f"environment of {key} raised in reset")
    raise ValueError(f"broken unit {key}")


# ---------------------------------------------------------------- local


def test_local_serial_and_pool_give_the_same_results(tmp_path):
    units = [Unit(f"u{i}", i, (f"task-{i}",)) for i in range(6)]
    shared = {"offset": 7, "log": str(tmp_path / "log")}
    serial = {u.key: r["value"] for u, r in LocalBackend().map(_square, units, shared=shared, setup=_setup_logged)}
    assert serial == {f"u{i}": i * i + 7 for i in range(6)}
    assert len(list((tmp_path / "log").iterdir())) == 1  # prepared once, in this process
    shared["log"] = str(tmp_path / "log2")
    with make_backend("local", workers=2) as be:
        pooled = {u.key: r for u, r in be.map(_square, units, shared=shared, setup=_setup_logged, resources=Resources(cpus=1))}
    assert {k: r["value"] for k, r in pooled.items()} == serial
    pids = {r["pid"] for r in pooled.values()}
    assert os.getpid() not in pids and len(pids) <= 2
    assert len(list((tmp_path / "log2").iterdir())) <= 2  # once per worker process, not once per unit


@pytest.mark.parametrize("workers", [1, 2])
def test_local_retries_then_reports_the_units_tasks(tmp_path, workers):
    be = LocalBackend(workers=workers, retries=2)
    flaky = [Unit(f"f{i}", (str(tmp_path / "m"), f"f{i}", "raise"), (f"task-{i}",)) for i in range(3)]
    assert sorted(r for _, r in be.map(_flaky, flaky)) == ["f0", "f1", "f2"]
    assert all((tmp_path / "m" / f"f{i}").stat().st_size == 2 for i in range(3))  # one retry each
    bad = [Unit("ok", (str(tmp_path / "m"), "ok", "raise"), ("a",)),
           Unit("bad", (str(tmp_path / "m2"), "bad", False), ("cartpole-03", "cartpole-07"), "subset 2/5 seed 1/3")]
    with pytest.raises(UnitFailed) as info:
        list(be.map(lambda_free_mix, bad))
    err = info.value
    assert err.tasks == ("cartpole-03", "cartpole-07") and err.attempts == 3
    assert "subset 2/5 seed 1/3 (tasks: cartpole-03, cartpole-07) failed 3 times" in str(err) and "broken unit bad" in str(err)
    assert not isinstance(err, UserError)  # a bug stays a bug (exit 1 with a traceback)
    assert (tmp_path / "m2" / "bad").stat().st_size == 3  # 1 attempt + 2 retries, no more


def lambda_free_mix(ctx, payload):
    return _always_fails(ctx, payload) if payload[1] == "bad" else _flaky(ctx, payload)


def _stamp(ctx, payload):
    """Records when it ran (to check that follow-up units start before the map's other units end)."""
    import time

    key, seconds = payload
    start = time.monotonic()
    time.sleep(seconds)
    return {"key": key, "start": start, "end": time.monotonic()}


def _children(unit, result):
    """Two follow-up units of every first-level unit, none of theirs."""
    return [] if "." in unit.key else [Unit(f"{unit.key}.{j}", (f"{unit.key}.{j}", 0.05), unit.tasks) for j in range(2)]


@pytest.mark.parametrize("workers", [1, 2])
def test_follow_up_units_run_in_the_same_map_as_soon_as_their_parent_is_done(workers):
    """``then``: a unit's follow-ups join the map when it finishes (a replicate's estimates after
    its training) - every unit runs once, and with a pool a follow-up starts while a slow
    first-level unit is still running."""
    units = [Unit("slow", ("slow", 3.0), ("a",)), Unit("fast", ("fast", 0.05), ("b",))]  # 3 s: room for a worker's start
    with LocalBackend(workers=workers) as be:
        got = {u.key: r for u, r in be.map(_stamp, units, then=_children)}
    assert sorted(got) == ["fast", "fast.0", "fast.1", "slow", "slow.0", "slow.1"]
    for parent in ("fast", "slow"):
        assert all(got[f"{parent}.{j}"]["start"] >= got[parent]["end"] for j in range(2))  # after their parent
    if workers == 2:
        assert got["fast.1"]["end"] <= got["slow"]["end"]  # not held back until the slow unit is done
    with pytest.raises(ValueError, match="unique"):  # a follow-up may not reuse a key of the same map
        list(LocalBackend().map(_stamp, units, then=lambda u, r: [Unit("fast", ("x", 0), ())]))


def test_a_killed_pool_worker_is_retried(tmp_path):
    units = [Unit(f"k{i}", (str(tmp_path / "m"), f"k{i}", "kill" if i == 0 else "raise"), (f"t{i}",)) for i in range(3)]
    with LocalBackend(workers=2, retries=2) as be:
        assert sorted(r for _, r in be.map(_flaky, units)) == ["k0", "k1", "k2"]


def test_a_user_error_in_a_unit_stays_a_user_error(tmp_path):
    units = [Unit("env", (str(tmp_path / "m"), "env", True), ("lunar-02",), "subset 1/1")]
    with pytest.raises(UserError, match=r"subset 1/1 \(tasks: lunar-02\) failed 2 times .* raised in reset"):
        list(LocalBackend(retries=1).map(_always_fails, units))


class _Deterministic(UserError):
    transient = False  # e.g. a diverging optimizer: a rerun fails the same way


def _fails_for_good(ctx, payload):
    marker, key = payload
    _attempt(marker, key)
    raise _Deterministic(f"unit {key} diverged")


@pytest.mark.parametrize("workers", [1, 2])
def test_an_error_a_rerun_would_repeat_is_not_retried(tmp_path, workers):
    units = [Unit("d", (str(tmp_path / "m"), "d"), ("task-0",))]
    with LocalBackend(workers=workers, retries=2) as be, pytest.raises(UserError, match="unit d diverged"):
        list(be.map(_fails_for_good, units))
    assert (tmp_path / "m" / "d").stat().st_size == 1  # one attempt, no retry


def test_backend_user_mistakes():
    for kwargs, needle in [(dict(name="spark"), "--backend 'spark': unknown backend; allowed: local, ray"),
                           (dict(name="local", workers=0), "--workers must be an integer >= 1"),
                           (dict(name="local", address="auto"), "--ray-address needs --backend ray"),
                           (dict(name="ray", workers=0), "--workers must be an integer >= 1")]:
        with pytest.raises(UserError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            make_backend(**kwargs)
    with pytest.raises(ValueError, match="unique"):
        list(LocalBackend().map(_square, [Unit("a", 1), Unit("a", 2)], shared={"offset": 0, "log": "/nonexistent"}))


def _cli_in_process(capsys, *argv: str):
    """The CLI's main() in this process (no interpreter start-up): exit code, stdout, stderr."""
    import subprocess

    from policygradex.cli import main

    with pytest.raises(SystemExit) as info:
        main(list(argv))
    cap = capsys.readouterr()
    return subprocess.CompletedProcess(argv, info.value.code, cap.out, cap.err)


@pytest.mark.parametrize("cmd,args,needles", [
    ("validate", ["--workers", "0"], ["--workers must be an integer >= 1"]),
    ("run", ["--workers", "0"], ["--workers must be an integer >= 1"]),
    ("run", ["--backend", "spark"], ["--backend", "allowed: local, ray"]),
    ("validate", ["--ray-address", "auto"], ["--ray-address needs --backend ray"]),
    ("validate", ["--backend", "ray", "--ray-address", "127.0.0.1:9"], ["--ray-address 127.0.0.1:9: cannot connect"]),
    ("run", ["--backend", "ray", "--ray-address", "nonsense"], ["--ray-address 'nonsense': expected auto, HOST:PORT"]),
    ("compare", ["--workers", "0"], ["--workers must be an integer >= 1"]),
    ("compare", ["--ray-address", "auto"], ["--ray-address needs --backend ray"]),
])
def test_bad_backend_options_on_the_cli(capsys, tmp_path, cmd, args, needles):
    if "ray" in args and not HAVE_RAY:
        pytest.skip("Ray is not installed")
    proc = _cli_in_process(capsys, cmd, "--suite", "cartpole-planted", "--steps", "64", *args, "--out", str(tmp_path / cmd))
    assert_user_error(proc, *needles)
    assert not (tmp_path / cmd).exists()


def test_missing_ray_says_how_to_install(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    proc = _cli_in_process(capsys, "validate", "--suite", "cartpole-planted", "--steps", "64", "--backend", "ray",
                           "--out", str(tmp_path / "o"))
    assert_user_error(proc, "--backend ray needs Ray", 'pip install "policygradex[ray]"')
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- Ray

HAVE_RAY = importlib.util.find_spec("ray") is not None
requires_ray = pytest.mark.skipif(not HAVE_RAY, reason='Ray is not installed (pip install -e ".[ray]"; `make test` does)')


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray instance for the module (2 CPUs, no dashboard); shut down at the end."""
    import ray

    ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
    # the unit functions of this test module travel by value (the workers cannot import it)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        ray.shutdown()


@requires_ray
def test_ray_map_matches_local_and_prepares_shared_inputs_once_per_worker(ray_cluster, tmp_path):
    units = [Unit(f"u{i}", i, (f"task-{i}",)) for i in range(8)]
    shared = {"offset": 3, "log": str(tmp_path / "log")}
    be = make_backend("ray")
    assert be.parallelism == 2
    got = {u.key: r for u, r in be.map(_square, units, shared=shared, setup=_setup_logged, resources=Resources(cpus=1))}
    be.close()  # a Ray instance started by the caller is left running
    import ray

    assert ray.is_initialized()
    assert {k: r["value"] for k, r in got.items()} == {f"u{i}": i * i + 3 for i in range(8)}
    assert len(list((tmp_path / "log").iterdir())) <= len({r["pid"] for r in got.values()}) <= 2


@requires_ray
def test_ray_runs_follow_up_units(ray_cluster):
    units = [Unit("slow", ("slow", 1.0), ("a",)), Unit("fast", ("fast", 0.05), ("b",))]
    got = {u.key: r for u, r in make_backend("ray").map(_stamp, units, then=_children)}
    assert sorted(got) == ["fast", "fast.0", "fast.1", "slow", "slow.0", "slow.1"]
    assert all(got[f"{p}.{j}"]["start"] >= got[p]["end"] for p in ("fast", "slow") for j in range(2))


@requires_ray
def test_ray_retries_raised_and_killed_units_then_reports_the_tasks(ray_cluster, tmp_path):
    be = make_backend("ray")
    units = [Unit("raise", (str(tmp_path / "m"), "raise", "raise"), ("a",)),
             Unit("kill", (str(tmp_path / "m"), "kill", "kill"), ("b",))]
    assert sorted(r for _, r in be.map(_flaky, units)) == ["kill", "raise"]
    assert (tmp_path / "m" / "raise").stat().st_size == 2 and (tmp_path / "m" / "kill").stat().st_size == 2
    bad = [Unit("bad", (str(tmp_path / "m2"), "bad", False), ("cartpole-01", "cartpole-04"), "subset 3/9 seed 2/3")]
    with pytest.raises(UnitFailed) as info:
        list(be.map(_always_fails, bad))
    assert info.value.tasks == ("cartpole-01", "cartpole-04") and info.value.attempts == 3
    assert "subset 3/9 seed 2/3 (tasks: cartpole-01, cartpole-04) failed 3 times on the ray backend" in str(info.value)
    assert "broken unit bad" in str(info.value)
    assert (tmp_path / "m2" / "bad").stat().st_size == 3  # bounded: 1 attempt + 2 retries
    user = [Unit("env", (str(tmp_path / "m3"), "env", True), ("lunar-00",))]
    with pytest.raises(UserError, match="lunar-00"):
        list(be.map(_always_fails, user))
    final = [Unit("d", (str(tmp_path / "m4"), "d"), ("lunar-01",))]
    with pytest.raises(UserError, match="unit d diverged"):  # not transient: not retried on Ray either
        list(be.map(_fails_for_good, final))
    assert (tmp_path / "m4" / "d").stat().st_size == 1


# 7 subsets x 2 seeds + theta*: 15 fine-tuning units of one PPO iteration each
TINY_RUN = ["--replicates", "1", "--theta-window", "1", "--suite", "cartpole-planted", "--seed", str(seeded(0)), "--suite-seed", str(seeded(0)), "--steps", "2048",
            "--transitions", "256", "--null-permutations", "10", "--coverage", "1", "--finetune-steps", "256", "--finetune-seeds",
            "2", "--episodes", "2", "--hessian-subsets", "0", "--probes", "2", "--random-draws", "20"]


def _fresh_copy(src: Path, dst: Path) -> Path:
    """The run of ``src`` without its validation (the run's stages stay cached)."""
    shutil.copytree(src, dst)
    shutil.rmtree(dst / "validate")
    for f in ("validation.json", "approx_error.png", "estimated_vs_true.png", "validate.manifest.json",
              "validate_finetune.manifest.json"):
        (dst / f).unlink()
    return dst


@pytest.fixture(scope="module")
def local_validation(tmp_path_factory):
    out = tmp_path_factory.mktemp("val") / "local"
    proc = run_cli("validate", *TINY_RUN, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


@requires_ray
@pytest.mark.trains
def test_validate_on_ray_gives_the_local_ground_truth(ray_cluster, local_validation, tmp_path):
    out = _fresh_copy(local_validation, tmp_path / "ray")
    proc = run_cli("validate", *TINY_RUN, "--backend", "ray", "--ray-address", ray_cluster, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    a = json.loads((local_validation / "validation.json").read_text())
    b = json.loads((out / "validation.json").read_text())
    assert b["ground_truth"]["groups"] == a["ground_truth"]["groups"]
    assert b["ground_truth"]["labels"] == a["ground_truth"]["labels"]
    for key in ("nmi", "ari", "spearman", "random_nmi", "approx_error", "f_true_reliability", "hessian_trace"):
        if key == "hessian_trace":
            assert [h["trace"] for h in b[key]] == [h["trace"] for h in a[key]]
        else:
            assert b[key] == a[key], key
    assert (out / "validate" / "f_true.csv").read_text() == (local_validation / "validate" / "f_true.csv").read_text()
    ex = json.loads((out / "validate_finetune.manifest.json").read_text())["extra"]["execution"]
    assert ex["backend"] == "ray" and ex["address"] == ray_cluster and ex["units_run"] == ex["units"]


class _StopAfter:
    """A backend that is interrupted (Ctrl-C) after ``k`` finished units."""

    def __init__(self, inner, k: int):
        self.inner, self.k, self.name, self.parallelism = inner, k, inner.name, inner.parallelism

    def describe(self):
        return self.inner.describe()

    def map(self, *args, **kwargs):
        for i, item in enumerate(self.inner.map(*args, **kwargs)):
            if i == self.k:
                raise KeyboardInterrupt
            yield item


@requires_ray
@pytest.mark.trains
def test_an_interrupted_validation_resumes_from_its_finished_units(ray_cluster, local_validation, tmp_path):
    import torch

    from policygradex.config import RunConfig, ValidateConfig
    from policygradex.tasks import TaskSuite
    from policygradex.validate import validate

    out = _fresh_copy(local_validation, tmp_path / "resume")
    conf = json.loads((out / "config.json").read_text())
    suite, cfg = TaskSuite.from_dict(conf["suite"]), RunConfig.model_validate(conf["config"])
    vcfg = ValidateConfig(**json.loads((local_validation / "validation.json").read_text())["options"])
    be = make_backend("ray")
    with pytest.raises(KeyboardInterrupt):
        validate(out, suite, cfg, vcfg, backend=_StopAfter(be, 5))
    done = {p.name: p.stat().st_mtime_ns for p in (out / "validate" / "units").glob("*.pt")}
    assert len(done) == 5 and not (out / "validate" / "finetune.pt").exists()
    r = validate(out, suite, cfg, vcfg, backend=be)
    ex = json.loads((out / "validate_finetune.manifest.json").read_text())["extra"]["execution"]
    assert ex["units_reused"] == 5 and ex["units_run"] == ex["units"] - 5
    assert {p: (out / "validate" / "units" / p).stat().st_mtime_ns for p in done} == done  # reused, not rewritten
    a = json.loads((local_validation / "validation.json").read_text())
    assert r["ground_truth"]["groups"] == a["ground_truth"]["groups"] and r["nmi"] == a["nmi"]
    ft_a = torch.load(local_validation / "validate" / "finetune.pt", weights_only=False)
    ft_b = torch.load(out / "validate" / "finetune.pt", weights_only=False)
    assert np.array_equal(ft_a["f_true_repeats"], ft_b["f_true_repeats"], equal_nan=True)
    assert all(torch.equal(p, q) for p, q in zip(ft_a["paths"], ft_b["paths"]))
    # a corrupted unit is recomputed, not used
    first = sorted(done)[0]
    unit = out / "validate" / "units" / first
    unit.write_bytes(unit.read_bytes()[:50])
    (out / "validate_finetune.manifest.json").unlink()
    validate(out, suite, cfg, vcfg, backend=LocalBackend())
    ex = json.loads((out / "validate_finetune.manifest.json").read_text())["extra"]["execution"]
    assert ex["units_run"] == 1 and ex["units_reused"] == ex["units"] - 1
    ft_c = torch.load(out / "validate" / "finetune.pt", weights_only=False)
    assert np.array_equal(ft_a["f_true_repeats"], ft_c["f_true_repeats"], equal_nan=True)


# ---------------------------------------------------------------- compare's units and the null test on a backend

# 3 CartPole tasks, one PPO iteration per task; a PPO method, Soft Modularization and a meta-RL
# method (its own run_unit): 6 (method, seed) units, no PolicyGradEx run needed
TINY_COMPARE = dict(methods="multitask,softmod,meta-maml", seeds=2, steps_per_task=64, episodes=1, n_test=2, adapt_steps=1,
                    probe_episodes=1)
_WALL = ("wall_s", "train_wall_s", "grouping_s")


def _compare_inputs(**overrides):
    from policygradex.cli import RunOptions, _run_config
    from policygradex.config import CompareConfig
    from policygradex.tasks import load_suite

    suite = load_suite("cartpole", 3, seeded(0))
    cfg = _run_config(suite, seeded(0), RunOptions(replicates=1, theta_window=1))
    opts = {**TINY_COMPARE, "methods": tuple(TINY_COMPARE["methods"].split(",")), **overrides}
    return suite, cfg, CompareConfig(**opts)


def _unit_numbers(out: Path) -> dict:
    """Every unit's result.json without its wall times, and its policies' tensors."""
    import torch

    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in _WALL}
        return x

    units = {}
    for res in sorted((out / "compare").rglob("result.json")):
        key = str(res.parent.relative_to(out / "compare"))
        r = json.loads(res.read_text())
        models = [torch.load(res.parent / p, weights_only=False)["model"] for p in r["policies"]]
        units[key] = (strip(r), [{k: v.tolist() for k, v in m.items()} for m in models])
    return units


def _same_comparison(a: dict, b: dict) -> None:
    assert a["methods_order"] == b["methods_order"]
    for name, ea in a["methods"].items():
        eb = b["methods"][name]
        for key in ("per_seed_mean", "per_task", "mean", "ci95", "env_steps_per_task", "groups", "seeds"):
            assert ea[key] == eb[key], (name, key)


@pytest.fixture(scope="module")
def serial_compare(tmp_path_factory):
    """The tiny comparison in this process, serially (the default backend)."""
    from policygradex.compare import compare

    out = tmp_path_factory.mktemp("cmp") / "serial"
    return out, compare(*_compare_inputs(), out)


@pytest.mark.trains
def test_compare_on_a_process_pool_equals_serial(serial_compare, tmp_path):
    from policygradex.compare import compare

    out_s, serial = serial_compare
    out = tmp_path / "pool"
    with make_backend("local", workers=2) as be:
        pooled = compare(*_compare_inputs(), out, backend=be)
    _same_comparison(serial, pooled)
    assert _unit_numbers(out) == _unit_numbers(out_s)  # results and trained policies, bit for bit
    assert serial["execution"] == {"backend": "local", "parallelism": 1, "retries": 2, "workers": 1,
                                   "units": 6, "units_reused": 0, "units_run": 6}
    assert json.loads((out / "comparison.json").read_text())["execution"]["workers"] == 2
    man = json.loads((out / "compare" / "meta-maml" / "seed_1.manifest.json").read_text())
    assert man["extra"]["execution"]["workers"] == 2 and "meta-maml/seed_1/init_0.pt" in man["files"]


def _boom_unit(ctx, method, seed, groups, info, ppo, warm, unit_dir, bar):
    raise ValueError(f"diverged at seed {seed}")


def test_a_failing_compare_unit_names_its_method_seed_and_tasks(tmp_path, monkeypatch):
    from policygradex.compare import compare
    from policygradex.compare.methods import METHODS, Method, _all_tasks

    monkeypatch.setitem(METHODS, "boom", Method("boom", "always fails", _all_tasks, run_unit=_boom_unit))
    suite, cfg, ccfg = _compare_inputs(methods=("boom",), seeds=1)
    with pytest.raises(UnitFailed) as info:
        compare(suite, cfg, ccfg, tmp_path / "o", backend=LocalBackend(retries=1))
    err = info.value
    assert err.tasks == tuple(suite.names) and err.attempts == 2
    assert "method boom seed 0 (tasks: cartpole-00, cartpole-01, cartpole-02) failed 2 times" in str(err)
    assert "diverged at seed 0" in str(err)
    assert not (tmp_path / "o" / "compare" / "boom" / "seed_0.manifest.json").exists()


def _planted_table(seed: int = 0):
    """An f table with two planted groups of 3 tasks (subsets of 3 of 6 tasks)."""
    rng = np.random.default_rng(seed)
    n, m = 6, 24
    members = np.zeros((m, n), bool)
    for s in range(m):
        members[s, rng.choice(n, 3, replace=False)] = True
    grp = np.array([0, 0, 0, 1, 1, 1])
    bonus = np.array([[sum(grp[j] == grp[i] for j in np.flatnonzero(members[s]) if j != i) for i in range(n)] for s in range(m)])
    f = np.where(members, bonus + 0.5 * rng.standard_normal((m, n)), np.nan)
    return f, members


def _same_null(a, b) -> None:
    assert a.p_value == b.p_value and a.observed == b.observed
    assert np.array_equal(a.null_stats, b.null_stats) and np.array_equal(a.null_k, b.null_k)
    assert np.array_equal(a.grouping.labels, b.grouping.labels)


def test_null_test_on_a_process_pool_equals_serial():
    from policygradex.group.null import null_test

    f, members = _planted_table()
    serial = null_test(f, members, n_perm=30, seed=4)
    assert serial.p_value < 0.2  # a real test: the planted groups beat most permutations
    _same_null(serial, null_test(f, members, n_perm=30, seed=4, backend=LocalBackend()))  # parallelism 1: the serial loop
    with make_backend("local", workers=2) as be:
        _same_null(serial, null_test(f, members, n_perm=30, seed=4, backend=be, chunk=7))  # 5 units, the last one short


@requires_ray
@pytest.mark.trains
def test_compare_resumes_on_ray_and_ray_equals_serial(ray_cluster, serial_compare, tmp_path):
    from policygradex.compare import compare
    from policygradex.group.null import null_test

    out_s, serial = serial_compare
    suite, cfg, ccfg = _compare_inputs()
    be = make_backend("ray")
    out = tmp_path / "ray"
    with pytest.raises(KeyboardInterrupt):  # interrupted in this process, resumed on Ray
        compare(suite, cfg, ccfg, out, backend=_StopAfter(LocalBackend(), 2))
    done = {p: p.stat().st_mtime_ns for p in (out / "compare").rglob("*.manifest.json")}
    assert len(done) == 2 and not (out / "comparison.json").exists()
    r = compare(suite, cfg, ccfg, out, backend=be)
    assert {p: p.stat().st_mtime_ns for p in done} == done  # the finished units were reused
    assert r["execution"]["backend"] == "ray" and r["execution"]["units_reused"] == 2 and r["execution"]["units_run"] == 4
    _same_comparison(serial, r)
    assert _unit_numbers(out) == _unit_numbers(out_s)
    f, members = _planted_table(1)
    _same_null(null_test(f, members, n_perm=20, seed=2), null_test(f, members, n_perm=20, seed=2, backend=be, chunk=6))
    _same_null(null_test(f, members, k=2, n_perm=12, seed=1), null_test(f, members, k=2, n_perm=12, seed=1, backend=be, chunk=5))
