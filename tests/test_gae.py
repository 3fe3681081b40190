import gymnasium as gym
import numpy as np
import torch

from policygradex.rl.gae import gae
from policygradex.rl.networks import ActorCritic
from policygradex.rl.rollout import MultiTaskEnv, RolloutCollector, policy_input
from policygradex.tasks import Task, TaskSuite


def test_gae_matches_hand_computed_example_with_truncation():
    # t=0 ordinary step, t=1 time-limit truncation (bootstrap from the final obs' value 0.9,
    # but cut the recursion), t=2 termination (no bootstrap).
    r = torch.tensor([[1.0], [1.0], [1.0]])
    v = torch.tensor([[0.5], [0.4], [0.3]])
    nv = torch.tensor([[0.4], [0.9], [0.2]])
    term = torch.tensor([[False], [False], [True]])
    done = torch.tensor([[False], [True], [True]])
    adv, ret = gae(r, v, nv, term, done, gamma=0.9, lam=0.8)
    a2 = 1 + 0 - 0.3
    a1 = 1 + 0.9 * 0.9 - 0.4
    a0 = (1 + 0.9 * 0.4 - 0.5) + 0.9 * 0.8 * a1
    assert torch.allclose(adv[:, 0], torch.tensor([a0, a1, a2]))
    assert torch.allclose(ret, adv + v)


def test_gae_lambda_one_is_discounted_return_minus_value():
    T = 6
    r = torch.rand(T, 2)
    v = torch.rand(T, 2)
    nv = torch.cat([v[1:], torch.zeros(1, 2)])
    term = torch.zeros(T, 2, dtype=torch.bool)
    term[-1] = True
    adv, _ = gae(r, v, nv, term, term.clone(), gamma=0.95, lam=1.0)
    disc = torch.zeros(2)
    expect = torch.zeros(T, 2)
    for t in reversed(range(T)):
        disc = r[t] + 0.95 * disc
        expect[t] = disc - v[t]
    assert torch.allclose(adv, expect, atol=1e-5)


def test_collector_bootstraps_truncation_from_final_observation():
    suite = TaskSuite("short", [Task(name="a", env_id="CartPole-v1", max_episode_steps=5),
                                Task(name="b", env_id="CartPole-v1", max_episode_steps=5, overrides={"length": 0.7})])
    torch.manual_seed(0)
    model = ActorCritic(4 + 2, suite.action_space)
    env = MultiTaskEnv(suite, 1, seed=3)
    ro = RolloutCollector(env, torch.Generator().manual_seed(0)).collect(model, 12)
    # CartPole does not fall within 5 steps from its initial state: every episode is truncated.
    assert not ro.terminated.any()
    assert ro.dones[4].all() and ro.dones[9].all() and not ro.dones[:4].any()
    # after a truncation the next value is V(final obs), not V(first obs of the next episode)
    assert not torch.allclose(ro.next_values[4], ro.values[5])
    assert torch.allclose(ro.next_values[:4], ro.values[1:5])
    assert [len(x) for x in ro.episode_returns] == [2, 2]
    assert ro.episode_returns[0] == [5.0, 5.0]


def test_policy_input_appends_one_hot():
    x = policy_input(np.zeros((3, 4)), np.array([0, 2, 1]), 3)
    assert x.shape == (3, 7)
    assert torch.equal(x[:, 4:], torch.eye(3)[[0, 2, 1]])


def test_gaussian_head_for_box_actions():
    space = gym.spaces.Box(-1, 1, (3,))
    model = ActorCritic(5, space)
    x = torch.randn(7, 5)
    a, logp, v = model.act(x)
    assert a.shape == (7, 3) and logp.shape == (7,) and v.shape == (7,)
    assert torch.allclose(model.actor.log_prob(x, a), logp, atol=1e-5)
    # unbatched sample, as under vmap
    assert torch.allclose(model.actor.log_prob(x[0], a[0]), logp[0], atol=1e-5)
