import json

import pytest
import torch

from conftest import seeded
from policygradex.config import PPOConfig
from policygradex.rl.checkpoint import list_checkpoints, load_checkpoint
from policygradex.rl.evaluate import evaluate_policy
from policygradex.rl.ppo import normalize_advantages, train
from policygradex.tasks import load_suite


def small_cfg(**kw):
    base = dict(total_steps=4096, envs_per_task=2, num_steps=64, minibatch_size=128, update_epochs=2, checkpoint_every=4, seed=seeded(7))
    base.update(kw)
    return PPOConfig(**base)


@pytest.mark.trains
def test_checkpoint_round_trip_is_bit_identical(tmp_path):
    suite = load_suite("cartpole", 3, seeded(0))
    res = train(suite, small_cfg(), tmp_path)
    model, suite2, cfg2, ckpt = load_checkpoint(res.checkpoints[-1])
    for (k, a), (k2, b) in zip(res.model.state_dict().items(), model.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert suite2.to_dict() == suite.to_dict() and cfg2 == small_cfg()
    assert set(ckpt["returns"]) == set(suite.names) and ckpt["versions"]["torch"]
    e1 = evaluate_policy(res.model, suite, episodes=2)
    e2 = evaluate_policy(model, suite2, episodes=2)
    assert e1 == e2


@pytest.mark.trains
def test_same_seed_same_returns(tmp_path):
    suite = load_suite("cartpole", 2, seeded(0))
    a = train(suite, small_cfg(), tmp_path / "a")
    b = train(suite, small_cfg(), tmp_path / "b")
    assert a.history == b.history and all(h["returns"] for h in a.history)
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)
    c = train(suite, small_cfg(seed=seeded(8)), tmp_path / "c")
    assert any(not torch.equal(p, q) for p, q in zip(a.model.parameters(), c.model.parameters()))


@pytest.mark.trains
def test_periodic_checkpoints_and_resume_after_kill(tmp_path):
    suite = load_suite("cartpole", 2, seeded(0))
    cfg = small_cfg(total_steps=256 * 8, checkpoint_every=2)
    full = train(suite, cfg, tmp_path)
    ckpts = list_checkpoints(tmp_path / "checkpoints")
    assert len(ckpts) == 4
    # simulate a kill after the second checkpoint: later checkpoints never got written
    for p in ckpts[2:]:
        p.unlink()
    res = train(suite, cfg, tmp_path)
    assert res.global_step == full.global_step
    assert len(list_checkpoints(tmp_path / "checkpoints")) == 4
    hist = json.loads((tmp_path / "train_history.json").read_text())
    assert [h["update"] for h in hist] == [2, 4, 6, 8]


def test_per_task_advantage_normalization():
    adv = torch.tensor([1.0, 2.0, 3.0, 100.0, 200.0, 300.0])
    task = torch.tensor([0, 0, 0, 1, 1, 1])
    out = normalize_advantages(adv, task, 2)
    assert torch.allclose(out[:3], out[3:], atol=1e-5)
    assert abs(out[:3].mean()) < 1e-6


@pytest.mark.slow
@pytest.mark.trains
def test_ppo_learns_cartpole(tmp_path):
    """PPO learns CartPole-v1, by a criterion with margin that holds for any seed and CPU.

    The preset (learning rate 1e-3, 20 epochs) learns within a few thousand steps, but the greedy
    policy's return swings from checkpoint to checkpoint (~100 to 500) and some runs settle near
    130: one run's final return is not a test (seed 0 ends at 136 after 60k steps on one CPU, at
    127 on another).  Asserted instead: the mean greedy return over the last four of the six
    checkpoints of a 15,360-step run (7,680 to 15,360 steps, 5 episodes each) is >= 100, where the
    untrained policy gets 9-34.  Measured at 17 seeds (offsets 0-11 and 1000-5000, AMD EPYC):
    minimum 143, median 295."""
    suite = load_suite("env:CartPole-v1")
    cfg = PPOConfig(**{**suite.ppo_preset, "total_steps": 15_360, "seed": seeded(0), "checkpoint_every": 10})
    res = train(suite, cfg, tmp_path)
    assert len(res.checkpoints) == 6
    means = []
    for path in res.checkpoints[2:]:
        model, _, _, _ = load_checkpoint(path)
        means.append(evaluate_policy(model, suite, episodes=5, seed=seeded(12345))["CartPole-v1"]["mean"])
    assert sum(means) / len(means) >= 100, means


@pytest.mark.trains
def test_tensorboard_logging_uses_cleanrl_names(tmp_path):
    pytest.importorskip("tensorboard")
    suite = load_suite("cartpole", 2, seeded(0))
    train(suite, small_cfg(total_steps=512), tmp_path / "run", tensorboard=tmp_path / "tb")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "charts/SPS" in tags and "losses/value_loss" in tags


@pytest.mark.trains
def test_continuous_actions_train_with_gaussian_head(tmp_path):
    suite = load_suite("env:Pendulum-v1")
    res = train(suite, small_cfg(total_steps=512, envs_per_task=2, num_steps=128), tmp_path)
    assert res.model.kind == "gaussian" and res.global_step == 512
    ev = evaluate_policy(res.model, suite, episodes=1, seed=seeded(12345))
    # every Pendulum reward is -(angle^2 + 0.1 speed^2 + 0.001 torque^2) <= 0 and is 0 only exactly
    # upright, at rest, without torque: negative for any policy, seed and CPU
    assert ev["Pendulum-v1"]["mean"] < 0


def test_evaluation_uses_common_random_numbers_across_task_subsets():
    suite = load_suite("cartpole", 4)
    torch.manual_seed(0)
    from policygradex.rl.checkpoint import build_model

    model = build_model(suite, small_cfg())
    full = evaluate_policy(model, suite, episodes=3, deterministic=False, seed=5)
    part = evaluate_policy(model, suite, episodes=3, deterministic=False, seed=5, tasks=[2, 0])
    assert set(part) == {"cartpole-00", "cartpole-02"}
    for name in part:
        assert part[name]["returns"] == full[name]["returns"]
    other = evaluate_policy(model, suite, episodes=3, deterministic=False, seed=6, tasks=[0])
    assert other["cartpole-00"]["returns"] != full["cartpole-00"]["returns"]


def test_sampling_from_noise_matches_the_policy_distribution():
    from policygradex.rl.networks import ActorCritic, sample_with_noise
    import gymnasium as gym

    torch.manual_seed(1)
    model = ActorCritic(3, gym.spaces.Discrete(3))
    with torch.no_grad():
        model.actor.net[-1].weight.mul_(100)
    x = torch.randn(1, 3).expand(20000, 3)
    a = sample_with_noise(model.actor, x, torch.rand(20000))
    freq = torch.bincount(a, minlength=3).float() / 20000
    probs = torch.softmax(model.actor(x[:1]), -1)[0]
    assert torch.allclose(freq, probs, atol=0.02)


@pytest.mark.trains
def test_finetune_on_a_subset_keeps_one_hot_width_and_moves_parameters(tmp_path):
    from policygradex.rl.ppo import finetune

    suite = load_suite("cartpole", 3, seeded(0))
    res = train(suite, small_cfg(total_steps=768), tmp_path)
    ft = finetune(res.model, suite, [0, 2], small_cfg(), total_steps=512, seed=seeded(1))
    assert ft.model.actor.net[0].in_features == 4 + 3
    assert ft.env_steps == 512 and len(ft.snapshots) == 2
    moved = [not torch.equal(a, b) for a, b in zip(res.model.actor.parameters(), ft.model.actor.parameters())]
    assert any(moved)
    # theta* itself is untouched
    _, _, _, ckpt = load_checkpoint(res.checkpoints[-1])
    assert all(torch.equal(ckpt["model"][k], v) for k, v in res.model.state_dict().items())
