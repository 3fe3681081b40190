"""Divergence and numeric extremes are one-line user errors (issue 15): PPO, SAC, fine-tuning,
compare's group training and meta-RL stop at the update where a loss, gradient or parameter
stops being finite and name the update, the quantity and the option to change; rewards near
float32's maximum name their task; a surrogate without advantage signal and a grouping SDP that
no solver can solve say what to change; a huge price per group is solved in closed form.

Nothing here depends on one seed's training outcome: the divergences are forced (a step size
whose first Adam step moves every weight by 1e30, rewards whose returns overflow float32), so
they happen at the first update on any CPU.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import textwrap
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from conftest import assert_one_line, assert_user_error, run_main, seeded
from policygradex.config import NetConfig, PPOConfig, SACConfig
from policygradex.errors import UserError
from policygradex.rl.checkpoint import list_checkpoints, read_checkpoint
from policygradex.rl.finite import Divergence
from reliability_helpers import cli as cli_env
from reliability_helpers import reference_run, tiny_run_args, tree_digest, with_pythonpath

# Two tasks sharing spaces: "calm" rewards 1 per step, "huge" 3e38 (float32's max is 3.4e38), so
# the discounted returns of "huge" overflow to inf; "HugeLater" only after 150 steps of an
# environment copy, i.e. in PPO update 3 with 2 copies x 64 steps per update.
BIG_REWARD_ENVS = textwrap.dedent('''
    import gymnasium as gym
    import numpy as np
    from gymnasium.envs.registration import register


    class Env(gym.Env):
        observation_space = gym.spaces.Box(-1, 1, (3,), np.float32)
        action_space = gym.spaces.Discrete(2)

        def __init__(self, reward=1.0, after=0):
            self.reward, self.after, self.t, self.total = reward, after, 0, 0

        def reset(self, seed=None, options=None):
            super().reset(seed=seed)
            self.t = 0
            return self.np_random.uniform(-1, 1, 3).astype(np.float32), {}

        def step(self, action):
            self.t += 1
            self.total += 1
            reward = self.reward if self.total > self.after else 1.0
            return self.np_random.uniform(-1, 1, 3).astype(np.float32), reward, False, self.t >= 10, {}


    register(id="Calm-v0", entry_point=Env)
    register(id="Huge-v0", entry_point=Env, kwargs={"reward": 3e38})
    register(id="HugeLater-v0", entry_point=Env, kwargs={"reward": 3e38, "after": 150})
''')


def big_suite(huge: str) -> str:
    return textwrap.dedent(f'''
        name = "big"
        [ppo]
        envs_per_task = 2
        num_steps = 64
        minibatch_size = 64
        update_epochs = 1
        checkpoint_every = 1
        [[tasks]]
        name = "calm"
        env_id = "pgx_bigreward:Calm-v0"
        [[tasks]]
        name = "huge"
        env_id = "pgx_bigreward:{huge}"
    ''')


TINY = dict(total_steps=512, envs_per_task=2, num_steps=64, minibatch_size=64, update_epochs=1, checkpoint_every=1,
            net=NetConfig(hidden=(16, 16)))


@pytest.fixture(scope="module")
def helpers(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("divergence-helpers")
    (d / "pgx_bigreward.py").write_text(BIG_REWARD_ENVS)
    (d / "big.toml").write_text(big_suite("Huge-v0"))
    (d / "big_later.toml").write_text(big_suite("HugeLater-v0"))
    sys.path.insert(0, str(d))
    yield d
    sys.path.remove(str(d))


def _finished_setup():
    """The suite and config of the ``finished`` run (seeds shifted with the test seed offset)."""
    from policygradex.tasks import load_suite

    return load_suite("cartpole", 2, seeded(0)), PPOConfig(**{**TINY, "seed": seeded(0)})


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A finished tiny training run, next to which the failing commands write."""
    from policygradex.rl.ppo import train

    root = tmp_path_factory.mktemp("divergence-runs")
    train(*_finished_setup(), root / "finished")
    return root, tree_digest(root / "finished")


def assert_untouched(finished) -> None:
    root, digest = finished
    assert tree_digest(root / "finished") == digest


# ----------------------------------------------------------------------------------- the CLI


def test_rewards_near_float32_max_name_the_task(helpers, finished):
    """Through the real CLI in a subprocess: the returns of task 'huge' overflow at update 1."""
    out = finished[0] / "new-big"
    proc = cli_env("train", "--suite", str(helpers / "big.toml"), "--steps", "512", "--out", str(out),
                   env=with_pythonpath(helpers), timeout=300)
    assert_user_error(proc, "PPO update 1/", "task 'huge'", "overflow", "rewards are too large", "TransformReward")
    assert not list_checkpoints(out / "checkpoints")
    assert_untouched(finished)


@pytest.mark.trains
def test_a_later_divergence_keeps_the_checkpoints_written_before(helpers, tmp_path):
    """Task 'huge' overflows only from update 3 on: updates 1 and 2 are checkpointed, stay whole
    and finite, and a rerun resumes from them (diverging again later) without rewriting them."""
    out = tmp_path / "later"
    argv = ["train", "--suite", str(helpers / "big_later.toml"), "--steps", "2048", "--out", str(out)]
    assert_one_line(*run_main(*argv), "PPO update 3/8", "task 'huge'", "rewards are too large")
    ckpts = list_checkpoints(out / "checkpoints")
    assert [p.name for p in ckpts] == ["step_000000256.pt", "step_000000512.pt"]
    for p in ckpts:
        state = read_checkpoint(p)["model"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert [h["update"] for h in json.loads((out / "train_history.json").read_text())] == [1, 2]
    before = {p.name: p.read_bytes() for p in ckpts}
    assert_one_line(*run_main(*argv), "task 'huge'", "rewards are too large")
    for name, data in before.items():
        assert (out / "checkpoints" / name).read_bytes() == data


def test_resume_skips_a_checkpoint_with_non_finite_weights(finished, tmp_path):
    """A checkpoint holding NaN weights (written before divergence was an error) is not resumed
    from: training restarts from the newest checkpoint before it."""
    from policygradex.artifacts import content_digest, save_torch
    from policygradex.rl.ppo import _resume_point

    run = tmp_path / "poisoned"
    shutil.copytree(finished[0] / "finished", run)
    ckpts = list_checkpoints(run / "checkpoints")
    assert len(ckpts) >= 2
    ckpt = read_checkpoint(ckpts[-1])
    next(v for v in ckpt["model"].values() if v.is_floating_point()).fill_(float("nan"))
    body = {k: v for k, v in ckpt.items() if k != "digest"}
    save_torch(ckpts[-1], {**body, "digest": content_digest(body)})
    suite, cfg = _finished_setup()
    good, history = _resume_point(run, cfg, suite)
    assert good is not None and good["update"] == len(ckpts) - 1 and len(history) == len(ckpts) - 1


# ------------------------------------------------------------------- every PPO training path


def _ppo_path(kind: str, tmp_path: Path):
    from policygradex.compare.pcgrad import PCGrad
    from policygradex.compare.train import train_group
    from policygradex.rl.checkpoint import build_model
    from policygradex.rl.ppo import finetune, train
    from policygradex.tasks import load_suite

    suite = load_suite("cartpole", 2)
    bad = PPOConfig(**TINY).model_copy(update={"learning_rate": 1e30})  # past the config's bound, as a Python caller may
    if kind == "train":
        return lambda: train(suite, bad, tmp_path / "t"), r"PPO update 1/\d+ of the meta-policy on all 2 tasks of 'cartpole'"
    if kind == "finetune":
        model = build_model(suite, PPOConfig(**TINY))
        return (lambda: finetune(model, suite, [1], bad, 256, 3),
                rf"PPO update 1/\d+ of fine-tuning on task {suite.names[1]!r} \(seed 3\)")
    return (lambda: train_group(suite, [0, 1], bad, 256, 5, grad_surgery=PCGrad(0)),
            r"PPO update 1/\d+ of the policy for all 2 tasks of 'cartpole' \(seed 5\)")


@pytest.mark.parametrize("kind", ["train", "finetune", "pcgrad_group"])
def test_ppo_divergence_names_update_quantity_and_option(kind, tmp_path):
    call, where = _ppo_path(kind, tmp_path)
    with pytest.raises(Divergence) as info:
        call()
    msg = str(info.value)
    assert re.fullmatch(where + r": the [a-z' ]+ is (NaN|inf|-inf); lower .*learning_rate \(now 1e\+30\).*", msg), msg
    assert not list_checkpoints(tmp_path / "t" / "checkpoints")


@pytest.mark.parametrize("field, needle", [("learning_rate", "the optimizer step overflows float32 (the parameters' type); "
                                                              "lower [ppo] learning_rate (now 1e+300)"),
                                           ("clip_coef", "[ppo] clip_coef (now 1e+300) overflows float32")])
def test_ppo_options_beyond_float32_name_the_option(field, needle, tmp_path):
    """Values past float32's range (which the config refuses, but a Python caller may pass)."""
    from policygradex.rl.ppo import train
    from policygradex.tasks import load_suite

    with pytest.raises(Divergence) as info:
        train(load_suite("cartpole", 2), PPOConfig(**TINY).model_copy(update={field: 1e300}), tmp_path)
    assert str(info.value).startswith(f"PPO update 1/2 of the meta-policy on all 2 tasks of 'cartpole': {needle}")
    assert not list_checkpoints(tmp_path / "checkpoints")


def test_meta_adaptation_divergence_names_the_step_and_inner_lr():
    from policygradex.compare.meta import _TaskStream, adapt_step, blind_suite
    from policygradex.rl.checkpoint import build_model
    from policygradex.tasks import load_suite

    task = load_suite("cartpole", 1).tasks[0]
    ppo = PPOConfig(**TINY)
    stream = _TaskStream(task, 2, 0)
    model = build_model(blind_suite(task), ppo)
    ro = stream.rollout(model, 32)
    stream.close()
    with pytest.raises(Divergence, match=r"^adaptation step 1/1 on task '.+': the largest parameter after the step is "
                                         r"(inf|NaN); lower --inner-lr \(now 1e\+300\)$"):
        adapt_step(model, ro, ppo, 1e300, f"adaptation step 1/1 on task {task.name!r}", [task.name])


# ---------------------------------------------------------------------------------------- SAC


@pytest.mark.parametrize("field, value", [("critic_lr", 1e30), ("actor_lr", 1e300)])
def test_sac_divergence_names_update_quantity_and_option(field, value, tmp_path):
    from policygradex.rl.sac import train
    from policygradex.tasks import load_suite

    cfg = SACConfig(total_steps=64, learning_starts=16, batch_size=16, checkpoint_every=32,
                    net=NetConfig(hidden=(16, 16), activation="relu")).model_copy(update={field: value})
    with pytest.raises(Divergence) as info:
        train(load_suite("env:Pendulum-v1"), cfg, tmp_path)
    msg = str(info.value)
    assert re.fullmatch(r"SAC update 1 \(environment step 16 of 64\) of the meta-policy on task 'Pendulum-v1': "
                        r"the .+ (is (NaN|inf|-inf)|overflows float32 .*); lower .*" + re.escape(f"{field} (now {value!r})") + ".*",
                        msg), msg
    assert not list_checkpoints(tmp_path / "checkpoints")


# --------------------------------------------------------------------- no advantage signal


def test_choose_lambda_without_advantage_signal_is_a_one_line_user_error():
    from policygradex.estimate.surrogate import NoAdvantageSignal, choose_lambda

    rng = np.random.default_rng(0)
    N, d = 400, 6
    G = torch.tensor(rng.normal(size=(N, d)))
    members = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1], [1, 0, 0, 1]], dtype=torch.bool)
    with pytest.raises(NoAdvantageSignal) as info:
        choose_lambda(G, torch.ones(N, dtype=torch.float64), torch.zeros(N, dtype=torch.float64), torch.arange(N) % 4, members,
                      None, torch.eye(d), 1.0)
    err, msg = info.value, str(info.value)
    assert isinstance(err, UserError) and isinstance(err, ValueError)  # one CLI line; ValueError as before
    assert "\n" not in msg and "advantage signal is zero on every task" in msg
    for needle in ("--target-delta", "--steps", "--checkpoint"):
        assert needle in msg


# ---------------------------------------------------------------------- the grouping SDP


def _affinity(n: int = 6) -> np.ndarray:
    a = np.random.default_rng(0).normal(size=(n, n))
    return (a + a.T) / 2


def test_a_huge_price_per_group_is_one_group_in_closed_form():
    from policygradex.group.sdp import _solve_sdp, group_tasks, one_group_penalty

    U = _affinity()
    for penalty in (1e300, 1e308, 1.01 * one_group_penalty(U)):
        g = group_tasks(U, penalty=penalty)
        assert g.groups == [list(range(6))] and g.solver == "none" and np.isfinite(g.objective) and g.gap == 0.0
    # the bound is the exact threshold: a solver agrees just above it and finds more than one group just below
    assert np.trace(_solve_sdp(U, None, 1.01 * one_group_penalty(U), "clarabel")[0]) == pytest.approx(1.0, abs=1e-4)
    assert np.trace(_solve_sdp(U, None, 0.9 * one_group_penalty(U), "clarabel")[0]) > 1.1
    # tiny penalties and extreme scales of U reach the solver and give the same partition as U itself
    assert group_tasks(U, penalty_scale=1e-300).groups == group_tasks(U, penalty=0.0).groups
    for scale in (1e300, 1e-300):
        assert group_tasks(scale * U, k=3).groups == group_tasks(U, k=3).groups


class PanicException(BaseException):
    """What pyo3 raises for a Rust panic (Clarabel): a BaseException, not an Exception."""


def test_solver_panics_fall_back_then_explain():
    import cvxpy as cp

    from policygradex.group.sdp import GroupingSolverError, group_tasks

    U = _affinity()
    solve = cp.Problem.solve

    def clarabel_panics(self, *args, solver=None, **kwargs):
        if solver == cp.CLARABEL:
            raise PanicException("Eigval error: Eigen(1)")
        return solve(self, *args, solver=solver, **kwargs)

    with mock.patch.object(cp.Problem, "solve", clarabel_panics):
        assert group_tasks(U, penalty=0.5).solver == "scs"
    with mock.patch.object(cp.Problem, "solve", side_effect=PanicException("Eigval error: Eigen(1)")):
        with pytest.raises(GroupingSolverError) as info:
            group_tasks(U, penalty=0.5)
    msg = str(info.value)
    assert isinstance(info.value, UserError) and "\n" not in msg
    assert "[group] penalty" in msg and "clarabel: Eigval error" in msg and "every task in one group" in msg
    with mock.patch.object(cp.Problem, "solve", side_effect=KeyboardInterrupt):  # Ctrl-C is not a solver failure
        with pytest.raises(KeyboardInterrupt):
            group_tasks(U, penalty=0.5)


def test_a_real_solver_panic_prints_nothing(capfd):
    """Clarabel panics (Rust) on an unscaled price of 1e300; its message and backtrace, printed
    to file descriptor 2, do not reach the terminal, and the failure is an ordinary exception."""
    from policygradex.group.sdp import _solve_sdp

    capfd.readouterr()
    # group_tasks never sends such a price to a solver (closed form); _solve_sdp does as told
    with pytest.raises(RuntimeError, match="clarabel: .*scs: "):
        _solve_sdp(_affinity(), None, 1e300, "clarabel")
    out = capfd.readouterr()
    assert out.err == "" and out.out == ""


@pytest.mark.trains
def test_cli_extreme_price_per_group_and_unsolvable_sdp(tmp_path):
    """On a copy of a finished run: ``[group] penalty = 1e300`` regroups in closed form (one group,
    finite numbers in groups.json); with both solvers panicking, ``--k 2`` is one line.  The
    finished run next to it is untouched."""
    import cvxpy as cp

    from reliability_helpers import TINY_CONFIG

    ref, _ = reference_run()
    digest = tree_digest(ref)
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    config = tmp_path / "penalty.toml"
    config.write_text(TINY_CONFIG + "penalty = 1e300\n")  # [group] is the last table
    code, err = run_main(*tiny_run_args(run, config))
    assert code == 0, err
    groups = json.loads((run / "groups.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in groups.json"))
    assert groups["k"] == 1 and groups["solver"] == "none" and groups["penalty"] == 1e300
    with mock.patch.object(cp.Problem, "solve", side_effect=PanicException("Eigval error: Eigen(1)")):
        code, err = run_main(*tiny_run_args(run, _tiny(tmp_path)), "--k", "2")
    assert_one_line(code, err, "could not be solved", "k = 2", "--k")
    assert tree_digest(ref) == digest


def _tiny(tmp_path: Path) -> Path:
    from reliability_helpers import TINY_CONFIG

    path = tmp_path / "tiny.toml"
    path.write_text(TINY_CONFIG)
    return path


@pytest.mark.parametrize("suite_name", ["cartpole", "env:Pendulum-v1"])
def test_a_policy_with_non_finite_outputs_is_named_where_it_acts(suite_name):
    """Any collection (PPO iterations, theta*'s rollouts, meta-RL streams) goes through
    RolloutCollector.collect: NaN weights make torch's distributions refuse the outputs, which
    is one line naming the caller's label and advice, not torch's error with a tensor dump."""
    from policygradex.rl.checkpoint import build_model
    from policygradex.rl.rollout import MultiTaskEnv, RolloutCollector
    from policygradex.tasks import load_suite

    suite = load_suite(suite_name, 2 if suite_name == "cartpole" else None, 0)
    model = build_model(suite, PPOConfig(envs_per_task=1))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    env = MultiTaskEnv(suite, 1, 0)
    try:
        with pytest.raises(Divergence, match=r"^PPO update 7/9: the policy's outputs are NaN or inf; lower it") as info:
            RolloutCollector(env, torch.Generator().manual_seed(0)).collect(model, 4, label="PPO update 7/9", advice="lower it")
    finally:
        env.close()
    assert "\n" not in str(info.value) and "tensor" not in str(info.value)
