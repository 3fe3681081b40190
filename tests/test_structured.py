"""The structured (per-layer Khatri-Rao) projector: exactness, adjoint, gram, spec, energy split, fallback."""

from __future__ import annotations

import json
import warnings

import gymnasium as gym
import pytest
import torch
from torch import nn

from policygradex.config import EstimateConfig
from policygradex.errors import UserError
from policygradex.estimate.features import FeatureStore, build_projector, exact_grads, flat_params, projected_grads, unflatten
from policygradex.estimate.projection import GaussianProjector
from policygradex.estimate.projectors import projector_from_spec
from policygradex.estimate.structured import StructuredFallbackWarning, StructuredProjector, allocate
from policygradex.rl.networks import ActorCritic

IN_DIM = 7
SPACES = {"categorical": gym.spaces.Discrete(3), "gaussian": gym.spaces.Box(-1.0, 1.0, shape=(2,))}


def make_actor(space: gym.Space, seed: int = 0, hidden=(16, 16, 16), scale: float = 0.5) -> nn.Module:
    torch.manual_seed(seed)
    actor = ActorCritic(IN_DIM, space, hidden=hidden).actor
    with torch.no_grad():
        for p in actor.parameters():
            p.normal_(0.0, scale)
    return actor


def make_batch(actor: nn.Module, n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, IN_DIM, generator=gen)
    if getattr(actor, "kind", "categorical") == "categorical":
        a = torch.randint(0, 3, (n,), generator=gen)
    else:
        a = torch.randn(n, actor.act_dim, generator=gen)
    return x, a


def matrix(proj) -> torch.Tensor:
    """P as [p, d], read through map_back (P = map_back(I_d)^T)."""
    return proj.map_back(torch.eye(proj.d, dtype=proj.dtype)).T


def fit_quiet(actor, x, a, **kw) -> StructuredProjector:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StructuredFallbackWarning)
        return StructuredProjector.fit(actor, x, a, **kw)


@pytest.mark.parametrize("kind", sorted(SPACES))
def test_features_equal_exact_projection_of_vmap_grads(kind: str) -> None:
    actor = make_actor(SPACES[kind], seed=2)
    x, a = make_batch(actor, 45)
    proj = StructuredProjector.fit(actor, x, a, d=40, seed=5)
    assert proj.fallback == {} and len(proj.kr) == 3
    assert [layer.role for layer in proj.layers] == ["khatri_rao"] * 3 + ["dense"]
    P = matrix(proj)
    G = exact_grads(actor, x, a)
    expected = G @ P
    torch.testing.assert_close(proj.project(G), expected, rtol=1e-4, atol=1e-4)  # the generic product
    for chunk in (1, 8, 45, 512):  # the batched forward/backward route
        got = projected_grads(actor, x, a, proj, chunk_size=chunk)
        assert got.shape == (45, 40) and got.dtype == torch.float32
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_identity_dense_part_when_it_gets_all_its_coordinates() -> None:
    torch.manual_seed(0)
    actor = ActorCritic(IN_DIM, SPACES["categorical"], hidden=(8, 8)).actor  # PPO init: energy in the last layer
    x, a = make_batch(actor, 30)
    proj = StructuredProjector.fit(actor, x, a, d=60, seed=0)
    assert proj.dense_identity and proj.d_dense == proj.p_dense == 8 * 3 + 3 + 8 + 8
    P = matrix(proj)
    torch.testing.assert_close(P[proj.dense_index][:, proj.dense_slice], torch.eye(proj.d_dense))
    torch.testing.assert_close(projected_grads(actor, x, a, proj, chunk_size=7), exact_grads(actor, x, a) @ P, rtol=1e-4, atol=1e-4)


def test_map_back_is_the_adjoint_and_gram_is_exact() -> None:
    actor = make_actor(SPACES["gaussian"]).double()
    x, a = make_batch(actor, 20)
    proj = StructuredProjector.fit(actor, x, a, d=30, seed=1, dtype=torch.float64)
    g = torch.randn(6, proj.p, dtype=torch.float64)
    u = torch.randn(6, proj.d, dtype=torch.float64)
    torch.testing.assert_close((proj.project(g) * u).sum(1), (g * proj.map_back(u)).sum(1), rtol=1e-10, atol=1e-10)
    P = matrix(proj)
    torch.testing.assert_close(proj.gram(), P.T @ P, rtol=1e-10, atol=1e-10)
    # Delta W = U diag(u) V^T per Khatri-Rao layer, in the flat_params order unflatten expects
    U, V = proj.factors()[0]
    layer = proj.kr[0]
    step = unflatten(proj.map_back(u[0]), actor)
    torch.testing.assert_close(step[layer.weight], U @ torch.diag(u[0, proj.slices[0]]) @ V.T)
    assert torch.count_nonzero(step[layer.bias]) > 0  # biases live in the dense part


def test_inner_products_preserved_in_expectation() -> None:
    """E[P P^T] = I: averaged over seeds, <P^T g, P^T h> -> <g, h> and ||P^T g||^2 -> ||g||^2."""
    actor = make_actor(SPACES["categorical"], hidden=(12, 12))
    x, a = make_batch(actor, 40)
    G = exact_grads(actor, x, a).double()
    g, h = G[0], G[1] + 0.5 * G[0]
    ip, nrm = [], []
    for seed in range(300):
        proj = StructuredProjector.fit(actor, x, a, d=24, seed=seed, dtype=torch.float64)
        pg, ph = proj.project(g), proj.project(h)
        ip.append(float(pg @ ph))
        nrm.append(float(pg @ pg))
    scale = float(g.norm() * h.norm())
    assert abs(sum(ip) / len(ip) - float(g @ h)) < 0.05 * scale
    assert sum(nrm) / len(nrm) == pytest.approx(float(g @ g), rel=0.05)


def test_spec_round_trip_regenerates_the_same_projector(tmp_path) -> None:
    actor = make_actor(SPACES["gaussian"])
    x, a = make_batch(actor, 25)
    proj = StructuredProjector.fit(actor, x, a, d=32, seed=9)
    spec = json.loads(json.dumps(proj.spec()))
    assert spec["kind"] == "structured" and sum(l["d"] for l in spec["layers"]) + spec["d_dense"] == 32
    assert {"layers", "dense", "d_dense", "params", "fallback", "energy", "fingerprint"} <= set(spec)
    again = projector_from_spec(spec)
    assert isinstance(again, StructuredProjector) and again.spec() == spec
    assert torch.equal(matrix(again), matrix(proj))
    # through the feature store's manifest
    g = projected_grads(actor, x, a, proj)
    task = {"g": g, "y": torch.ones(25), "w": torch.ones(25), "adv": torch.ones(25), "heldout": torch.zeros(25, dtype=torch.bool)}
    FeatureStore.write(tmp_path, ["t0"], [task], proj, float(flat_params(actor).norm()))
    store = FeatureStore.load(tmp_path)
    assert isinstance(store.projector, StructuredProjector)
    u = torch.randn(3, 32)
    assert torch.equal(store.projector.map_back(u), proj.map_back(u))
    with pytest.raises(UserError, match="differ"):
        projector_from_spec({**spec, "fingerprint": [0.0] * len(spec["fingerprint"])})
    with pytest.raises(UserError, match="missing"):
        projector_from_spec({k: v for k, v in spec.items() if k != "layers"})
    with pytest.raises(UserError, match="sum to d"):
        projector_from_spec({**spec, "d": 33, "fingerprint": None})


def test_energy_split_is_deterministic_and_follows_the_energy() -> None:
    actor = make_actor(SPACES["categorical"], seed=3)
    x, a = make_batch(actor, 64)
    one = StructuredProjector.fit(actor, x, a, d=48, seed=4)
    two = StructuredProjector.fit(actor, x, a, d=48, seed=4)
    assert one.spec() == two.spec() and torch.equal(matrix(one), matrix(two))
    other_seed = StructuredProjector.fit(actor, x, a, d=48, seed=5)
    assert [layer.d for layer in other_seed.kr] == [layer.d for layer in one.kr]  # the split depends on the data only
    assert not torch.equal(matrix(other_seed), matrix(one))
    # the measured energies: ||delta||^2 ||a||^2 per Khatri-Rao weight, the rest in the dense part
    G = exact_grads(actor, x, a).double()
    for layer in one.kr:
        w = G[:, layer.weight_offset : layer.weight_offset + layer.out * layer.inp]
        assert one.energy["per_part"][layer.module] == pytest.approx(float(w.pow(2).sum(1).mean()), rel=1e-4)
    dense = G[:, one.dense_index].pow(2).sum(1).mean()
    assert one.energy["per_part"]["dense"] == pytest.approx(float(dense), rel=1e-4)
    # PPO's small last-layer init puts the energy in the dense part, and d follows it
    ppo = ActorCritic(IN_DIM, SPACES["categorical"], hidden=(32, 32, 32)).actor
    proj = StructuredProjector.fit(ppo, x, a, d=100, seed=0)
    assert proj.energy["fraction"]["dense"] > 0.9 and proj.d_dense > 80
    assert all(layer.d == 2 for layer in proj.kr)  # the floor: round(0.02 * 100)


def test_allocate() -> None:
    assert allocate([1.0, 1.0, 2.0], [100, 100, 100], 40, min_frac=0.0) == [10, 10, 20]
    assert sum(allocate([1e-9, 3.0, 1.0], [50, 50, 50], 40)) == 40
    assert allocate([0.0, 0.0], [10, 30], 8, min_frac=0.0) == [2, 6]  # no energy: by size
    assert allocate([1.0, 100.0], [100, 5], 20, min_frac=0.0) == [15, 5]  # capped at the part's size
    assert allocate([1.0, 1e6], [100, 100], 50) == [1, 49]  # floor of round(0.02 * 50) = 1
    with pytest.raises(ValueError, match="exceeds"):
        allocate([1.0], [5], 6)
    with pytest.raises(ValueError, match="smaller than"):
        allocate([1.0, 1.0, 1.0], [5, 5, 5], 2)


# -- fallback where the shortcut is not exact ---------------------------------------------------


class TwiceActor(nn.Module):
    """A layer applied twice per sample (weight tying across depth)."""

    kind = "categorical"

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(IN_DIM, 8)
        self.shared = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def log_prob(self, x, a):
        h = torch.tanh(self.inp(x))
        h = torch.tanh(self.shared(h))
        h = torch.tanh(self.shared(h))
        return torch.log_softmax(self.head(h), -1).gather(-1, a.long().unsqueeze(-1)).squeeze(-1)


class BatchCentered(nn.Module):
    """Normalises its input across the batch (per-sample semantics differ from the batch's)."""

    def forward(self, h):
        return h - h.mean(0, keepdim=True) if h.dim() == 2 else h


class BatchNormActor(TwiceActor):
    def __init__(self) -> None:
        super().__init__()
        self.norm = BatchCentered()

    def log_prob(self, x, a):
        h = torch.tanh(self.norm(self.inp(x)))
        h = torch.tanh(self.shared(h))
        return torch.log_softmax(self.head(h), -1).gather(-1, a.long().unsqueeze(-1)).squeeze(-1)


class OutsideUseActor(TwiceActor):
    """A layer whose weight is also used outside the layer (a penalty-like extra path)."""

    def log_prob(self, x, a):
        h = torch.tanh(self.inp(x))
        h = torch.tanh(self.shared(h)) + 0.1 * (h @ self.shared.weight.T).sin()
        return torch.log_softmax(self.head(h), -1).gather(-1, a.long().unsqueeze(-1)).squeeze(-1)


def _exact_and_structured(actor, n=24, d=30):
    x, a = make_batch(actor, n)
    with pytest.warns(StructuredFallbackWarning) as rec:
        proj = StructuredProjector.fit(actor, x, a, d=d, seed=2)
    P = matrix(proj)
    torch.testing.assert_close(projected_grads(actor, x, a, proj, chunk_size=10), exact_grads(actor, x, a) @ P, rtol=1e-4, atol=1e-4)
    return proj, str(rec[0].message)


def test_fallback_layer_used_twice() -> None:
    torch.manual_seed(0)
    proj, msg = _exact_and_structured(TwiceActor())
    assert set(proj.fallback) == {"shared.weight", "shared.bias"} and "called 2 times" in proj.fallback["shared.weight"]
    assert "shared.weight" in msg and "called 2 times" in msg
    assert [layer.module for layer in proj.kr] == ["inp"]
    assert {prm.name: prm.source for prm in proj.dense}["shared.weight"] == "vmap"


def test_fallback_normalization_across_the_batch() -> None:
    torch.manual_seed(0)
    proj, msg = _exact_and_structured(BatchNormActor())
    assert set(proj.fallback) == {name for name, _ in BatchNormActor().named_parameters()}
    assert proj.kr == [] and proj.d_dense == proj.d and "across the batch" in msg


def test_fallback_weight_used_outside_its_layer() -> None:
    torch.manual_seed(0)
    proj, msg = _exact_and_structured(OutsideUseActor())
    assert set(proj.fallback) == {"shared.weight", "shared.bias"}
    assert "not delta a^T" in proj.fallback["shared.weight"]


def test_fallback_parametrized_weight() -> None:
    from torch.nn.utils.parametrizations import weight_norm

    actor = make_actor(SPACES["categorical"])
    weight_norm(actor.net[2])
    proj, msg = _exact_and_structured(actor)
    assert set(proj.fallback) == {name for name, _ in actor.net[2].named_parameters(prefix="net.2")}
    assert "parametriz" in msg
    assert [layer.module for layer in proj.kr] == ["net.0", "net.4"]


def test_gaussian_log_std_is_dense_without_a_warning() -> None:
    actor = make_actor(SPACES["gaussian"])
    x, a = make_batch(actor, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StructuredFallbackWarning)
        proj = StructuredProjector.fit(actor, x, a, d=20)
    assert {prm.name: prm.source for prm in proj.dense}["log_std"] == "vmap" and proj.fallback == {}


# -- large networks and the pipeline's entry points ---------------------------------------------


def test_wide_network_runs_without_per_sample_gradients() -> None:
    """A 4-layer 512-wide policy (p ~ 0.5M): features for 256 rows without forming N x p gradients."""
    actor = ActorCritic(IN_DIM, SPACES["categorical"], hidden=(512, 512, 512)).actor
    x, a = make_batch(actor, 256)
    proj = StructuredProjector.fit(actor, x, a, d=64, seed=0, probe_rows=2)
    g = projected_grads(actor, x, a, proj, chunk_size=256)
    assert g.shape == (256, 64) and torch.isfinite(g).all()
    rows = exact_grads(actor, x[:2], a[:2])
    torch.testing.assert_close(g[:2], proj.project(rows), rtol=1e-3, atol=1e-5)


def test_projector_must_match_the_actor() -> None:
    actor = make_actor(SPACES["categorical"])
    x, a = make_batch(actor, 10)
    proj = StructuredProjector.fit(actor, x, a, d=20)
    other = make_actor(SPACES["categorical"], hidden=(16, 16, 8))
    with pytest.raises(ValueError):
        projected_grads(other, x, a, proj)


def test_build_projector_and_config_names() -> None:
    actor = make_actor(SPACES["categorical"])
    x, a = make_batch(actor, 10)
    assert isinstance(build_projector("dense", actor, x, a, 16, 0), GaussianProjector)
    assert isinstance(build_projector("gaussian", actor, x, a, 16, 0), GaussianProjector)
    assert isinstance(build_projector("structured", actor, x, a, 16, 0), StructuredProjector)
    with pytest.raises(UserError, match="--projector"):
        build_projector("sparse", actor, x, a, 16, 0)
    with pytest.raises(UserError, match="--projector structured"):
        build_projector("structured", actor, x, a, 2, 0)  # fewer coordinates than parts
    assert EstimateConfig(projector="gaussian").projector == "dense"  # old configs keep working
    assert EstimateConfig(projector="structured").projector == "structured"
    with pytest.raises(Exception):
        EstimateConfig(projector="sparse")


def test_cli_rejects_an_unknown_projector(tmp_path) -> None:
    from conftest import assert_user_error, run_cli

    proc = run_cli("run", "--suite", "cartpole-planted", "--steps", "64", "--projector", "sparse", "--out", str(tmp_path / "o"))
    assert_user_error(proc, "--projector")


def test_a_fresh_process_loads_a_structured_store(tmp_path) -> None:
    """projector_from_spec finds the structured kind without anyone importing its module first."""
    import subprocess
    import sys

    actor = make_actor(SPACES["categorical"])
    x, a = make_batch(actor, 12)
    proj = StructuredProjector.fit(actor, x, a, d=20, seed=3)
    task = {"g": projected_grads(actor, x, a, proj), "y": torch.ones(12), "w": torch.ones(12), "adv": torch.ones(12),
            "heldout": torch.zeros(12, dtype=torch.bool)}
    FeatureStore.write(tmp_path, ["t0"], [task], proj, 1.0)
    code = ("import sys; from policygradex.estimate.features import FeatureStore; "
            "s = FeatureStore.load(sys.argv[1]); print(type(s.projector).__name__, s.projector.d)")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["StructuredProjector", "20"]
