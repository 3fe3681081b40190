"""Per-sample projected gradients and the feature store."""

from __future__ import annotations

import json

import gymnasium as gym
import pytest
import torch

from policygradex.errors import UserError
from policygradex.estimate.features import (
    FeatureStore,
    actor_params,
    build_features,
    exact_grads,
    flat_params,
    projected_grads,
    unflatten,
)
from policygradex.estimate.projection import GaussianProjector
from policygradex.rl.networks import ActorCritic

IN_DIM = 7


def make_actor(space: gym.Space, seed: int = 0) -> torch.nn.Module:
    """An actor whose parameters are all of order one (PPO's 0.01 output gain would make most
    gradients tiny and the comparisons below less telling)."""
    torch.manual_seed(seed)
    actor = ActorCritic(IN_DIM, space, hidden=(16, 16, 16)).actor
    with torch.no_grad():
        for p in actor.parameters():
            p.normal_(0.0, 0.5)
    return actor


def make_batch(actor: torch.nn.Module, n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, IN_DIM, generator=gen)
    if actor.kind == "categorical":
        a = torch.randint(0, actor.act_dim, (n,), generator=gen)
    else:
        a = torch.randn(n, actor.act_dim, generator=gen)
    return x, a


ACTION_SPACES = {
    "categorical": gym.spaces.Discrete(2),
    "gaussian": gym.spaces.Box(-1.0, 1.0, shape=(3,)),
}


def autograd_grad(actor: torch.nn.Module, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """The reference: plain autograd on one unbatched sample, flattened in named_parameters order."""
    params = [p for _, p in actor.named_parameters()]
    logp = actor.log_prob(x, a)
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(logp, params)])


@pytest.mark.parametrize("kind", sorted(ACTION_SPACES))
def test_vmap_grads_equal_autograd_per_sample(kind: str) -> None:
    actor = make_actor(ACTION_SPACES[kind])
    x, a = make_batch(actor, 6)
    G = exact_grads(actor, x, a, chunk_size=4)
    p = flat_params(actor).numel()
    assert G.shape == (6, p)
    for t in range(6):
        torch.testing.assert_close(G[t], autograd_grad(actor, x[t], a[t]), rtol=1e-5, atol=1e-6)
    assert G.abs().sum(1).min() > 0


@pytest.mark.parametrize("kind", sorted(ACTION_SPACES))
def test_projected_equals_exact_times_p(kind: str) -> None:
    actor = make_actor(ACTION_SPACES[kind], seed=2)
    p = flat_params(actor).numel()
    proj = GaussianProjector(p, d=40, seed=5, block_rows=300)
    P = proj.map_back(torch.eye(proj.d)).T  # [p, d]
    x, a = make_batch(actor, 37)
    expected = exact_grads(actor, x, a) @ P
    for chunk in (1, 8, 37, 512):
        got = projected_grads(actor, x, a, proj, chunk_size=chunk)
        assert got.shape == (37, 40) and got.dtype == torch.float32
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_eval_mode_restored_and_actor_untouched() -> None:
    actor = make_actor(ACTION_SPACES["categorical"])
    actor.train()
    before = flat_params(actor).clone()
    x, a = make_batch(actor, 5)
    proj = GaussianProjector(before.numel(), d=8)
    projected_grads(actor, x, a, proj)
    assert actor.training
    assert torch.equal(flat_params(actor), before)
    assert all(p.grad is None for p in actor.parameters())


def test_param_helpers_round_trip() -> None:
    actor = make_actor(ACTION_SPACES["gaussian"])
    params = actor_params(actor)
    assert list(params) == [n for n, _ in actor.named_parameters()]
    assert all(not t.requires_grad for t in params.values())
    vec = flat_params(actor)
    assert vec.shape == (sum(t.numel() for t in params.values()),)
    back = unflatten(vec, actor)
    assert list(back) == list(params)
    for name, t in params.items():
        assert torch.equal(back[name], t)
    with pytest.raises(ValueError, match="parameter count"):
        unflatten(vec[:-1], actor)


def test_projected_grads_checks_sizes_and_reports_progress() -> None:
    actor = make_actor(ACTION_SPACES["categorical"])
    p = flat_params(actor).numel()
    x, a = make_batch(actor, 10)
    with pytest.raises(ValueError, match="projector.p"):
        projected_grads(actor, x, a, GaussianProjector(p + 1, d=8))
    with pytest.raises(ValueError, match="chunk_size"):
        projected_grads(actor, x, a, GaussianProjector(p, d=8), chunk_size=0)
    with pytest.raises(ValueError, match=r"\[N\] or \[N, act\]"):
        projected_grads(actor, x, a[:9], GaussianProjector(p, d=8))
    done: list[int] = []
    projected_grads(actor, x, a, GaussianProjector(p, d=8), chunk_size=4, progress=done.append)
    assert done == [4, 4, 2]


def make_features(n_per_task: tuple[int, ...] = (12, 7, 9), d: int = 16):
    actor = make_actor(ACTION_SPACES["categorical"])
    proj = GaussianProjector(flat_params(actor).numel(), d=d, seed=3)
    xs, acts, advs, helds = [], [], [], []
    for i, n in enumerate(n_per_task):
        x, a = make_batch(actor, n, seed=10 + i)
        adv = torch.randn(n, generator=torch.Generator().manual_seed(20 + i))
        adv[0] = 0.0
        xs.append(x)
        acts.append(a)
        advs.append(adv)
        helds.append(torch.arange(n) % 4 == 0)
    rows: list[int] = []
    per_task = build_features(actor, xs, acts, advs, helds, proj, chunk_size=5, progress=rows.append)
    assert sum(rows) == sum(n_per_task)
    return actor, proj, xs, acts, advs, helds, per_task


def test_build_features_fields() -> None:
    actor, proj, xs, acts, advs, helds, per_task = make_features()
    assert len(per_task) == 3
    for x, a, adv, held, feats in zip(xs, acts, advs, helds, per_task):
        n = x.shape[0]
        assert feats["g"].shape == (n, 16) and feats["g"].dtype == torch.float32
        torch.testing.assert_close(feats["g"], projected_grads(actor, x, a, proj))
        assert torch.equal(feats["adv"], adv)
        assert torch.equal(feats["w"], adv.abs())
        assert set(feats["y"].tolist()) <= {-1.0, 1.0}
        assert feats["y"][0] == 1.0 and feats["w"][0] == 0.0  # zero advantage: +1 with weight 0
        assert torch.equal(feats["y"][1:], torch.sign(adv[1:]))
        assert torch.equal(feats["heldout"], held) and feats["heldout"].dtype == torch.bool


def test_build_features_rejects_bad_input() -> None:
    actor, proj, xs, acts, advs, helds, _ = make_features()
    with pytest.raises(ValueError, match="adv_per_task"):
        build_features(actor, xs, acts, advs[:2], helds, proj)
    bad = [advs[0].clone(), *advs[1:]]
    bad[0][3] = float("nan")
    with pytest.raises(UserError, match="NaN"):
        build_features(actor, xs, acts, bad, helds, proj)
    with pytest.raises(ValueError, match="BoolTensor"):
        build_features(actor, xs, acts, advs, [h.float() for h in helds], proj)


def test_store_round_trip(tmp_path) -> None:
    _, proj, _, _, _, _, per_task = make_features()
    names = ["a", "b", "c"]
    written = FeatureStore.write(tmp_path / "feat", names, per_task, proj, theta_norm=3.5, extra={"note": "x"})
    assert (tmp_path / "feat" / "manifest.json").exists()
    manifest = json.loads((tmp_path / "feat" / "manifest.json").read_text())
    assert manifest["counts"] == [12, 7, 9] and manifest["projector"] == proj.spec()
    assert sorted(manifest["files"]) == ["task_000.pt", "task_001.pt", "task_002.pt"]

    store = FeatureStore.load(tmp_path / "feat")
    assert store.task_names == names and store.n_tasks == 3
    assert store.theta_norm == 3.5 and store.extra == {"note": "x"}
    assert store.projector.spec() == proj.spec()
    assert torch.equal(store.task, torch.tensor([0] * 12 + [1] * 7 + [2] * 9))
    for field, attr in (("g", "G"), ("y", "y"), ("w", "w"), ("adv", "adv"), ("heldout", "heldout")):
        expected = torch.cat([t[field] for t in per_task])
        assert torch.equal(getattr(store, attr), expected)
        assert torch.equal(getattr(written, attr), expected)
    m = store.mask(tasks=[1], heldout=False)
    assert torch.equal(store.G[m], per_task[1]["g"][~per_task[1]["heldout"]])
    # the regenerated projector maps back exactly like the original
    u = torch.randn(16)
    assert torch.equal(store.projector.map_back(u), proj.map_back(u))


def test_rewrite_with_fewer_tasks_removes_stale_files(tmp_path) -> None:
    _, proj, _, _, _, _, per_task = make_features()
    FeatureStore.write(tmp_path, ["a", "b", "c"], per_task, proj, theta_norm=1.0)
    FeatureStore.write(tmp_path, ["a", "b"], per_task[:2], proj, theta_norm=1.0)
    assert not (tmp_path / "task_002.pt").exists()
    assert FeatureStore.load(tmp_path).n_tasks == 2


def test_corrupted_task_file_is_a_user_error(tmp_path) -> None:
    _, proj, _, _, _, _, per_task = make_features()
    FeatureStore.write(tmp_path, ["a", "b", "c"], per_task, proj, theta_norm=1.0)
    path = tmp_path / "task_001.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="task_001.pt"):
        FeatureStore.load(tmp_path)


def test_truncated_files_are_user_errors(tmp_path) -> None:
    _, proj, _, _, _, _, per_task = make_features()
    FeatureStore.write(tmp_path, ["a", "b", "c"], per_task, proj, theta_norm=1.0)
    task = tmp_path / "task_002.pt"
    good = task.read_bytes()
    task.write_bytes(good[: len(good) // 2])
    with pytest.raises(UserError, match="task_002.pt"):
        FeatureStore.load(tmp_path)
    task.write_bytes(good)
    manifest = tmp_path / "manifest.json"
    text = manifest.read_text()
    manifest.write_text(text[: len(text) // 2])
    with pytest.raises(UserError, match="manifest.json"):
        FeatureStore.load(tmp_path)
    manifest.unlink()
    with pytest.raises(UserError, match="no feature store"):
        FeatureStore.load(tmp_path)


def test_write_validates_input(tmp_path) -> None:
    _, proj, _, _, _, _, per_task = make_features()
    with pytest.raises(ValueError, match="task names"):
        FeatureStore.write(tmp_path, ["a", "b"], per_task, proj, theta_norm=1.0)
    bad = [dict(per_task[0]), *per_task[1:]]
    bad[0]["w"] = bad[0]["w"][:-1]
    with pytest.raises(ValueError, match="w has"):
        FeatureStore.write(tmp_path, ["a", "b", "c"], bad, proj, theta_norm=1.0)
    assert not (tmp_path / "manifest.json").exists()
