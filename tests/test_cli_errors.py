"""Every bad input through the real CLI (a subprocess): exit code 2, one line on stderr naming
the input and what is allowed, no traceback.  Issue 8, point 1 (docs/reliability.md)."""

from __future__ import annotations

import fcntl
import os
import textwrap

import pytest

from conftest import assert_user_error, seeded
from reliability_helpers import cli, with_pythonpath, write_helpers

PLANTED = ["--suite", "cartpole-planted", "--steps", "64"]  # n = 8


@pytest.fixture(scope="module")
def helpers(tmp_path_factory):
    return write_helpers(tmp_path_factory.mktemp("helpers"))


@pytest.mark.parametrize("args,needles", [
    (["--suite", "nope"], ["--suite 'nope'", "unknown suite", "cartpole-planted"]),
    (["--suite", "env:NoSuchEnv-v0"], ["NoSuchEnv-v0", "cannot make env"]),
    (["--suite", "no/such/suite.toml"], ["no/such/suite.toml", "does not exist"]),
    (["--suite", "cartpole", "--tasks", "0"], ["--tasks", "between 1 and 1000"]),
    (["--suite", "cartpole", "--tasks", "5000"], ["--tasks", "between 1 and 1000", "5000"]),
    (["--suite", "cartpole", "--tasks", "1"], ["has 1 task", "at least 2"]),
    (["--suite", "cartpole", "--suite-seed", "-1"], ["--suite-seed", "between 0 and 4294967295"]),
    (PLANTED + ["--seed", "-3"], ["--seed", "between 0 and 4294967295"]),
    (PLANTED + ["--seed", "99999999999999999999"], ["--seed", "between 0 and 4294967295"]),
    (["--suite", "cartpole-planted", "--steps", "0"], ["--steps", "greater than or equal to 1"]),
    (["--suite", "cartpole-planted", "--steps", "many"], ["--steps", "valid integer"]),
    (PLANTED + ["--d", "0"], ["--d", "greater than or equal to 1"]),
    (PLANTED + ["--d", "1000000"], ["--d", "less than or equal to 100000"]),
    (PLANTED + ["--k", "0"], ["--k", "greater than or equal to 1"]),
    (PLANTED + ["--k", "9"], ["--k 9", "exceeds the number of tasks (8)"]),
    (PLANTED + ["--penalty-scale", "-1"], ["--penalty-scale", "greater than or equal to 0"]),
    (PLANTED + ["--penalty-scale", "nan"], ["--penalty-scale", "finite"]),
    (PLANTED + ["--subset-size", "1"], ["--subset-size", "greater than or equal to 2"]),
    (PLANTED + ["--subset-size", "9"], ["--subset-size 9", "exceeds the number of tasks (8)"]),
    (PLANTED + ["--subsets", "0"], ["--subsets", "greater than or equal to 1"]),
    (PLANTED + ["--coverage", "0"], ["--coverage", "greater than or equal to 1"]),
    (PLANTED + ["--target-delta", "0"], ["--target-delta", "greater than 0"]),
    (PLANTED + ["--target-delta", "inf"], ["--target-delta", "finite"]),
    (PLANTED + ["--transitions", "10"], ["--transitions", "greater than or equal to 64"]),
    (PLANTED + ["--evaluator", "magic"], ["--evaluator", "first_order_ppo"]),
    (PLANTED + ["--null-permutations", "0"], ["--null-permutations", "greater than or equal to 1"]),
    (PLANTED + ["--min-return", "nan"], ["--min-return", "finite"]),
    (PLANTED + ["--checkpoint", "-1"], ["--checkpoint", "greater than or equal to 0"]),
    (PLANTED + ["--threads", "0"], ["--threads", "greater than or equal to 1"]),
    (PLANTED + ["--bogus", "1"], ["--bogus"]),
])
def test_bad_run_options(tmp_path, args, needles):
    assert_user_error(cli("run", *args, "--out", str(tmp_path / "o")), *needles)


@pytest.mark.parametrize("args,needles", [
    (["--envs-per-task", "0"], ["--envs-per-task", "greater than or equal to 1"]),
    (["--checkpoint-every", "0"], ["--checkpoint-every", "greater than or equal to 1"]),
    (["--hidden", "0,8"], ["--hidden", "positive widths"]),
])
def test_bad_train_options(tmp_path, args, needles):
    assert_user_error(cli("train", "--suite", "cartpole", "--tasks", "2", *args, "--out", str(tmp_path / "o")), *needles)


@pytest.mark.parametrize("body,needles", [
    ("[oops]\nx = 1\n", ["unknown table 'oops'", "allowed: ppo"]),
    ('[ppo]\ngamma = "high"\n', ["--config", "[ppo]", "gamma", "valid number"]),
    ("[estimate]\nbogus = 1\n", ["--config", "[estimate]", "bogus", "unknown field"]),
    ("[group]\npenalty = -1.0\n", ["--config", "[group]", "penalty", "greater than or equal to 0"]),
    ("[estimate]\nd = nan\n", ["--config", "[estimate]", "d", "finite"]),
    ("[ppo]\nseed = -5\n", ["--config", "[ppo]", "seed", "between 0 and 4294967295"]),
    ("[group]\nk = 50\n", ["k 50", "exceeds the number of tasks (8)"]),
    ("[ppo\n", ["--config", "invalid TOML"]),
])
def test_bad_config_files(tmp_path, body, needles):
    cfg = tmp_path / "run.toml"
    cfg.write_text(body)
    assert_user_error(cli("run", *PLANTED, "--config", str(cfg), "--out", str(tmp_path / "o")), *needles)


GOOD = '[[tasks]]\nname = "a"\nenv_id = "CartPole-v1"\n'


@pytest.mark.parametrize("body,needles", [
    ('nme = "typo"\n' + GOOD, ["nme", "unknown field"]),
    ('tasks = "CartPole-v1"\n', ["tasks", "valid list"]),
    (GOOD + '[[tasks]]\nname = "b"\nenv_id = "CartPole-v1"\nmax_episode_steps = 0\n', ["tasks.1.max_episode_steps", "greater than or equal to 1"]),
    (GOOD + '[[tasks]]\nname = "b"\nenv_id = "CartPole-v1"\noverrides = { length = nan }\n', ["tasks.1.overrides.length", "finite"]),
    (GOOD + '[[tasks]]\nname = "b"\nenv_id = "CartPole-v1"\nwrappers = ["rescale_action"]\n', ["'b'", "rescale_action", "does not apply"]),
    ('[[tasks]]\nname = "a"\nenv_id = "pgx_badenvs:Good-v0"\n[[tasks]]\nname = "b"\nenv_id = "pgx_badenvs:ThreeActions-v0"\n',
     ["'b'", "action space Discrete(3)", "'a'", "share spaces"]),
    ('[[tasks]]\nname = "m"\nenv_id = "pgx_badenvs:MultiDiscrete-v0"\n[[tasks]]\nname = "n"\nenv_id = "pgx_badenvs:Good-v0"\n',
     ["'m'", "MultiDiscrete", "Discrete or a 1-D Box"]),
    (GOOD + '[[tasks]]\nname = "bad"\nenv_id = "pgx_badenvs:BrokenConstructor-v0"\n', ["'bad'", "constructor", "cannot open the simulator"]),
])
def test_bad_suite_files(tmp_path, helpers, body, needles):
    suite = tmp_path / "suite.toml"
    suite.write_text(body)
    proc = cli("train", "--suite", str(suite), "--steps", "64", "--out", str(tmp_path / "o"), env=with_pythonpath(helpers))
    assert_user_error(proc, *needles)


def test_suite_file_that_is_not_text(tmp_path):
    suite = tmp_path / "suite.toml"
    suite.write_bytes(b"\xff\xfe\x00binary")
    assert_user_error(cli("train", "--suite", str(suite), "--out", str(tmp_path / "o")), str(suite), "not a UTF-8 text file")


@pytest.mark.parametrize("env_name,needles", [
    ("RaiseReset", ["task 'bad'", "reset raised RuntimeError", "boom in reset"]),
    ("RaiseStep", ["task 'bad'", "step raised ValueError", "boom in step"]),
    ("NanReset", ["task 'bad'", "reset returned a non-finite observation"]),
    ("NanObs", ["task 'bad'", "step returned a non-finite observation"]),
    ("InfReward", ["task 'bad'", "step returned a non-finite reward"]),
    ("Shape", ["task 'bad'", "step returned an observation of shape (3,)", "shape (4,)"]),
])
def test_misbehaving_environments_are_named_with_the_call(tmp_path, helpers, env_name, needles):
    suite = tmp_path / "suite.toml"
    suite.write_text(textwrap.dedent(f'''
        [[tasks]]
        name = "good"
        env_id = "pgx_badenvs:Good-v0"
        [[tasks]]
        name = "bad"
        env_id = "pgx_badenvs:{env_name}-v0"
    '''))
    command = "run" if env_name == "RaiseReset" else "train"  # the same rollouts; train imports less
    proc = cli(command, "--suite", str(suite), "--steps", "256", "--out", str(tmp_path / "o"), env=with_pythonpath(helpers))
    assert_user_error(proc, *needles)


def test_out_is_a_file(tmp_path):
    f = tmp_path / "taken"
    f.write_text("x")
    assert_user_error(cli("run", *PLANTED, "--out", str(f)), "--out", str(f), "not a directory")


def test_out_in_use_by_another_process(tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / ".policygradex").write_text('{"tool": "policygradex"}')  # a directory policygradex made
    with open(out / ".lock", "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        assert_user_error(cli("run", *PLANTED, "--out", str(out)), "--out", "in use by another policygradex process",
                          f"pid {os.getpid()}")


def test_read_only_output_directory(tmp_path, helpers):
    out = tmp_path / "ro"
    out.mkdir()
    proc = cli("run", *PLANTED, "--out", str(out), env=with_pythonpath(helpers, {"PGX_FAULT": f"erofs:{out}"}))
    assert_user_error(proc, f"cannot write {out}", "Read-only file system", "writable --out")


def test_disk_full(tmp_path, helpers):
    out = tmp_path / "full"
    proc = cli("run", *PLANTED, "--out", str(out), env=with_pythonpath(helpers, {"PGX_FAULT": "enospc:config.json"}))
    assert_user_error(proc, "disk full while writing", "config.json", "free space and rerun")
    assert not [p for p in out.rglob("*.tmp")] and not (out / "config.json").exists()


def test_corrupted_and_truncated_checkpoints(tmp_path):
    import torch

    from policygradex.config import PPOConfig
    from policygradex.rl.checkpoint import build_model, save_checkpoint
    from policygradex.tasks import load_suite

    suite, cfg = load_suite("cartpole", 2), PPOConfig()
    path = tmp_path / "step_000000001.pt"
    save_checkpoint(path, build_model(suite, cfg), None, cfg, suite, 1, 1, {})
    good = path.read_bytes()
    weights = torch.load(path, weights_only=False)["model"]
    needle = next(iter(weights.values())).numpy().tobytes()[:16]
    at = good.index(needle) + 3  # a byte inside tensor data: torch.load does not notice a flip there
    path.write_bytes(good[:at] + bytes([good[at] ^ 0xFF]) + good[at + 1:])
    assert_user_error(cli("evaluate", str(path)), str(path), "corrupted", "content checksum")
    path.write_bytes(good[: len(good) // 2])
    assert_user_error(cli("evaluate", str(path)), str(path), "truncated or corrupted")
    assert_user_error(cli("evaluate", str(tmp_path)), str(tmp_path), "not a file")


@pytest.mark.trains
def test_meta_policy_too_weak_to_trust(tmp_path):
    # 100000 is above any CartPole return (at most 500 per episode): refused for any seed
    proc = cli("run", "--suite", "cartpole", "--tasks", "2", "--seed", str(seeded(0)), "--suite-seed", str(seeded(0)),
               "--steps", "512", "--transitions", "64", "--d", "8", "--min-return", "100000", "--out", str(tmp_path / "o"))
    assert_user_error(proc, "meta-policy too weak", "< --min-return 100000", "train longer (--steps)")


def test_validate_options(tmp_path):
    assert_user_error(cli("validate", *PLANTED, "--finetune-steps", "0", "--out", str(tmp_path / "o")),
                      "--finetune-steps", "greater than or equal to 1")
