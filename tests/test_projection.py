"""The Gaussian projector: reproducible from its seed, JL norms, adjoint, gram, spec round trip."""

from __future__ import annotations

import json

import pytest
import torch

from policygradex.errors import UserError
from policygradex.estimate.projection import GaussianProjector, Projector, block_seed
from policygradex.estimate.projectors import projector_from_spec


def materialize(proj: Projector) -> torch.Tensor:
    """P as a [p, d] matrix, read through the public interface (P = project(I_p))."""
    return proj.project(torch.eye(proj.p, dtype=proj.dtype))


def test_same_seed_same_matrix_whatever_the_caching() -> None:
    a = GaussianProjector(1000, d=32, seed=7, block_rows=128)
    b = GaussianProjector(1000, d=32, seed=7, block_rows=128, cache_bytes=0)  # regenerated each call
    g = torch.randn(5, 1000)
    u = torch.randn(3, 32)
    assert torch.equal(a.project(g), b.project(g))
    assert torch.equal(a.map_back(u), b.map_back(u))
    assert torch.equal(materialize(a), materialize(b))
    # blocks generated out of order are the same blocks
    c = GaussianProjector(1000, d=32, seed=7, block_rows=128)
    assert torch.equal(c.block(5), a.block(5)) and torch.equal(c.block(0), a.block(0))


def test_different_seed_or_block_size_different_matrix() -> None:
    base = materialize(GaussianProjector(300, d=16, seed=0, block_rows=64))
    assert not torch.allclose(base, materialize(GaussianProjector(300, d=16, seed=1, block_rows=64)))
    assert not torch.allclose(base, materialize(GaussianProjector(300, d=16, seed=0, block_rows=100)))
    assert block_seed(0, 0) != block_seed(0, 1) != block_seed(1, 0)


def test_results_do_not_depend_on_batch_split() -> None:
    proj = GaussianProjector(2500, d=40, seed=3, block_rows=512)
    g = torch.randn(64, 2500)
    whole = proj.project(g)
    parts = torch.cat([proj.project(g[i : i + 7]) for i in range(0, 64, 7)])
    torch.testing.assert_close(parts, whole, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(proj.project(g[3]), whole[3], rtol=1e-5, atol=1e-4)  # unbatched row
    u = torch.randn(10, 40)
    back = proj.map_back(u)
    torch.testing.assert_close(torch.stack([proj.map_back(r) for r in u]), back, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(proj.map_back(u.reshape(2, 5, 40)), back.reshape(2, 5, 2500))


def test_entries_have_variance_one_over_d() -> None:
    proj = GaussianProjector(5000, d=400, seed=0)
    P = materialize(proj)
    assert abs(P.mean().item()) < 1e-3
    assert P.var().item() * 400 == pytest.approx(1.0, abs=0.01)


def test_johnson_lindenstrauss_norms() -> None:
    proj = GaussianProjector(5000, d=400, seed=11)
    g = torch.randn(50, 5000, generator=torch.Generator().manual_seed(0))
    g[:25] *= torch.linspace(0.01, 100, 25).unsqueeze(1)  # scale does not matter
    ratio = proj.project(g).pow(2).sum(1) / g.pow(2).sum(1)
    assert (ratio - 1).abs().max().item() < 0.3
    assert ratio.mean().item() == pytest.approx(1.0, abs=0.05)  # std of the mean ~ 0.01


def test_map_back_is_the_adjoint() -> None:
    proj = GaussianProjector(3000, d=50, seed=5, dtype=torch.float64, block_rows=700)
    g = torch.randn(8, 3000, dtype=torch.float64)
    u = torch.randn(8, 50, dtype=torch.float64)
    lhs = (proj.project(g) * u).sum(1)
    rhs = (g * proj.map_back(u)).sum(1)
    torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=1e-10)
    p32 = GaussianProjector(3000, d=50, seed=5, block_rows=700)
    g32, u32 = g.float(), u.float()
    torch.testing.assert_close((p32.project(g32) * u32).sum(1), (g32 * p32.map_back(u32)).sum(1), rtol=1e-4, atol=1e-3)


def test_gram_equals_explicit_product() -> None:
    proj = GaussianProjector(900, d=24, seed=2, block_rows=256)
    P = materialize(proj)
    G = proj.gram()
    torch.testing.assert_close(G, P.T @ P, rtol=1e-5, atol=1e-4)
    assert G.shape == (24, 24)
    u = torch.randn(24)
    assert (u @ G @ u).item() == pytest.approx(proj.map_back(u).pow(2).sum().item(), rel=1e-4)
    G[0, 0] = 123.0  # the cached gram is not exposed to mutation
    torch.testing.assert_close(proj.gram(), P.T @ P, rtol=1e-5, atol=1e-4)


def test_generic_gram_matches_blocked_gram() -> None:
    proj = GaussianProjector(500, d=70, seed=4, dtype=torch.float64, block_rows=128)
    torch.testing.assert_close(Projector._compute_gram(proj), proj.gram(), rtol=1e-10, atol=1e-10)


def test_spec_round_trip_through_json() -> None:
    proj = GaussianProjector(1234, d=30, seed=99, dtype=torch.float64, block_rows=300)
    spec = json.loads(json.dumps(proj.spec()))
    assert {"kind", "p", "d", "seed", "dtype", "block_rows"} <= set(spec)
    assert spec["kind"] == "gaussian" and spec["dtype"] == "float64"
    again = projector_from_spec(spec)
    assert isinstance(again, GaussianProjector)
    assert (again.p, again.d, again.seed, again.dtype, again.block_rows) == (1234, 30, 99, torch.float64, 300)
    assert torch.equal(materialize(again), materialize(proj))
    assert again.spec() == spec


def test_bad_specs_are_user_errors() -> None:
    spec = GaussianProjector(100, d=8, seed=1).spec()
    with pytest.raises(UserError, match="unknown kind"):
        projector_from_spec({**spec, "kind": "nope"})
    with pytest.raises(UserError, match="dtype"):
        projector_from_spec({**spec, "dtype": "int8"})
    with pytest.raises(UserError, match="missing"):
        projector_from_spec({k: v for k, v in spec.items() if k != "seed"})
    with pytest.raises(UserError, match="differs"):
        projector_from_spec({**spec, "fingerprint": [0.0, 0.0, 0.0, 0.0]})


def test_input_validation() -> None:
    proj = GaussianProjector(100, d=8)
    with pytest.raises(ValueError, match=r"\[\.\.\., 100\]"):
        proj.project(torch.randn(3, 99))
    with pytest.raises(ValueError, match=r"\[\.\.\., 8\]"):
        proj.map_back(torch.randn(3, 9))
    with pytest.raises(ValueError, match="seed"):
        GaussianProjector(100, d=8, seed=-1)
    with pytest.raises(ValueError, match="dtype"):
        GaussianProjector(100, d=8, dtype=torch.int32)
