"""Evaluators f(S, i): hand-computed values, NaN pattern, planted structure, small-step agreement."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from policygradex.estimate.evaluators import (
    DEFAULT_EVALUATOR,
    EVALUATORS,
    first_order_ppo,
    get_evaluator,
    surrogate_loss,
)
from policygradex.estimate.subsets import sample_subsets
from policygradex.estimate.surrogate import fit_subsets


def _tiny():
    G = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0], [0.0, -1.0], [1.0, -1.0]], dtype=torch.float64)
    task = torch.tensor([0, 0, 0, 1, 1, 1])
    y = torch.tensor([1.0, -1.0, 1.0, 1.0, 1.0, -1.0], dtype=torch.float64)
    w = torch.tensor([1.0, 2.0, 0.5, 1.0, 1.0, 3.0], dtype=torch.float64)
    heldout = torch.tensor([True, True, False, True, False, True])
    members = torch.tensor([[True, True], [True, False]])
    U = torch.tensor([[0.1, -0.2], [0.3, 0.0]], dtype=torch.float64)
    return G, y, w, task, heldout, members, U


def test_registry_and_default():
    assert set(EVALUATORS) == {"first_order_ppo", "surrogate_loss"}
    assert DEFAULT_EVALUATOR == "first_order_ppo"
    assert get_evaluator("surrogate_loss") is surrogate_loss
    with pytest.raises(ValueError, match="first_order_ppo"):
        get_evaluator("real_return")


def test_first_order_ppo_hand_computed():
    out = first_order_ppo(*_tiny())
    assert out.shape == (2, 2) and out.dtype == np.float64
    e = math.exp
    # held-out rows: task 0 -> rows 0, 1; task 1 -> rows 3, 5.  A = y * w.
    s0_t0 = ((e(0.1) - 1) * 1.0 + (e(-0.2) - 1) * (-2.0)) / 2  # z = 0.1, -0.2
    s0_t1 = ((e(0.2) - 1) * 1.0 + (e(0.3) - 1) * (-3.0)) / 2  # z = 0.2, 0.1 + 0.2
    s1_t0 = ((e(0.3) - 1) * 1.0 + (e(0.0) - 1) * (-2.0)) / 2  # z = 0.3, 0
    np.testing.assert_allclose(out[0], [s0_t0, s0_t1], rtol=1e-12)
    np.testing.assert_allclose(out[1, 0], s1_t0, rtol=1e-12)
    assert np.isnan(out[1, 1])


def test_surrogate_loss_hand_computed():
    out = surrogate_loss(*_tiny())

    def sp(x: float) -> float:
        return math.log1p(math.exp(x))

    s0_t0 = -(1.0 * sp(-0.1) + 2.0 * sp(-0.2)) / 2  # y z = 0.1, (-1)(-0.2)
    s0_t1 = -(1.0 * sp(-0.2) + 3.0 * sp(0.3)) / 2  # y z = 0.2, (-1)(0.3)
    s1_t0 = -(1.0 * sp(-0.3) + 2.0 * sp(0.0)) / 2
    np.testing.assert_allclose(out[0], [s0_t0, s0_t1], rtol=1e-12)
    np.testing.assert_allclose(out[1, 0], s1_t0, rtol=1e-12)
    assert np.isnan(out[1, 1])


@pytest.mark.parametrize("name", sorted(EVALUATORS))
def test_nan_exactly_where_task_not_in_subset(name):
    rng = np.random.default_rng(0)
    n, d, N = 7, 6, 700
    G = torch.tensor(rng.normal(size=(N, d)))
    y = torch.tensor(np.where(rng.random(N) < 0.7, 1.0, -1.0))
    w = torch.tensor(rng.lognormal(size=N))
    task = torch.tensor(np.arange(N) % n)
    heldout = torch.tensor(rng.random(N) < 0.3)
    members = sample_subsets(n, 3, 2, seed=0)
    U = torch.tensor(rng.normal(scale=0.1, size=(members.shape[0], d)))
    out = EVALUATORS[name](G, y, w, task, heldout, torch.tensor(members), U)
    assert out.shape == members.shape
    np.testing.assert_array_equal(np.isnan(out), ~members)


def _planted(seed: int = 0):
    """Tasks 0-2 share a label rule; tasks 3-5 have the same features with the labels flipped."""
    rng = np.random.default_rng(seed)
    n, d, per = 6, 10, 600
    N = n * per
    task = np.repeat(np.arange(n), per)
    G = rng.normal(size=(N, d))
    beta = rng.normal(size=d)
    margin = G @ beta + 0.5 * rng.normal(size=N)
    y = np.where(margin > 0, 1.0, -1.0)
    y[task >= 3] *= -1
    w = rng.lognormal(sigma=0.5, size=N)
    heldout = rng.random(N) < 0.3
    return [torch.tensor(a) for a in (G, y, w, task, heldout)]


@pytest.mark.parametrize("name", sorted(EVALUATORS))
def test_planted_groups_pure_subsets_score_higher(name):
    G, y, w, task, heldout = _planted()
    pure = [[0, 1], [0, 2], [1, 2], [0, 1, 2]]
    mixed = [[0, 3], [1, 4], [2, 5], [0, 1, 3, 4], [0, 2, 4, 5], [1, 2, 3, 5]]
    members = torch.zeros(len(pure) + len(mixed), 6, dtype=torch.bool)
    for r, subset in enumerate(pure + mixed):
        members[r, subset] = True
    fit = fit_subsets(G, y, w, task, members, 0.1, train_mask=~heldout)
    f = EVALUATORS[name](G, y, w, task, heldout, members, fit.u)
    for i in range(3):  # group A
        in_pure = [f[r, i] for r in range(len(pure)) if members[r, i]]
        in_mixed = [f[len(pure) + r, i] for r in range(len(mixed)) if members[len(pure) + r, i]]
        assert min(in_pure) > max(in_mixed), (i, in_pure, in_mixed)


def test_evaluators_agree_at_small_steps():
    """To first order: f_ppo ~ mean A z and f_loss ~ -log 2 mean w + mean A z / 2."""
    G, y, w, task, heldout = _planted(seed=1)
    members = torch.tensor(sample_subsets(6, 3, 1, seed=1))
    U = fit_subsets(G, y, w, task, members, 0.1, train_mask=~heldout).u
    U = U * (1e-4 / U.norm(dim=1, keepdim=True))
    f_ppo = first_order_ppo(G, y, w, task, heldout, members, U)
    f_loss = surrogate_loss(G, y, w, task, heldout, members, U)
    mean_w = np.array([float(w[(task == i) & heldout].mean()) for i in range(6)])
    linear_part = f_loss + math.log(2) * mean_w[None, :]
    ok = ~np.isnan(f_ppo)
    np.testing.assert_allclose(linear_part[ok], f_ppo[ok] / 2, rtol=1e-3)


def test_bad_inputs():
    G, y, w, task, heldout, members, U = _tiny()
    no_heldout_task1 = torch.tensor([True, True, True, False, False, False])
    with pytest.raises(ValueError, match="'heldout'"):
        first_order_ppo(G, y, w, task, no_heldout_task1, members, U)
    with pytest.raises(ValueError, match="'u'"):
        surrogate_loss(G, y, w, task, heldout, members, U[:1])
    with pytest.raises(ValueError, match="'heldout'"):
        surrogate_loss(G, y, w, task, heldout[:3], members, U)
    # a task with no held-out rows is fine when no subset contains it
    only_task0 = torch.tensor([[True, False], [True, False]])
    out = first_order_ppo(G, y, w, task, no_heldout_task1, only_task0, U)
    assert np.isnan(out[:, 1]).all() and np.isfinite(out[:, 0]).all()
