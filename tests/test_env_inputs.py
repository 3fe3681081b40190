"""Environments that misbehave, never end or changed since training, and checkpoint bytes on
resume (issue 15: environments, episodes and checkpoints; docs/reliability.md).

Every class of bad environment is one line on stderr and exit code 2 naming the task and the
call, with a finished run directory next to the failing one left untouched: ``sys.exit`` inside
``step``/``reset``, a string reward, a Discrete(1) action space, the old gym API (and no
gymnasium warning lines around the error).  An environment whose ``close()`` raises still gives a
working run.  ``evaluate`` refuses a JSON artifact, ``--seed -1`` and a checkpoint whose
environment's spaces changed, each with a line that says so.  An environment that never ends is
cut at the step cap as a truncation in evaluation and in collection.  Training stopped at a
checkpoint and resumed writes every later checkpoint byte for byte as training that never
stopped, also while an episode spans the checkpoint (its actions are replayed on resume).

Most cases call the CLI's entry point in-process (``cli.main``); the one whose point is the real
process (its exit code after ``sys.exit`` in an environment) runs it in a subprocess.
"""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_line, assert_user_error, run_main, seeded
from reliability_helpers import cli, tree_digest, with_pythonpath

ENVS = textwrap.dedent('''
    """Environments of tests/test_env_inputs.py, importable as ``pgx_envinputs:<Name>-v0``."""
    import os
    import sys

    import gymnasium as gym
    import numpy as np
    from gymnasium.envs.registration import register

    if os.environ.get("PGX_TEST_CAP"):  # subprocesses of the tests: a small default step cap
        import policygradex.tasks.base as _base

        _base.DEFAULT_MAX_EPISODE_STEPS = int(os.environ["PGX_TEST_CAP"])


    class Env(gym.Env):
        """A walk on a line: deterministic given the seed and the actions, ends after 20 steps
        (``mode="forever"``: never) or misbehaves as ``mode`` says."""

        action_space = gym.spaces.Discrete(2)

        def __init__(self, mode=None):
            self.mode, self.t, self.x = mode, 0, 0.0
            self.dim = int(os.environ.get("PGX_TEST_OBS_DIM", "4"))  # a changed environment: another width
            self.observation_space = gym.spaces.Box(-1, 1, (self.dim,), np.float32)

        def _obs(self):
            obs = np.zeros(self.dim, np.float32)
            obs[0], obs[1] = np.tanh(self.x), min(self.t, 1000) / 1000
            return obs

        def _move(self, action):
            a = np.asarray(action, dtype=np.float64).reshape(-1)
            return float(np.sum(a)) if self.action_space.shape != () else (1.0 if int(a[0]) else -1.0)

        def reset(self, seed=None, options=None):
            super().reset(seed=seed)
            self.t, self.x = 0, float(self.np_random.uniform(-0.1, 0.1))
            if self.mode == "exit_reset":
                sys.exit(3)
            return self._obs(), {}

        def step(self, action):
            self.t += 1
            self.x += 0.05 * self._move(action)
            if self.mode == "exit_step" and self.t >= 3:
                sys.exit(3)
            reward = "1.5" if self.mode == "str_reward" and self.t >= 3 else 1.0
            return self._obs(), reward, self.mode != "forever" and self.t >= 20, False, {}

        def close(self):
            if self.mode == "bad_close":
                raise RuntimeError("boom in close")


    class BoxEnv(Env):
        def __init__(self, mode=None):
            super().__init__(mode)
            self.action_space = gym.spaces.Box(-1, 1, (2,), np.float32)


    class OneAction(Env):
        action_space = gym.spaces.Discrete(1)


    class OldApi(gym.Env):
        """The old gym API: reset() without seed returns the observation alone, step four values."""

        observation_space = gym.spaces.Box(-1, 1, (4,), np.float32)
        action_space = gym.spaces.Discrete(2)

        def reset(self):
            return np.zeros(4, np.float32)

        def step(self, action):
            return np.zeros(4, np.float32), 1.0, False, {}


    class OldStep(OldApi):
        def reset(self, seed=None, options=None):
            return np.zeros(4, np.float32), {}


    for _name, _mode in [("Good", None), ("Forever", "forever"), ("ExitStep", "exit_step"), ("ExitReset", "exit_reset"),
                         ("StrReward", "str_reward"), ("BadClose", "bad_close")]:
        register(id=f"{_name}-v0", entry_point=Env, kwargs={"mode": _mode})
    register(id="ForeverBox-v0", entry_point=BoxEnv, kwargs={"mode": "forever"})
    register(id="OneAction-v0", entry_point=OneAction)
    register(id="OldApi-v0", entry_point=OldApi)
    register(id="OldStep-v0", entry_point=OldStep)
''')


def suite_of(name: str) -> str:
    return f"env:pgx_envinputs:{name}-v0"


@pytest.fixture(scope="module")
def envs(tmp_path_factory):
    """The directory of ``pgx_envinputs.py``, also on this process's sys.path."""
    d = tmp_path_factory.mktemp("envinputs")
    (d / "pgx_envinputs.py").write_text(ENVS)
    sys.path.insert(0, str(d))
    yield d
    sys.path.remove(str(d))


@pytest.fixture(scope="module")
def finished(envs, tmp_path_factory):
    """A finished ``train`` run of the never-ending environment (tiny budget, default cap
    lowered for its closing evaluation): (run directory, its files and their bytes)."""
    import policygradex.tasks.base as base

    out = tmp_path_factory.mktemp("runs") / "finished"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(base, "DEFAULT_MAX_EPISODE_STEPS", 30)
        code, err = run_main("train", "--suite", suite_of("Forever"), "--steps", "256", "--envs-per-task", "2",
                         "--checkpoint-every", "1", "--eval-episodes", "1", "--seed", str(seeded(0)), "--out", str(out))
    assert code == 0, err
    return out, tree_digest(out, skip=(".lock",))


def newest_checkpoint(run: Path) -> Path:
    return sorted((run / "checkpoints").glob("step_*.pt"))[-1]


# --- environments that misbehave: one line, exit 2, the finished run next to it untouched ---------


def test_sys_exit_inside_step_is_one_line_exit_2_naming_task_and_call(envs, finished):
    run, files = finished
    proc = cli("train", "--suite", suite_of("ExitStep"), "--steps", "256", "--envs-per-task", "2",
               "--out", str(run.parent / "exit_step"), env=with_pythonpath(envs))
    assert_user_error(proc, "task 'pgx_envinputs:ExitStep-v0'", "step called sys.exit(3)", "not exit the process")
    assert tree_digest(run, skip=(".lock",)) == files


def test_old_gym_api_is_our_line_only_without_gymnasium_warnings(envs, finished):
    """gymnasium's passive checker warned, in several lines, before our line; no warning is issued
    now (recorded here whatever the filters), so the CLI's stderr holds our line alone."""
    import warnings

    run, files = finished
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, err = run_main("train", "--suite", suite_of("OldApi"), "--steps", "256", "--out", str(run.parent / "old_api"))
    assert_one_line(code, err, "task 'pgx_envinputs:OldApi-v0'", "reset does not accept seed", "old gym API")
    assert not [w for w in caught if "gymnasium" in (w.filename or "")], [str(w.message) for w in caught]
    assert tree_digest(run, skip=(".lock",)) == files


@pytest.mark.parametrize("env_name, needles", [
    ("ExitReset", ["task 'pgx_envinputs:ExitReset-v0'", "reset called sys.exit(3)"]),
    ("StrReward", ["task 'pgx_envinputs:StrReward-v0'", "step returned a reward that is not a real number", "str '1.5'"]),
    ("OneAction", ["task 'pgx_envinputs:OneAction-v0'", "Discrete(1)", "no policy to learn", "n >= 2"]),
    ("OldStep", ["task 'pgx_envinputs:OldStep-v0'", "step did not return 5 values", "old gym API"]),
])
def test_misbehaving_environment_is_one_line(envs, finished, env_name, needles):
    run, files = finished
    code, err = run_main("train", "--suite", suite_of(env_name), "--steps", "256", "--envs-per-task", "2",
                     "--out", str(run.parent / env_name.lower()))
    assert_one_line(code, err, *needles)
    assert tree_digest(run, skip=(".lock",)) == files


def test_env_whose_close_raises_still_gives_a_working_run(envs, tmp_path):
    out = tmp_path / "bad_close"
    code, err = run_main("train", "--suite", suite_of("BadClose"), "--steps", "256", "--envs-per-task", "2",
                     "--checkpoint-every", "1", "--eval-episodes", "1", "--out", str(out))
    assert code == 0 and "Traceback" not in err, err
    assert json.loads((out / "train_history.json").read_text())
    code, err = run_main("evaluate", str(newest_checkpoint(out)), "--episodes", "2", "--json")
    assert code == 0 and not err.strip(), err


# --- evaluate: what it is given --------------------------------------------------------------------


def test_evaluate_a_json_artifact_says_it_is_not_a_checkpoint(finished, tmp_path):
    run, _ = finished
    groups = tmp_path / "groups.json"
    groups.write_text(json.dumps({"k": 2, "groups": [["a"], ["b"]]}))
    for path in (groups, run / "train_history.json"):
        code, err = run_main("evaluate", str(path))
        assert_one_line(code, err, str(path), "is not a policygradex checkpoint", "JSON file", "step_*.pt")
        assert "delete" not in err
        assert path.exists()


@pytest.mark.parametrize("seed", ["-1", "4294967296"])
def test_evaluate_seed_out_of_range_is_an_option_error(finished, seed):
    run, _ = finished
    code, err = run_main("evaluate", str(newest_checkpoint(run)), "--seed", seed)
    assert_one_line(code, err, "--seed", "between 0 and 4294967295", f"got {seed}")
    assert "reset" not in err


def test_evaluate_a_checkpoint_whose_environment_changed_its_spaces(finished, monkeypatch):
    run, _ = finished
    ckpt = newest_checkpoint(run)
    monkeypatch.setenv("PGX_TEST_OBS_DIM", "5")
    code, err = run_main("evaluate", str(ckpt))
    assert_one_line(code, err, f"checkpoint {ckpt}", "task 'pgx_envinputs:Forever-v0'", "(4,)", "(5,)",
                    "environment changed since training")


# --- step cap: a never-ending environment -----------------------------------------------------------


def test_evaluate_caps_a_never_ending_episode(finished, monkeypatch):
    import policygradex.tasks.base as base

    run, _ = finished
    monkeypatch.setattr(base, "DEFAULT_MAX_EPISODE_STEPS", 40)
    from policygradex.rl.checkpoint import load_checkpoint
    from policygradex.rl.evaluate import evaluate_policy

    model, suite, _, _ = load_checkpoint(newest_checkpoint(run))
    for deterministic in (True, False):
        ev = evaluate_policy(model, suite, episodes=3, deterministic=deterministic)
        assert ev[suite.names[0]]["returns"] == [40.0] * 3  # reward 1 per step, cut at the cap
    code, err = run_main("evaluate", str(newest_checkpoint(run)), "--episodes", "2", "--json")  # the CLI: no hang
    assert code == 0 and not err.strip(), err


def test_collection_caps_a_never_ending_episode_as_a_truncation(envs, monkeypatch):
    import policygradex.tasks.base as base
    from policygradex.config import PPOConfig
    from policygradex.estimate.collect import collect
    from policygradex.rl.checkpoint import build_model
    from policygradex.rl.rollout import MultiTaskEnv, RolloutCollector
    from policygradex.tasks import load_suite
    import torch

    monkeypatch.setattr(base, "DEFAULT_MAX_EPISODE_STEPS", 25)
    suite = load_suite(suite_of("Forever"))
    cfg = PPOConfig()
    model = build_model(suite, cfg).eval()
    env = MultiTaskEnv(suite, 2, seed=0)
    ro = RolloutCollector(env, torch.Generator().manual_seed(0)).collect(model, 60)
    env.close()
    ends = torch.nonzero(ro.dones[:, 0]).flatten().tolist()
    assert ends == [24, 49]  # every 25 steps, in every environment
    assert bool(ro.dones[24].all()) and not bool(ro.terminated.any())  # a truncation: bootstrapped, not terminal
    assert ro.episode_returns == [[25.0] * 4]
    c = collect(model, suite, cfg, 120, 2, 0.5, seed=0)
    assert c.episode_returns == [[25.0] * 4] and c.adv.shape == (120,)


def test_default_cap_applies_only_without_a_limit_of_its_own(envs):
    from policygradex.tasks.base import DEFAULT_MAX_EPISODE_STEPS, Task

    assert DEFAULT_MAX_EPISODE_STEPS == 10_000
    caps = {}
    for task in (Task(name="a", env_id="pgx_envinputs:Forever-v0"), Task(name="b", env_id="CartPole-v1"),
                 Task(name="c", env_id="pgx_envinputs:Forever-v0", max_episode_steps=7)):
        env = task.make()
        caps[task.name] = env.spec.max_episode_steps
        env.close()
    assert caps == {"a": 10_000, "b": 500, "c": 7}


# --- checkpoint bytes on resume ------------------------------------------------------------------------


@pytest.mark.trains
@pytest.mark.parametrize("env_name", ["Forever", "ForeverBox"])
def test_resumed_training_writes_byte_identical_checkpoints_while_an_episode_spans_them(envs, tmp_path, env_name):
    """The episodes never end within the budget, so every checkpoint holds the actions of an
    episode that started before it; the checkpoints written after resuming hold actions replayed
    from the checkpoint.  Every file must be byte-identical to training that never stopped."""
    from policygradex.config import PPOConfig
    from policygradex.rl.checkpoint import list_checkpoints
    from policygradex.rl.ppo import train
    from policygradex.tasks import load_suite

    suite = load_suite(suite_of(env_name))
    cfg = PPOConfig(total_steps=512, envs_per_task=2, num_steps=32, minibatch_size=64, update_epochs=1,
                    checkpoint_every=2, seed=seeded(1))
    train(suite, cfg, tmp_path / "full")
    ref = list_checkpoints(tmp_path / "full" / "checkpoints")
    assert len(ref) == 4
    part = tmp_path / "part"
    (part / "checkpoints").mkdir(parents=True)
    for p in ref[:2]:  # killed after the second checkpoint
        shutil.copy(p, part / "checkpoints" / p.name)
    train(suite, cfg, part)
    got = list_checkpoints(part / "checkpoints")
    assert [p.name for p in got] == [p.name for p in ref]
    for a, b in zip(got, ref):
        assert a.read_bytes() == b.read_bytes(), a.name
    assert (part / "train_history.json").read_bytes() == (tmp_path / "full" / "train_history.json").read_bytes()


def test_checkpoint_arrays_are_saved_with_canonical_dtypes():
    """Arrays that came back from a pickle carry their own dtype object; saved, they pickle as
    arrays made here do (the cause of resumed checkpoints differing in bytes)."""
    import pickle

    from policygradex.rl.checkpoint import canonical

    fresh = [np.array(1), np.array(2)]
    loaded = pickle.loads(pickle.dumps(fresh))
    assert loaded[0].dtype is not np.dtype("int64")
    assert pickle.dumps(canonical({"a": (loaded, 3)})) == pickle.dumps(canonical({"a": (fresh, 3)}))
