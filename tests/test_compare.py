"""`policygradex compare`: budget fairness, random grouping sizes, PCGrad, Soft Modularization,
resuming after a kill, user errors.  Tiny budgets (4 CartPole tasks, 128 steps per task)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import gymnasium as gym
import numpy as np
import pytest
import torch

from conftest import ROOT, assert_user_error, run_cli, seeded
from policygradex.compare.groupings import groups_from_affinity, random_groups
from policygradex.compare.pcgrad import PCGrad, pcgrad_coefficients, pcgrad_combine
from policygradex.config import NetConfig, PPOConfig
from policygradex.rl.networks import ActorCritic, SoftModNet

# the run trains: its seeds shift with POLICYGRADEX_TEST_SEED_OFFSET (downstream training uses seeds 0..N-1)
RUN_ARGS = ["--replicates", "1", "--theta-window", "1", "--suite", "cartpole", "--tasks", "4", "--seed", str(seeded(0)), "--suite-seed", str(seeded(0)), "--steps", "2048",
            "--transitions", "256", "--null-permutations", "10", "--k", "2"]
ALL = "multitask,softmod,random,gradsim,pcgrad,tag,policygradex"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp") / "out"
    proc = run_cli("compare", *RUN_ARGS, "--methods", ALL, "--seeds", "2", "--steps-per-task", "100", "--episodes", "2",
                   "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads((out / "comparison.json").read_text())


# ----------------------------------------------------------------------------- PCGrad


def test_pcgrad_projects_hand_made_conflicting_gradients():
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])  # g1 . g2 = -1 < 0
    # g1 -> g1 - (-1/2) g2 = (0.5, 0.5); g2 -> g2 - (-1/1) g1 = (0, 1); sum (0.5, 1.5)
    for seed in range(5):
        torch.testing.assert_close(pcgrad_combine(g, seed), torch.tensor([0.5, 1.5]))
    # the projected gradients are orthogonal to the gradient they conflicted with
    g1 = g[0] - (g[0] @ g[1]) / (g[1] @ g[1]) * g[1]
    torch.testing.assert_close(g1, torch.tensor([0.5, 0.5]))
    assert abs(float(g1 @ g[1])) < 1e-7
    # no conflict: the plain sum
    h = torch.tensor([[1.0, 0.2], [0.5, 1.0], [0.3, 0.3]])
    torch.testing.assert_close(pcgrad_combine(h, 0), h.sum(0))


def test_pcgrad_three_tasks_matches_direct_projection():
    rng = np.random.default_rng(3)
    G = torch.as_tensor(rng.standard_normal((3, 7)))
    order = np.random.default_rng(11)
    coef = pcgrad_coefficients((G @ G.T).numpy(), order)
    # direct PCGrad with the same random orders
    order = np.random.default_rng(11)
    out = []
    for i in range(3):
        gi = G[i].clone()
        for j in order.permutation(3):
            if j != i and gi @ G[j] < 0:
                gi = gi - (gi @ G[j]) / (G[j] @ G[j]) * G[j]
        out.append(gi)
    torch.testing.assert_close(torch.as_tensor(coef) @ G, torch.stack(out).sum(0))


def test_pcgrad_hook_uses_per_task_gradients():
    torch.manual_seed(0)
    model = ActorCritic(6, gym.spaces.Discrete(2), hidden=(8,))
    x, task = torch.randn(12, 6), torch.arange(12) % 3
    a = torch.randint(0, 2, (12,))
    per_sample = -model.actor.log_prob(x, a) + 0.5 * model.value(x).pow(2)
    params = list(model.parameters())
    G = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(per_sample[task == t].sum() / 12, params,
                                                                           retain_graph=True)]) for t in range(3)])
    hook = PCGrad(seed=5)
    hook(model, per_sample, task)
    got = torch.cat([p.grad.reshape(-1) for p in params])
    want = pcgrad_combine(G, np.random.default_rng(5))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert hook.pairs == 3


@pytest.mark.trains
def test_ppo_update_hook_is_backward_compatible():
    """A surgery hook that just backpropagates the mean gives the ordinary PPO update."""
    from policygradex.compare.train import train_group
    from policygradex.tasks import load_suite

    suite = load_suite("cartpole", 2, seeded(0))
    cfg = PPOConfig.model_validate({**suite.ppo_preset, "update_epochs": 2})

    def plain(model, per_sample, task_of):
        per_sample.mean().backward()

    a = train_group(suite, [0, 1], cfg, 64, seed=seeded(1))
    b = train_group(suite, [0, 1], cfg, 64, seed=seeded(1), grad_surgery=plain)
    for (k, v), w in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        torch.testing.assert_close(v, w, rtol=1e-5, atol=1e-6, msg=k)


def test_every_policy_makes_the_same_number_of_minibatch_steps():
    from policygradex.compare.train import group_ppo
    from policygradex.tasks import load_suite

    for family in ("cartpole", "lunarlander"):
        cfg = PPOConfig.model_validate(load_suite(family, 10, 0).ppo_preset)
        per_task = cfg.envs_per_task * cfg.num_steps
        ref = (10 * per_task) // cfg.minibatch_size
        for s in range(1, 11):
            g = group_ppo(cfg, s, 10)
            steps = max(1, (s * per_task) // g.minibatch_size)
            assert abs(steps - ref) <= 0.1 * ref, (family, s, steps, ref)
            assert group_ppo(cfg, s, 10, "preset_size") == cfg


# ----------------------------------------------------------------------------- groupings


def test_random_grouping_keeps_group_sizes():
    sizes = [4, 3, 2, 1]
    seen = set()
    for seed in range(30):
        groups = random_groups(sizes, 10, seed)
        assert sorted(len(g) for g in groups) == sorted(sizes)
        assert sorted(t for g in groups for t in g) == list(range(10))
        seen.add(tuple(tuple(g) for g in groups))
    assert len(seen) > 20  # draws differ


def test_groups_from_affinity_recovers_blocks():
    U = np.full((6, 6), -0.5)
    for blk in ([0, 2, 4], [1, 3, 5]):
        U[np.ix_(blk, blk)] = 1.0
    assert sorted(groups_from_affinity(U, 2)) == [[0, 2, 4], [1, 3, 5]]
    assert groups_from_affinity(U, 1) == [list(range(6))]


# ----------------------------------------------------------------------------- Soft Modularization


def test_softmod_network_routing_and_per_sample_gradients():
    from policygradex.estimate.features import exact_grads

    torch.manual_seed(0)
    model = ActorCritic(7, gym.spaces.Discrete(3), softmod=dict(n_tasks=3, modules=3, layers=3, width=8))
    assert isinstance(model.actor.net, SoftModNet) and isinstance(model.critic, SoftModNet)
    x = torch.cat([torch.randn(5, 4), torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 0, 1]), 3).float()], 1)
    probs = model.actor.net.routing(x)
    assert len(probs) == 2 and probs[0].shape == (5, 3, 3)
    torch.testing.assert_close(probs[0].sum(-1), torch.ones(5, 3))
    # the task changes the routing for the same state
    x2 = x.clone()
    x2[:, 4:] = torch.nn.functional.one_hot(torch.tensor([1, 2, 0, 1, 2]), 3).float()
    assert not torch.allclose(model.actor.net.routing(x2)[0], probs[0])
    # per-sample gradients under vmap equal a loop of backward passes
    a = torch.randint(0, 3, (5,))
    G = exact_grads(model.actor, x, a)
    for i in range(5):
        model.actor.zero_grad()
        model.actor.log_prob(x[i:i + 1], a[i:i + 1]).sum().backward()
        want = torch.cat([p.grad.reshape(-1) for p in model.actor.parameters()])
        torch.testing.assert_close(G[i], want, rtol=1e-4, atol=1e-6)


def test_softmod_checkpoint_round_trip_and_mlp_config_unchanged(tmp_path):
    from policygradex.rl.checkpoint import build_model, load_checkpoint, save_checkpoint
    from policygradex.tasks import load_suite

    assert "arch" not in PPOConfig().model_dump()["net"]  # MLP configs hash as before `arch` existed
    suite = load_suite("cartpole", 3, 0)
    cfg = PPOConfig.model_validate({**suite.ppo_preset, "net": {"arch": "softmod", "softmod_modules": 2}})
    assert PPOConfig.model_validate(cfg.model_dump(mode="json")) == cfg
    torch.manual_seed(0)
    model = build_model(suite, cfg)
    assert isinstance(model.actor.net, SoftModNet) and model.actor.net.m == 2
    save_checkpoint(tmp_path / "c.pt", model, None, cfg, suite, 0, 0, {})
    loaded, _, cfg2, _ = load_checkpoint(tmp_path / "c.pt")
    assert cfg2.net.arch == "softmod"
    for v, w in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(v, w)
    with pytest.raises(ValueError):
        NetConfig.model_validate({"arch": "transformer"})


# ----------------------------------------------------------------------------- compare end to end


@pytest.mark.trains
def test_compare_outputs_and_budget_fairness(tiny):
    out, r = tiny
    assert r["methods_order"] == ALL.split(",")
    b = r["budget"]
    # 100 steps per task rounded up to whole iterations of envs_per_task * num_steps = 2 * 32 = 64
    assert b["steps_per_task"] == 128 and b["equal_across_methods"] and b["iterations"] == 2
    for name, e in r["methods"].items():
        assert e["env_steps_per_task"] == {t: 128 for t in r["tasks"]}, name
        assert e["env_steps_per_seed"] == 128 * 4
        assert e["seeds"] == [0, 1] and e["ci95_halfwidth"] is not None
        assert sorted(t for g in e["groups"][0] for t in g) == sorted(r["tasks"])
        lo, hi = e["ci95"]
        assert lo <= e["mean"] <= hi
        assert set(e["per_task"]) == set(r["tasks"])
    k = r["policygradex_run"]["k"]
    sizes = sorted(len(g) for g in r["methods"]["policygradex"]["groups"][0])
    for m in ("random", "gradsim", "tag"):
        assert len(r["methods"][m]["groups"][0]) == k
    for groups in r["methods"]["random"]["groups"]:
        assert sorted(len(g) for g in groups) == sizes
    assert r["methods"]["softmod"]["arch"] == "softmod" and r["methods"]["multitask"]["arch"] == "mlp"
    assert "pcgrad" in r["methods"]["pcgrad"]
    for f in ("comparison.json", "comparison.csv", "comparison.png"):
        assert (out / f).stat().st_size > 0
    rows = (out / "comparison.csv").read_text().splitlines()
    assert len(rows) == 1 + 7 and rows[0].startswith("method,mean,ci95_low,ci95_high")
    # every group's policy is a checkpoint that `evaluate` reads
    proc = run_cli("evaluate", str(out / "compare" / "softmod" / "seed_0" / "group_0.pt"), "--episodes", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    assert set(json.loads(proc.stdout)) == set(r["tasks"])


@pytest.mark.trains
def test_compare_resumes_after_kill(tiny, tmp_path):
    run_dir, _ = tiny
    out = tmp_path / "killed"
    args = ["compare", *RUN_ARGS, "--methods", "multitask,policygradex", "--seeds", "2", "--steps-per-task", "320",
            "--episodes", "2", "--run-dir", str(run_dir / "run"), "--out", str(out)]
    env = {**os.environ, "POLICYGRADEX_QUIET": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "policygradex.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "compare" / "multitask" / "seed_0.manifest.json"
    deadline = time.time() + 120
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.exists()
    assert not (out / "comparison.json").exists()
    done_before = {p: p.stat().st_mtime_ns for p in (out / "compare").rglob("*.manifest.json")}
    result_before = (out / "compare" / "multitask" / "seed_0" / "result.json").read_bytes()
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for p, mtime in done_before.items():
        assert p.stat().st_mtime_ns == mtime, f"{p} was recomputed"
    assert (out / "compare" / "multitask" / "seed_0" / "result.json").read_bytes() == result_before
    r = json.loads((out / "comparison.json").read_text())
    assert all(e["seeds"] == [0, 1] for e in r["methods"].values())
    # a rerun trains nothing
    proc = run_cli(*args)
    assert proc.returncode == 0 and "training" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("args,needles", [
    (["--methods", "multitask,nope"], ["--methods", "nope", "policygradex"]),
    (["--seeds", "0"], ["--seeds", "greater than or equal to 1"]),
    (["--arch", "cnn"], ["--arch"]),
])
def test_compare_user_errors(tmp_path, args, needles):
    assert_user_error(run_cli("compare", "--suite", "cartpole", "--tasks", "3", *args, "--out", str(tmp_path / "o")), *needles)


def test_compare_config_errors_name_the_option():
    from policygradex.config import CompareConfig, parse
    from policygradex.errors import UserError

    flags = {"methods": "--methods", "steps_per_task": "--steps-per-task"}
    with pytest.raises(UserError, match="--methods: .*twice"):
        parse(CompareConfig, {"methods": ("multitask", "multitask")}, "options", flags)
    with pytest.raises(UserError, match="--steps-per-task"):
        parse(CompareConfig, {"steps_per_task": 0}, "options", flags)


@pytest.mark.trains
def test_warm_start_from_theta_star(tiny, tmp_path):
    from policygradex.cli import RunOptions, _run_config
    from policygradex.compare import compare
    from policygradex.config import CompareConfig
    from policygradex.tasks import load_suite

    run_out, _ = tiny
    suite = load_suite("cartpole", 4, seeded(0))
    # the same run as the CLI's RUN_ARGS, so the cached stages are reused
    cfg = _run_config(suite, seeded(0), RunOptions(steps=2048, replicates=1, theta_window=1, k=2, transitions=256, null_permutations=10))
    ccfg = CompareConfig(methods=("policygradex", "softmod"), seeds=1, steps_per_task=64, episodes=1, warm_start=True)
    r = compare(suite, cfg, ccfg, tmp_path / "warm", run_dir=run_out / "run")
    assert r["methods"]["policygradex"]["init"] == "theta*"
    assert r["methods"]["softmod"]["init"] == "scratch"  # theta* is an MLP
    assert not (tmp_path / "warm" / "run").exists()
