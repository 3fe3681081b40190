"""Meta-RL on held-out tasks (compare/meta.py): held-out task draws, the group-selection rule,
first-order MAML + adaptation improving a held-out CartPole task, budget fairness of the meta
methods through `policygradex compare`.  Tiny budgets, fixed seeds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from conftest import assert_user_error, run_cli, seeded
from policygradex.compare import meta
from policygradex.config import CompareConfig, PPOConfig
from policygradex.errors import UserError
from policygradex.tasks import load_suite

# the run trains: its seeds shift with POLICYGRADEX_TEST_SEED_OFFSET
RUN_ARGS = ["--replicates", "1", "--theta-window", "1", "--suite", "cartpole", "--tasks", "4", "--seed", str(seeded(0)), "--suite-seed", str(seeded(0)), "--steps", "2048",
            "--transitions", "256", "--null-permutations", "10", "--k", "2"]
META = "meta-maml,meta-policygradex,meta-multitask"


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _ppo(suite) -> PPOConfig:
    return PPOConfig.model_validate({**suite.ppo_preset, "total_steps": 1000})


# ----------------------------------------------------------------------------- held-out tasks


def test_heldout_tasks_differ_from_training_and_are_reproducible():
    train = load_suite("cartpole", 10, 0)
    a = meta.heldout_suite(train, 50)
    b = meta.heldout_suite(load_suite("cartpole", 10, 0), 50)
    assert a.n == 50 and a.params == b.params and a.names == b.names
    assert not set(a.names) & set(train.names)
    train_params = {tuple(sorted(p.items())) for p in train.params}
    assert not any(tuple(sorted(p.items())) in train_params for p in a.params)
    # same ranges as the training family
    for p in a.params:
        assert 0.25 <= p["length"] <= 1.0 and 0.05 <= p["masspole"] <= 0.5
        assert 5 <= p["gravity"] <= 15 and 5 <= p["force_mag"] <= 15
    # another suite seed: other held-out tasks; the number of training tasks does not matter
    assert meta.heldout_suite(load_suite("cartpole", 10, 1), 50).params != a.params
    assert meta.heldout_suite(load_suite("cartpole", 4, 0), 50).params == a.params
    with pytest.raises(UserError, match="continuous parameters"):
        meta.heldout_suite(load_suite("env:CartPole-v1"), 5)


# ----------------------------------------------------------------------------- selection rule


def _constant_policy(task, ppo, logits) -> torch.nn.Module:
    """A hand-made policy: the actor's output layer zeroed, its bias = ``logits``."""
    m = meta.build_model(meta.blind_suite(task), ppo)
    last = [x for x in m.actor.modules() if isinstance(x, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor(logits, dtype=torch.float32))
    return m


def test_select_group_rule():
    assert meta.select_group([3.0, 9.0, 1.0]) == 1
    assert meta.select_group([5.0, 5.0, 2.0]) == 0  # ties: the lowest group index
    assert meta.select_group([-2.0]) == 0


def test_heldout_task_adapts_the_group_policy_with_the_best_probe_return():
    suite = load_suite("cartpole", 4, 0)
    ppo = _ppo(suite)
    test = meta.heldout_suite(suite, 3)
    # always-left and always-right fall over in ~10 steps; the uniform random policy lasts ~20
    stubs = [_constant_policy(test.tasks[0], ppo, v) for v in ([20.0, -20.0], [0.0, 0.0], [-20.0, 20.0])]
    cfg = CompareConfig(adapt_steps=0, probe_episodes=4, episodes=2)
    out = meta.adapt_heldout(stubs, test, ppo, cfg, seed=0)
    for name, r in out.items():
        assert r["group"] == 1 == int(np.argmax(r["probe_means"])), (name, r["probe_means"])
        assert r["probe_episodes"] == 3 * 4
        assert r["mean"] == r["before_adaptation"]  # no adaptation steps: the chosen initialization itself


# ----------------------------------------------------------------------------- FOMAML improves a held-out task


@pytest.mark.trains
def test_fomaml_then_adaptation_improves_a_heldout_cartpole_task():
    """Robust for any seed and CPU: the held-out tasks are fixed (suite seed 0: pushes of force 11
    and 8.5, learnable in a few steps), the training, adaptation and evaluation seeds shift with
    POLICYGRADEX_TEST_SEED_OFFSET.  With 20 adaptation steps and 20 evaluation episodes the
    improvement was >= 25 (median 45) at each of 16 seeds measured (offsets 0-7, 100, 200, 300,
    1000-5000; AMD EPYC), five times the 5 asserted.  The earlier budget (10 steps, 10 episodes)
    gave +1 at one seed; held-out tasks of other suite seeds with weak pushes (force 5-7) gain
    only ~4 in 20 steps, which is why the suite seed is not shifted."""
    suite = load_suite("cartpole", 4, 0)
    ppo = _ppo(suite)
    cfg = CompareConfig(steps_per_task=512, inner_steps=1, inner_lr=0.3, adapt_steps=20, episodes=20, n_test=2,
                        eval_seed=seeded(12345))
    init, steps = meta.fomaml(suite.tasks[:2], ppo, cfg, seed=seeded(0))
    # 1 meta-iteration: 1 inner rollout + 1 outer rollout of 4 x 64 per task
    assert steps == {suite.names[0]: 512, suite.names[1]: 512}
    test = meta.heldout_suite(suite, 2)
    out = meta.adapt_heldout([init], test, ppo, cfg, seed=seeded(0))
    before = np.mean([r["before_adaptation"] for r in out.values()])
    after = np.mean([r["mean"] for r in out.values()])
    assert all(r["adapt_env_steps"] == 20 * 4 * 64 for r in out.values())
    assert after > before + 5, (before, after)


# ----------------------------------------------------------------------------- compare: rows, budget fairness, errors


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("meta") / "out"
    proc = run_cli("compare", *RUN_ARGS, "--methods", META, "--seeds", "2", "--steps-per-task", "512", "--episodes", "2",
                   "--n-test", "3", "--adapt-steps", "2", "--probe-episodes", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads((out / "comparison.json").read_text())


@pytest.mark.trains
def test_meta_methods_rows_and_equal_budgets(tiny):
    out, r = tiny
    assert r["methods_order"] == META.split(",")
    test_names = [f"test-cartpole-{i:02d}" for i in range(3)]
    steps = None
    for name in r["methods_order"]:
        e = r["methods"][name]
        assert e["kind"] == "meta_rl" and len(e["per_seed_mean"]) == 2 and e["ci95_halfwidth"] is not None
        assert list(e["per_task"]) == test_names
        # every training task gets the same environment steps under every meta method
        assert set(e["env_steps_per_task"].values()) == {512}
        steps = steps or e["env_steps_per_task"]
        assert e["env_steps_per_task"] == steps
        for s in range(2):
            u = json.loads((out / "compare" / name / f"seed_{s}" / "result.json").read_text())
            assert u["test"]["adapt_env_steps_per_task"] == 2 * 4 * 64
            assert u["test"]["probe_episodes"] == (1 if name == "meta-policygradex" else 0)
            assert sum(u["test"]["chosen_group_counts"]) == 3
    assert r["budget"]["equal_across_methods"] is True
    assert len(r["methods"]["meta-policygradex"]["groups"][0]) == 2
    assert (out / "comparison.csv").is_file() and (out / "comparison.png").is_file()


@pytest.mark.trains
def test_meta_units_are_cached(tiny):
    out, _ = tiny
    before = {p: p.stat().st_mtime_ns for p in (out / "compare").rglob("result.json")}
    assert len(before) == 6
    proc = run_cli("compare", *RUN_ARGS, "--methods", META, "--seeds", "2", "--steps-per-task", "512", "--episodes", "2",
                   "--n-test", "3", "--adapt-steps", "2", "--probe-episodes", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in (out / "compare").rglob("result.json")} == before


def test_meta_user_errors(tmp_path):
    toml = tmp_path / "two.toml"
    toml.write_text('[[tasks]]\nname = "a"\nenv_id = "CartPole-v1"\n\n[[tasks]]\nname = "b"\nenv_id = "CartPole-v1"\n'
                    'overrides = { length = 0.7 }\n')
    assert_user_error(run_cli("compare", "--suite", str(toml), "--methods", "meta-maml", "--n-test", "2",
                              "--out", str(tmp_path / "a")), "continuous parameters")
    assert_user_error(run_cli("compare", *RUN_ARGS, "--methods", "meta-maml", "--n-test", "0", "--out", str(tmp_path / "b")),
                      "--n-test")
