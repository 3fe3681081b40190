"""Batched weighted logistic surrogate: agreement with scikit-learn, robustness, lambda choice."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from policygradex.estimate import lam_search, surrogate_blocks, surrogate_chunk
from policygradex.estimate.subsets import sample_subsets
from policygradex.estimate.surrogate import (
    LambdaSearch,
    SurrogateFit,
    TargetDeltaUnreachable,
    choose_lambda,
    fit_subsets,
    relative_distance,
)


def _data(N: int = 2000, d: int = 30, n: int = 6, seed: int = 0):
    """Gradient-like features with per-task offsets and a noisy per-task linear label rule."""
    rng = np.random.default_rng(seed)
    task = rng.integers(0, n, N)
    G = rng.normal(size=(N, d)) + 0.5 * rng.normal(size=(n, d))[task]
    beta = rng.normal(size=(n, d)) / np.sqrt(d)
    z = (G * beta[task]).sum(1) + 0.5 * rng.normal(size=N) + rng.uniform(0.2, 1.2, size=n)[task]
    y = np.where(z > 0, 1.0, -1.0)
    w = rng.lognormal(size=N)
    return G, y, w, task


def _tensors(G, y, w, task):
    return torch.tensor(G), torch.tensor(y), torch.tensor(w), torch.tensor(task)


def _sklearn(G, y, w, rows, lam):
    n_rows = int(rows.sum())
    clf = LogisticRegression(C=1.0 / (lam * n_rows), fit_intercept=False, tol=1e-10, max_iter=100_000)
    clf.fit(G[rows], y[rows], sample_weight=w[rows])
    return clf.coef_[0]


def _rel(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(b))


def _gradient(G, y, w, rows, lam, u):
    """Independent numpy gradient of the stage-3 objective."""
    Gs, ys, ws = G[rows], y[rows], w[rows]
    s = 1.0 / (1.0 + np.exp(ys * (Gs @ u)))  # 1 - sigmoid(y z)
    return -(Gs.T @ (ws * ys * s)) / rows.sum() + lam * u


@pytest.mark.parametrize(
    ("d", "lam", "preconditioner"),
    [
        (20, 1e-3, "cholesky"),
        (30, 0.1, "cholesky"),
        (50, 1.0, "cholesky"),
        (50, 10.0, "jacobi"),
        (40, 100.0, "jacobi"),
    ],
)
def test_matches_sklearn(d, lam, preconditioner):
    G, y, w, task = _data(N=2000, d=d, n=6, seed=d)
    members = sample_subsets(6, 3, 1, seed=d)
    assert members.shape[0] >= 5
    fit = fit_subsets(*_tensors(G, y, w, task), torch.tensor(members), lam)
    assert isinstance(fit, SurrogateFit)
    assert fit.preconditioner == preconditioner  # both preconditioner paths are checked
    # (jacobi: majorization steps only, or lam dominates H0; cholesky: Newton steps with an
    # ill-conditioned H0)
    assert fit.u.dtype == torch.float64 and fit.u.shape == (members.shape[0], d)
    assert bool(fit.converged.all())
    for s in range(members.shape[0]):
        rows = members[s][task]
        assert len(np.unique(y[rows])) == 2  # both classes: sklearn can fit it
        assert int(fit.n_rows[s]) == rows.sum()
        assert _rel(fit.u[s].numpy(), _sklearn(G, y, w, rows, lam)) < 1e-3


def test_train_mask_uses_only_training_rows():
    G, y, w, task = _data(N=1500, d=20, seed=3)
    rng = np.random.default_rng(3)
    train = rng.random(len(y)) < 0.7
    members = np.array([[1, 1, 0, 0, 1, 0], [0, 0, 1, 1, 0, 1]], dtype=bool)
    lam = 0.05
    fit = fit_subsets(*_tensors(G, y, w, task), torch.tensor(members), lam, train_mask=torch.tensor(train))
    for s in range(2):
        rows = members[s][task] & train
        assert int(fit.n_rows[s]) == rows.sum()
        assert _rel(fit.u[s].numpy(), _sklearn(G, y, w, rows, lam)) < 1e-3


def test_one_class_subset_has_a_finite_regularized_solution():
    G, y, w, task = _data(N=1200, d=25, seed=4)
    y = y.copy()
    y[task == 0] = 1.0  # task 0: every advantage positive (critic lag)
    G = G + 0.8  # shift so that the all-positive rows are close to separable
    members = np.array([[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0]], dtype=bool)
    for lam in [1e-4, 1e-2, 1.0]:
        fit = fit_subsets(*_tensors(G, y, w, task), torch.tensor(members), lam)
        assert torch.isfinite(fit.u).all()
        assert bool(fit.converged.all())
        for s in range(2):
            rows = members[s][task]
            g = _gradient(G, y, w, rows, lam, fit.u[s].numpy())
            assert np.linalg.norm(g) <= 1e-5 * float(fit.grad_norm0[s])


def test_separable_data_small_lambda_converges():
    G, _, w, task = _data(N=800, d=10, seed=5)
    y = np.where(G[:, 0] > 0, 1.0, -1.0)  # linearly separable: the solution grows like log(1/lam)
    members = np.array([[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]], dtype=bool)
    norms = []
    for lam in [1e-6, 1e-3]:
        fit = fit_subsets(*_tensors(G, y, w, task), torch.tensor(members), lam, max_iter=100)
        assert bool(fit.converged.all()) and torch.isfinite(fit.u).all()
        norms.append(float(fit.u.norm(dim=1).min()))
    assert norms[0] > norms[1]


def test_zero_weights_give_zero_solution():
    G, y, w, task = _data(N=600, d=10, seed=6)
    w = w.copy()
    w[task == 2] = 0.0
    members = np.array([[0, 0, 1, 0, 0, 0], [1, 0, 1, 0, 0, 0]], dtype=bool)
    fit = fit_subsets(*_tensors(G, y, w, task), torch.tensor(members), 0.1)
    assert torch.count_nonzero(fit.u[0]) == 0
    assert bool(fit.converged.all())
    assert float(fit.u[1].norm()) > 0
    warm = fit_subsets(*_tensors(G, y, w, task), torch.tensor(members), 0.1, u0=torch.ones(2, 10))
    assert torch.count_nonzero(warm.u[0]) == 0 and bool(warm.converged.all())


def test_chunks_warm_start_and_dtype_do_not_change_the_solution():
    G, y, w, task = _data(N=1500, d=20, seed=7)
    members = torch.tensor(sample_subsets(6, 3, 2, seed=7))
    Gt, yt, wt, tt = _tensors(G, y, w, task)
    ref = fit_subsets(Gt, yt, wt, tt, members, 0.01, tol=1e-9)
    chunked = fit_subsets(Gt, yt, wt, tt, members, 0.01, tol=1e-9, batch_size=2)
    warm = fit_subsets(Gt, yt, wt, tt, members, 0.01, tol=1e-9, u0=0.5 * ref.u)
    f32 = fit_subsets(Gt.float(), yt.float(), wt.float(), tt.int(), members, 0.01, tol=1e-9)
    for other in (chunked, warm):
        assert ((other.u - ref.u).norm(dim=1) / ref.u.norm(dim=1)).max() < 1e-6
    assert f32.u.dtype == torch.float64
    assert ((f32.u - ref.u).norm(dim=1) / ref.u.norm(dim=1)).max() < 1e-4  # input rounding only


def test_max_iter_reports_non_convergence():
    G, y, w, task = _data(N=800, d=10, seed=8)
    members = torch.tensor(sample_subsets(6, 3, 1, seed=8))
    fit = fit_subsets(*_tensors(G, y, w, task), members, 1e-3, max_iter=1, tol=1e-12)
    assert not bool(fit.converged.any())
    assert (fit.iterations == 1).all()
    assert (fit.grad_norm > 1e-12 * fit.grad_norm0).all()


@pytest.mark.parametrize("lam", [30.0, 1.0, 1e-3])
def test_converged_flag_holds_for_an_independent_float64_gradient(lam):
    # tol >= 1e-6 runs the data products in float32: the gradient they give must still meet
    # the tolerance in exact arithmetic (majorization steps at large lam, Newton steps at small)
    G, y, w, task = _data(N=3000, d=40, n=6, seed=21)
    members = sample_subsets(6, 3, 2, seed=21)
    fit = fit_subsets(*_tensors(G, y, w, task), torch.tensor(members), lam, tol=1e-6)
    assert bool(fit.converged.all())
    for s in range(members.shape[0]):
        rows = members[s][task]
        g = _gradient(G, y, w, rows, lam, fit.u[s].numpy())
        assert np.linalg.norm(g) <= 1.2e-6 * float(fit.grad_norm0[s])


def test_near_quadratic_regime_takes_few_majorization_steps():
    # small margins (large lam): the first step (exact Newton from 0) and one lengthened
    # majorization step reach tol = 1e-6, with no Newton step on the data Hessian
    G, y, w, task = _data(N=4000, d=60, n=8, seed=22)
    members = torch.tensor(sample_subsets(8, 4, 2, seed=22))
    fit = fit_subsets(*_tensors(G, y, w, task), members, 50.0)
    assert bool(fit.converged.all()) and fit.preconditioner == "jacobi"
    assert int(fit.iterations.max()) <= 3


def test_row_order_gram_precision_and_empty_tasks_do_not_change_the_solution(monkeypatch):
    G, y, w, task = _data(N=1500, d=20, seed=23)
    task = np.where(task == 5, 4, task)  # task 5 has no rows; subsets with it still have others
    members = torch.tensor(sample_subsets(6, 3, 2, seed=23))
    ref = fit_subsets(*_tensors(G, y, w, task), members, 0.3, tol=1e-9)
    order = np.argsort(task, kind="stable")  # rows grouped by task: views instead of copies
    grouped = fit_subsets(*_tensors(G[order], y[order], w[order], task[order]), members, 0.3, tol=1e-9)
    monkeypatch.setattr(surrogate_blocks, "_fast_bf16", lambda device: False)  # float32 Gram matrices only
    f32_gram = fit_subsets(*_tensors(G, y, w, task), members, 0.3, tol=1e-9)
    for other in (grouped, f32_gram):
        assert bool(other.converged.all())
        assert ((other.u - ref.u).norm(dim=1) / ref.u.norm(dim=1)).max() < 1e-7


def test_float32_rounding_floor_falls_back_to_float64(monkeypatch):
    G, y, w, task = _data(N=1500, d=20, seed=24)
    members = torch.tensor(sample_subsets(6, 3, 2, seed=24))
    ref = fit_subsets(*_tensors(G, y, w, task), members, 0.05, tol=1e-9)
    exact_gradient = surrogate_chunk.Chunk.gradient

    def noisy(self, A, U, sel):  # a float32 gradient far worse than the real one
        grad = exact_gradient(self, A, U, sel)
        if self.dt == torch.float32:
            grad = grad + 1e-5 * self.grad0.norm(dim=1, keepdim=True) * torch.randn_like(grad) / grad.shape[1] ** 0.5
        return grad

    monkeypatch.setattr(surrogate_chunk.Chunk, "gradient", noisy)
    fit = fit_subsets(*_tensors(G, y, w, task), members, 0.05, tol=1e-6)
    assert bool(fit.converged.all())
    assert ((fit.u - ref.u).norm(dim=1) / ref.u.norm(dim=1)).max() < 1e-5


@pytest.mark.parametrize(
    ("change", "name"),
    [
        ({"lam": 0.0}, "'lam'"),
        ({"lam": float("nan")}, "'lam'"),
        ({"y": torch.zeros(50, dtype=torch.float64)}, "'y'"),
        ({"w": -torch.ones(50, dtype=torch.float64)}, "'w'"),
        ({"task": torch.full((50,), 7)}, "'task'"),
        ({"task": torch.zeros(50)}, "'task'"),
        ({"members": torch.ones(2, 3, dtype=torch.int64)}, "'members'"),
        ({"members": torch.tensor([[True, False, False], [False, False, False]])}, "'members'"),
        ({"G": torch.full((50, 4), float("nan"), dtype=torch.float64)}, "'G'"),
        ({"train_mask": torch.ones(49, dtype=torch.bool)}, "'train_mask'"),
        ({"tol": -1.0}, "'tol'"),
        ({"max_iter": 0}, "'max_iter'"),
    ],
)
def test_bad_inputs_name_the_parameter(change, name):
    rng = np.random.default_rng(0)
    args = {
        "G": torch.tensor(rng.normal(size=(50, 4))),
        "y": torch.tensor(np.where(rng.random(50) < 0.5, 1.0, -1.0)),
        "w": torch.ones(50, dtype=torch.float64),
        "task": torch.tensor(np.arange(50) % 3),
        "members": torch.tensor([[True, True, False], [False, True, True]]),
        "lam": 0.1,
    }
    args.update(change)
    with pytest.raises(ValueError, match=name):
        fit_subsets(**args)


# ---------------------------------------------------------------------------- choose_lambda


def _projection_gram(d: int, p: int = 400, seed: int = 0) -> torch.Tensor:
    """``P^T P`` for a JL projection ``P`` with entries N(0, 1/d) (METHOD.md stage 2)."""
    P = torch.tensor(np.random.default_rng(seed).normal(scale=1 / np.sqrt(d), size=(p, d)))
    return P.T @ P


def test_delta_is_monotone_in_lambda():
    G, y, w, task = _data(N=1500, d=20, seed=9)
    members = torch.tensor(sample_subsets(6, 3, 2, seed=9))
    gram = _projection_gram(20)
    deltas = []
    for lam in np.logspace(-4, 2, 7):
        fit = fit_subsets(*_tensors(G, y, w, task), members, float(lam))
        deltas.append(relative_distance(fit.u, gram, 3.0))
    deltas = torch.stack(deltas)  # [lams, m]
    assert (deltas[1:] < deltas[:-1]).all()


@pytest.mark.parametrize("target", [0.003, 0.01, 0.05])
def test_choose_lambda_hits_the_target_median_delta(target):
    G, y, w, task = _data(N=1500, d=20, seed=10)
    members = torch.tensor(sample_subsets(6, 3, 2, seed=10))
    gram = _projection_gram(20, seed=1)
    train = torch.tensor(np.random.default_rng(1).random(len(y)) < 0.8)
    theta_norm = 40.0
    lam, fit, deltas = choose_lambda(
        *_tensors(G, y, w, task), members, train, gram, theta_norm, target_delta=target, rtol=0.05
    )
    assert lam > 0 and fit.lam == lam
    assert deltas.shape == (members.shape[0],) and deltas.dtype == torch.float64
    assert abs(float(np.median(deltas.numpy())) / target - 1) <= 0.05
    torch.testing.assert_close(deltas, relative_distance(fit.u, gram, theta_norm))
    assert bool(fit.converged.all())
    again = fit_subsets(*_tensors(G, y, w, task), members, lam, train_mask=train, tol=1e-9)
    assert ((again.u - fit.u).norm(dim=1) / again.u.norm(dim=1)).max() < 1e-4


def test_choose_lambda_starts_from_the_quadratic_model(monkeypatch):
    # near-quadratic regime: the model's lam is within rtol, so a single real fit is needed
    G, y, w, task = _data(N=3000, d=30, n=6, seed=25)
    members = torch.tensor(sample_subsets(6, 3, 2, seed=25))
    fits = []
    real_fit = lam_search.fit_prepared
    monkeypatch.setattr(lam_search, "fit_prepared", lambda *a: fits.append(a[2]) or real_fit(*a))
    lam, fit, deltas = choose_lambda(*_tensors(G, y, w, task), members, None, _projection_gram(30), 40.0, 0.003)
    assert abs(float(np.median(deltas.numpy())) / 0.003 - 1) <= 0.05
    assert len(fits) == 1 and fits[0] == lam


def test_lambda_search_estimator_matches_choose_lambda():
    G, y, w, task = _data(N=1500, d=20, seed=10)
    members = torch.tensor(sample_subsets(6, 3, 2, seed=10))
    gram = _projection_gram(20, seed=1)
    train = torch.tensor(np.random.default_rng(1).random(len(y)) < 0.8)
    lam, fit, deltas = choose_lambda(*_tensors(G, y, w, task), members, train, gram, 40.0, 0.01, rtol=0.05)
    search = LambdaSearch(0.01, rtol=0.05)
    assert not hasattr(search, "lam_")
    assert search.fit(*_tensors(G, y, w, task), members, train, gram, 40.0) is search
    assert search.lam_ == lam and search.fit_.lam == lam
    assert torch.equal(search.fit_.u, fit.u) and torch.equal(search.deltas_, deltas)
    assert search.median_delta_ == float(np.median(deltas.numpy()))
    assert search.lam_start_ > 0 and search.n_fits_ >= 1
    params = search.get_params()
    assert params["target_delta"] == 0.01 and params["rtol"] == 0.05 and params["lam_init"] is None
    again = LambdaSearch(**params).fit(*_tensors(G, y, w, task), members, train, gram, 40.0)
    assert again.lam_ == lam
    assert search.set_params(rtol=0.1) is search and search.rtol == 0.1
    with pytest.raises(ValueError, match="'rtoll'"):
        search.set_params(rtoll=0.1)
    with pytest.raises(ValueError, match="'rtol'"):  # parameters are checked by fit
        LambdaSearch(rtol=2.0).fit(*_tensors(G, y, w, task), members, train, gram, 40.0)


@pytest.mark.parametrize("lam_init", [1e-6, 1e5])
def test_lambda_search_brackets_from_either_side(lam_init):
    # far below the answer the median delta is too large (lam goes up), far above too small
    # (lam goes down); both searches end at the target
    G, y, w, task = _data(N=1500, d=20, seed=15)
    members = torch.tensor(sample_subsets(6, 3, 2, seed=15))
    gram = _projection_gram(20, seed=2)
    search = LambdaSearch(0.01, lam_init=lam_init).fit(*_tensors(G, y, w, task), members, None, gram, 40.0)
    assert search.lam_start_ == lam_init and search.n_fits_ >= 3
    assert abs(search.median_delta_ / 0.01 - 1) <= 0.05
    assert (search.lam_ > lam_init) == (lam_init < 1.0)


@pytest.mark.parametrize(("lam_init", "target", "message"), [(1e-10, 0.01, "is still"), (1e3, 100.0, "is only")])
def test_lambda_search_gives_up_after_max_decades_in_either_direction(lam_init, target, message):
    G, y, w, task = _data(N=800, d=10, n=4, seed=16)
    members = torch.tensor(sample_subsets(4, 2, 1, seed=16))
    search = LambdaSearch(target, lam_init=lam_init, max_decades=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(TargetDeltaUnreachable, match=message):
            search.fit(*_tensors(G, y, w, task), members, None, torch.eye(10), 1.0)


def test_choose_lambda_one_class_subsets_reach_any_target():
    G, y, w, task = _data(N=1000, d=15, seed=11)
    y = np.ones_like(y)  # every advantage positive: the data are "separable" along the mean
    G = G + 0.5
    members = torch.tensor(sample_subsets(6, 3, 1, seed=11))
    lam, fit, deltas = choose_lambda(*_tensors(G, y, w, task), members, None, torch.eye(15), 1.0, target_delta=0.5)
    assert abs(float(np.median(deltas.numpy())) / 0.5 - 1) <= 0.05
    assert torch.isfinite(fit.u).all()


def test_choose_lambda_without_signal_raises():
    G, y, w, task = _data(N=600, d=10, seed=12)
    members = torch.tensor(sample_subsets(6, 3, 1, seed=12))
    with pytest.raises(ValueError, match="target_delta"):
        choose_lambda(*_tensors(G, y, np.zeros_like(w), task), members, None, torch.eye(10), 1.0)


def test_choose_lambda_unreachable_target_raises():
    # Labels independent of the features: the unregularized solution is small and finite,
    # so a huge target distance cannot be reached by lowering lam.
    rng = np.random.default_rng(13)
    N, d = 3000, 5
    G = rng.normal(size=(N, d))
    y = np.where(rng.random(N) < 0.5, 1.0, -1.0)
    w = np.ones(N)
    task = np.arange(N) % 3
    members = torch.tensor([[True, True, False], [False, True, True], [True, False, True]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(ValueError, match="cannot be reached"):
            choose_lambda(
                *_tensors(G, y, w, task), members, None, torch.eye(d), 1.0, target_delta=100.0, max_decades=8
            )


def test_choose_lambda_validates_inputs():
    G, y, w, task = _data(N=300, d=5, seed=14)
    members = torch.tensor(sample_subsets(6, 3, 1, seed=14))
    args = (*_tensors(G, y, w, task), members, None)
    with pytest.raises(ValueError, match="'gram'"):
        choose_lambda(*args, torch.eye(4), 1.0)
    with pytest.raises(ValueError, match="'theta_norm'"):
        choose_lambda(*args, torch.eye(5), 0.0)
    with pytest.raises(ValueError, match="'target_delta'"):
        choose_lambda(*args, torch.eye(5), 1.0, target_delta=-0.1)
    with pytest.raises(ValueError, match="'rtol'"):
        choose_lambda(*args, torch.eye(5), 1.0, rtol=1.5)
