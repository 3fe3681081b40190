"""The real CLI in a subprocess: user errors are one line, exit code 2, no traceback."""

import textwrap

import pytest

from conftest import assert_user_error, run_cli, seeded

GOOD_TASK = '[[tasks]]\nname = "a"\nenv_id = "CartPole-v1"\n'


def write(tmp_path, text, name="suite.toml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return str(p)


@pytest.mark.parametrize("body,needles", [
    (GOOD_TASK + '[[tasks]]\nname = "b"\nenv_id = "Acrobot-v1"\n', ["'b'", "observation space", "'a'"]),
    (GOOD_TASK + '[[tasks]]\nname = "b"\nenv_id = "NoSuchEnv-v9"\n', ["'b'", "NoSuchEnv-v9"]),
    (GOOD_TASK + '[[tasks]]\nname = "b"\nenv_id = "CartPole-v1"\noverrides = { pole_len = 0.3 }\n', ["'b'", "pole_len"]),
    (GOOD_TASK + '[[tasks]]\nname = "b"\nenv_id = "CartPole-v1"\noverrides = { length = "long" }\n', ["tasks.1.overrides.length"]),
    (GOOD_TASK + '[[tasks]]\nname = "b"\nenv_id = "CartPole-v1"\nkwarg = {}\n', ["tasks.1.kwarg", "unknown field"]),
    (GOOD_TASK + '[[tasks]]\nname = "b"\nenv_id = 5\n', ["tasks.1.env_id"]),
    (GOOD_TASK + '[[tasks]]\nname = "a"\nenv_id = "CartPole-v1"\n', ["unique", "a"]),
    (GOOD_TASK + '[[tasks]]\nname = "b"\nenv_id = "CartPole-v1"\nwrappers = ["nope"]\n', ["nope", "flatten_observation"]),
    ('[[tasks]]\nname = "a"\nenv_id = "CartPole-v1"\n[[tasks]\n', ["invalid TOML"]),
    ('tasks = []\n', ["tasks"]),
    (GOOD_TASK + '[[tasks]]\nname = "b"\nenv_id = "CartPole-v1"\n[ppo]\ngamma = 2.0\n', ["[ppo]", "gamma"]),
    (GOOD_TASK + 'true_partition = [["a"]]\n[[tasks]]\nname = "b"\nenv_id = "CartPole-v1"\n', ["true_partition"]),
])
def test_bad_suite_files(tmp_path, body, needles):
    proc = run_cli("train", "--suite", write(tmp_path, body), "--steps", "64", "--out", str(tmp_path / "o"))
    assert_user_error(proc, *needles)


@pytest.mark.parametrize("args,needles", [
    (["--suite", "nope"], ["--suite", "cartpole-planted"]),
    (["--suite", "missing.toml"], ["missing.toml", "does not exist"]),
    (["--steps", "abc"], ["--steps"]),
    (["--steps", "0"], ["--steps", "greater than or equal to 1"]),
    (["--hidden", "64,x"], ["--hidden"]),
    (["--norm-adv", "sometimes"], ["--norm-adv"]),
    (["--tasks", "0"], ["--tasks"]),
    (["--bogus"], ["--bogus"]),
])
def test_bad_train_options(tmp_path, args, needles):
    proc = run_cli("train", *args, "--out", str(tmp_path / "o"))
    assert_user_error(proc, *needles)


def test_evaluate_rejects_a_file_that_is_not_a_checkpoint(tmp_path):
    bad = tmp_path / "step_000000001.pt"
    bad.write_bytes(b"not a checkpoint")
    assert_user_error(run_cli("evaluate", str(bad)), str(bad), "is not a policygradex checkpoint", "expected a checkpoint")
    assert_user_error(run_cli("evaluate", str(tmp_path / "none.pt")), "does not exist")


@pytest.mark.trains
def test_train_then_evaluate_from_cli(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("train", "--suite", "cartpole", "--tasks", "2", "--suite-seed", str(seeded(0)), "--seed", str(seeded(0)),
                   "--steps", "1024", "--out", str(out), "--eval-episodes", "2")
    assert proc.returncode == 0, proc.stderr
    assert "cartpole-00" in proc.stdout and "cartpole-01" in proc.stdout
    ckpt = sorted((out / "checkpoints").glob("step_*.pt"))[-1]
    ev = run_cli("evaluate", str(ckpt), "--episodes", "2", "--seed", str(seeded(12345)), "--json")
    assert ev.returncode == 0, ev.stderr
    import json

    data = json.loads(ev.stdout)
    assert set(data) == {"cartpole-00", "cartpole-01"} and all("mean" in v for v in data.values())


def test_help_on_every_command():
    for cmd in ("train", "evaluate"):
        proc = run_cli(cmd, "--help")
        assert proc.returncode == 0 and "Usage" in proc.stdout
