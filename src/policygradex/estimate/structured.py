"""Structured per-layer projection of per-sample policy gradients (docs/projector.md).

The dense route (:class:`.projection.GaussianProjector`) materialises every per-sample gradient
``g_t`` (``p`` floats) and multiplies it by a ``p x d`` Gaussian: ``2 N p d`` flops, about 150x
one batched forward + backward of the policy.  A linear layer ``z = W a + b`` has per-sample
gradients ``dW = delta_t a_t^T`` and ``db = delta_t`` (``delta_t = d log pi_t / d z_t``), so a
projection built from the layer's structure never needs ``dW``:

* **Khatri-Rao layers** (every hidden linear layer): coordinate ``i`` of the layer's block is
  ``<vec(u_i v_i^T), vec(dW)> / sqrt(d_l) = (u_i^T delta_t)(v_i^T a_t) / sqrt(d_l)`` with
  ``E[u u^T] = I_out``, ``v_i ~ N(0, I_in)``: two thin matmuls per layer.  The block's column
  ``vec(u_i v_i^T) / sqrt(d_l)`` has ``E[col col^T] = E[u u^T] (x) E[v v^T] / d_l = I / d_l``, so
  ``E[P_l P_l^T] = I`` and inner products are preserved in expectation, as with the dense
  Gaussian.  Map back: ``Delta W = U diag(c) V^T / sqrt(d_l)``.
* **The dense part**: the last linear layer (weight and bias), the biases of every other layer,
  and every parameter the shortcut does not cover, projected by a small dense random matrix.
  With PPO's small last-layer init most of ``||g||^2`` sits here.  When the split gives it as
  many coordinates as it has parameters it is the identity (exact).

By default the directions are *orthogonal* rather than i.i.d. (:meth:`StructuredProjector.factors`,
:meth:`StructuredProjector.dense_matrix`): a Haar-orthogonal dense block scaled by
``sqrt(p_dense / d_dense)``, and Khatri-Rao ``u_i`` orthogonal in groups of ``out`` with norm
``sqrt(out)``.  ``E[P P^T] = I`` still holds and the error variance drops (measured: 0.67-0.92x
the dense route's inner-product error, against 1.04-1.31x for i.i.d.).

``P`` is block diagonal over these parts (up to the parameter order), and the ``d`` feature
coordinates are split among the parts in proportion to their measured gradient energy
``E_l = mean_t ||delta_t||^2 ||a_t||^2`` (weights; ``||delta_t||^2`` for biases; ``||g_t||^2`` of
the other dense parameters), measured by :meth:`StructuredProjector.fit` on the collected data.
For a sum ``sum_l A_l / d_l`` of per-part error variances with ``A_l ~ E_l^2`` the optimal
split is ``d_l ~ E_l``.  Every part keeps at least ``min_frac x d`` coordinates (and at most its
parameter count).

Where the shortcut is not exact, the affected parameters move to the dense part and their
per-sample gradients come from ``torch.func`` (``vmap(grad)`` over those parameters only), and
``fit`` says so (a :class:`StructuredFallbackWarning` and ``spec()["fallback"]``):

* a linear layer called more than once (or never) per forward pass, or on inputs with extra
  dimensions (its gradient is a sum of outer products);
* a parametrized weight (``torch.nn.utils.parametrize``: weight norm, spectral norm, ...) or a
  weight shared by several modules;
* a network whose samples interact within a batch (normalisation across the batch): every
  parameter falls back;
* any layer whose ``delta_t a_t^T`` differs numerically from its ``vmap(grad)`` gradient on the
  probe rows (e.g. a weight also used outside its module).

Parameters that do not belong to a linear layer (e.g. a Gaussian policy's ``log_std``) are in
the dense part by design, computed the same way, without a warning.

The features themselves (:func:`structured_projected_grads`) come from one batched forward of
``sum_t log pi(a_t | x_t)`` with forward hooks that keep every linear layer's input ``a`` and
output ``z``, and one ``torch.autograd.grad`` to all the ``z`` at once; no weight gradient is
ever formed except the last layer's (``B x out x in``, small).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn.utils import parametrize

from ..errors import UserError
from .persample import LogProbModule, eval_mode, prepare_inputs
from .projection import (
    DEFAULT_BLOCK_ROWS,
    DEFAULT_CACHE_BYTES,
    GaussianProjector,
    Projector,
    _check_int,
    _dtype_from_name,
    _dtype_name,
    block_seed,
)

__all__ = [
    "StructuredProjector",
    "StructuredFallbackWarning",
    "LayerSpec",
    "DenseParam",
    "structured_projected_grads",
    "allocate",
]

#: Each part keeps at least this fraction of ``d`` (8 of 400), so that no layer is left out of
#: the step ``Delta = P u`` entirely.
DEFAULT_MIN_FRAC = 0.02
#: Rows (evenly spaced over the data) on which the per-part gradient energy is measured.
DEFAULT_ENERGY_ROWS = 4096
#: Rows on which the shortcut is checked against ``vmap(grad)``.
DEFAULT_PROBE_ROWS = 8
#: Relative tolerance of that check (float32 round-off is ~1e-6).
CHECK_RTOL = 1e-3
#: The orthogonal dense part is materialised (QR) up to this many entries (128 MB in float32).
ORTHO_MAX_ENTRIES = 2**25
#: Stream ids of the factor generators: Khatri-Rao layer ``j`` uses ``block_seed(seed, j)``,
#: the dense part's Gaussian the seed ``block_seed(seed, _DENSE_STREAM)``.
_DENSE_STREAM = 1 << 40


class StructuredFallbackWarning(UserWarning):
    """Part of the network falls back to the dense projection (the shortcut is not exact there)."""


@dataclass(frozen=True)
class LayerSpec:
    """A linear layer whose per-sample gradient is ``delta a^T`` (checked by ``fit``).

    ``role`` is ``"khatri_rao"`` (its weight gets ``d`` Khatri-Rao coordinates, its bias goes
    to the dense part) or ``"dense"`` (weight and bias in the dense part, ``d = 0``).
    """

    module: str
    weight: str
    bias: str | None
    out: int
    inp: int
    weight_offset: int
    bias_offset: int | None
    role: str
    d: int


@dataclass(frozen=True)
class DenseParam:
    """A parameter in the dense part; ``source`` says where its per-sample gradient comes from:
    ``"weight"`` / ``"bias"`` of the layer ``layer`` (``delta a^T`` / ``delta``) or ``"vmap"``."""

    name: str
    offset: int
    numel: int
    source: str
    layer: int | None


def _param_layout(actor: nn.Module) -> list[tuple[str, int, tuple[int, ...]]]:
    """``(name, offset, shape)`` of every parameter, in ``named_parameters`` (= ``flat_params``) order."""
    out, offset = [], 0
    for name, prm in actor.named_parameters():
        out.append((name, offset, tuple(prm.shape)))
        offset += prm.numel()
    return out


def allocate(energy: Sequence[float], caps: Sequence[int], d: int, min_frac: float = DEFAULT_MIN_FRAC) -> list[int]:
    """Split ``d`` coordinates among parts in proportion to ``energy``.

    Part ``k`` gets ``clip(c * energy_k, lo_k, caps_k)`` with ``lo_k = min(caps_k, max(1,
    round(min_frac * d)))`` (lowered to ``d // parts`` when ``d`` is too small for it) and ``c``
    such that the total is ``d``, then rounded to integers by largest remainders (ties to the
    earlier part).  All-zero energy splits by ``caps``.  Deterministic.
    """
    n = len(energy)
    if n == 0 or len(caps) != n:
        raise ValueError("energy and caps must be non-empty and of the same length")
    caps = [int(c) for c in caps]
    if d > sum(caps):
        raise ValueError(f"d = {d} exceeds the number of parameters ({sum(caps)})")
    if d < n:
        raise ValueError(f"d = {d} is smaller than the number of parts ({n})")
    e = [max(float(x), 0.0) for x in energy]
    if not all(math.isfinite(x) for x in e):
        raise ValueError(f"gradient energies must be finite, got {list(energy)}")
    if sum(e) <= 0:
        e = [float(c) for c in caps]
    floor = max(1, int(round(min_frac * d)))
    if floor * n > d:
        floor = max(1, d // n)
    lo = [min(c, floor) for c in caps]
    hi = caps

    def total(c: float) -> float:
        return sum(min(h, max(l_, c * x)) for x, l_, h in zip(e, lo, hi))

    if total(0.0) >= d:
        target = [float(l_) for l_ in lo]
    else:
        a, b = 0.0, 1.0
        while total(b) < d:
            b *= 2.0
            if b > 1e300:
                break
        for _ in range(200):
            mid = 0.5 * (a + b)
            if total(mid) < d:
                a = mid
            else:
                b = mid
        target = [min(h, max(l_, b * x)) for x, l_, h in zip(e, lo, hi)]
    alloc = [min(hi[k], max(lo[k], int(math.floor(target[k])))) for k in range(n)]
    # fix the total by largest remainders (ties to the earlier part)
    while sum(alloc) > d:
        k = max((k for k in range(n) if alloc[k] > lo[k]), key=lambda k: (alloc[k] - target[k], -k))
        alloc[k] -= 1
    while sum(alloc) < d:
        k = max((k for k in range(n) if alloc[k] < hi[k]), key=lambda k: (target[k] - alloc[k], -k))
        alloc[k] += 1
    return alloc


class StructuredProjector(Projector):
    """Per-layer projection: Khatri-Rao blocks for hidden linear layers, a dense Gaussian for the rest.

    Build one with :meth:`fit` (which needs the actor and data); :func:`.projectors.projector_from_spec`
    rebuilds it from ``spec()`` without either.  Features are ordered: the Khatri-Rao layers'
    blocks in parameter order, then the dense part.

    Args:
        p: number of actor parameters.
        d: feature dimension (the sum of the per-part ``d``).
        seed: seed of the factors.
        dtype: dtype of the factors and of every result.
        layers: the linear layers that use the shortcut (:class:`LayerSpec`).
        dense: the parameters of the dense part (:class:`DenseParam`), in parameter order.
        d_dense: coordinates of the dense part.
        params: the actor's parameter layout ``[(name, numel), ...]`` (checked before use).
        fallback: ``{parameter: reason}`` for parameters of linear layers that fell back.
        energy: informational record of the measured energies (stored in the spec).
        orthogonal: draw orthogonal instead of i.i.d. directions (see :meth:`factors` and
            :meth:`dense_matrix`): still ``E[P P^T] = I``, lower variance.  Part of the spec.
        block_rows: row blocks of the dense part's Gaussian when it is i.i.d. (part of the spec).
        cache_bytes: see :class:`.projection.GaussianProjector` (not part of the spec).
    """

    kind: ClassVar[str] = "structured"

    def __init__(
        self,
        p: int,
        d: int,
        seed: int,
        dtype: torch.dtype,
        layers: Sequence[LayerSpec],
        dense: Sequence[DenseParam],
        d_dense: int,
        params: Sequence[tuple[str, int]],
        fallback: dict[str, str] | None = None,
        energy: dict[str, Any] | None = None,
        orthogonal: bool = True,
        block_rows: int = DEFAULT_BLOCK_ROWS,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        super().__init__(p, d, seed, dtype)
        self.orthogonal = bool(orthogonal)
        self.layers = [LayerSpec(**layer) if isinstance(layer, dict) else layer for layer in layers]
        self.dense = [DenseParam(**prm) if isinstance(prm, dict) else prm for prm in dense]
        self.d_dense = _check_int("d_dense", d_dense, 0)
        self.params = [(str(n), int(k)) for n, k in params]
        self.fallback = dict(fallback or {})
        self.energy = dict(energy or {})
        self.block_rows = _check_int("block_rows", block_rows, 1)
        if sum(k for _, k in self.params) != self.p:
            raise ValueError(f"the parameter layout holds {sum(k for _, k in self.params)} entries, not p = {self.p}")
        self.kr = [layer for layer in self.layers if layer.role == "khatri_rao"]
        if any(layer.role not in ("khatri_rao", "dense") for layer in self.layers):
            raise ValueError("layer roles must be 'khatri_rao' or 'dense'")
        if any(layer.d < 1 for layer in self.kr):
            raise ValueError("every Khatri-Rao layer needs d >= 1")
        if sum(layer.d for layer in self.kr) + self.d_dense != self.d:
            raise ValueError(f"per-part d ({[layer.d for layer in self.kr]} + dense {self.d_dense}) does not sum to d = {self.d}")
        # every parameter entry is covered exactly once
        covered = torch.zeros(self.p, dtype=torch.int8)
        for layer in self.kr:
            covered[layer.weight_offset : layer.weight_offset + layer.out * layer.inp] += 1
        for prm in self.dense:
            covered[prm.offset : prm.offset + prm.numel] += 1
        if not bool((covered == 1).all()):
            raise ValueError("the Khatri-Rao layers and the dense part must cover every parameter exactly once")
        self.p_dense = sum(prm.numel for prm in self.dense)
        if (self.p_dense == 0) != (self.d_dense == 0):
            raise ValueError(f"the dense part has {self.p_dense} parameters but d_dense = {self.d_dense}")
        self.dense_index = (
            torch.cat([torch.arange(prm.offset, prm.offset + prm.numel) for prm in self.dense])
            if self.dense
            else torch.zeros(0, dtype=torch.long)
        )
        if self.d_dense > self.p_dense:
            raise ValueError(f"the dense part has {self.p_dense} parameters, fewer than d_dense = {self.d_dense}")
        # a dense part given as many coordinates as it has parameters is kept exactly (identity block)
        self.dense_identity = self.d_dense > 0 and self.d_dense == self.p_dense
        # orthogonal columns need the whole [p_dense, d_dense] matrix (QR); beyond ORTHO_MAX_ENTRIES
        # (e.g. every parameter of a large network fell back) the part is an i.i.d. blocked Gaussian
        self.dense_orthogonal = self.orthogonal and not self.dense_identity and 0 < self.p_dense * self.d_dense <= ORTHO_MAX_ENTRIES
        self.dense_proj = (
            GaussianProjector(self.p_dense, self.d_dense, block_seed(self.seed, _DENSE_STREAM), dtype, self.block_rows, cache_bytes)
            if self.d_dense and not self.dense_identity and not self.dense_orthogonal
            else None
        )
        self._dense_matrix: torch.Tensor | None = None
        self.slices: list[slice] = []
        start = 0
        for layer in self.kr:
            self.slices.append(slice(start, start + layer.d))
            start += layer.d
        self.dense_slice = slice(start, start + self.d_dense)
        self._factors: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    # -- factors ----------------------------------------------------------------------------

    def factors(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(U_l, V_l)`` per Khatri-Rao layer: ``U_l`` ``[out, d_l]`` with the ``1/sqrt(d_l)``
        scale, ``V_l`` ``[in, d_l]`` ``N(0, 1)``, from the generator seeded ``block_seed(seed, l)``
        (``U`` drawn first, in float64).

        i.i.d.: ``U`` is ``N(0, 1)``.  Orthogonal: the columns of ``U`` are taken in groups of
        ``out``, each group the Haar-orthogonal ``Q`` of a Gaussian matrix scaled to column norm
        ``sqrt(out)`` (uniform on that sphere, so ``E[u u^T] = I`` still), which makes the
        block's columns ``vec(u_i v_i^T)`` within a group exactly orthogonal.
        """
        if self._factors is None:
            out = []
            for j, layer in enumerate(self.kr):
                gen = torch.Generator(device="cpu")
                gen.manual_seed(block_seed(self.seed, j))
                U = torch.randn(layer.out, layer.d, generator=gen, dtype=torch.float64)
                if self.orthogonal:
                    for c0 in range(0, layer.d, layer.out):
                        U[:, c0 : c0 + layer.out] = _haar(U[:, c0 : c0 + layer.out]) * math.sqrt(layer.out)
                U = U.mul_(1.0 / math.sqrt(layer.d)).to(self.dtype)
                V = torch.randn(layer.inp, layer.d, generator=gen, dtype=torch.float64).to(self.dtype)
                out.append((U, V))
            self._factors = out
        return self._factors

    def dense_matrix(self) -> torch.Tensor | None:
        """The orthogonal dense part's ``[p_dense, d_dense]`` matrix ``sqrt(p_dense / d_dense) Q``
        (``Q`` Haar, from a Gaussian drawn in float64 from ``block_seed(seed, 2^40)``, so
        ``E[P P^T] = I`` and ``P^T P = (p_dense / d_dense) I``); ``None`` when the dense part is
        the identity or an i.i.d. Gaussian (:attr:`dense_proj`)."""
        if not self.dense_orthogonal:
            return None
        if self._dense_matrix is None:
            gen = torch.Generator(device="cpu")
            gen.manual_seed(block_seed(self.seed, _DENSE_STREAM))
            G = torch.randn(self.p_dense, self.d_dense, generator=gen, dtype=torch.float64)
            self._dense_matrix = (_haar(G) * math.sqrt(self.p_dense / self.d_dense)).to(self.dtype)
        return self._dense_matrix

    # -- products ---------------------------------------------------------------------------

    def project(self, g: torch.Tensor) -> torch.Tensor:
        g = self._check_input(g, self.p, "g", "one gradient per row")
        lead = g.shape[:-1]
        g2 = g.reshape(-1, self.p).to(self.dtype)
        out = torch.empty(g2.shape[0], self.d, dtype=self.dtype, device=g.device)
        for layer, (U, V), sl in zip(self.kr, self.factors(), self.slices):
            W = g2[:, layer.weight_offset : layer.weight_offset + layer.out * layer.inp].reshape(-1, layer.out, layer.inp)
            out[:, sl] = ((W @ V.to(g.device)) * U.to(g.device)).sum(1)
        if self.d_dense:
            out[:, self.dense_slice] = self._dense_project(g2[:, self.dense_index.to(g.device)])
        return out.reshape(*lead, self.d)

    def _dense_project(self, gd: torch.Tensor, M: torch.Tensor | None = None) -> torch.Tensor:
        """The dense part's block: ``gd [B, p_dense]`` -> ``[B, d_dense]`` (``M``: the orthogonal
        matrix already on ``gd``'s device, to avoid a copy per call)."""
        if self.dense_identity:
            return gd.to(self.dtype)
        if self.dense_orthogonal:
            M = self.dense_matrix().to(gd.device) if M is None else M  # type: ignore[union-attr]
            return gd.to(self.dtype) @ M
        return self.dense_proj.project(gd)  # type: ignore[union-attr]

    def _dense_map_back(self, c: torch.Tensor) -> torch.Tensor:
        if self.dense_identity:
            return c
        M = self.dense_matrix()
        if M is not None:
            return c @ M.to(c.device).T
        return self.dense_proj.map_back(c)  # type: ignore[union-attr]

    def map_back(self, u: torch.Tensor) -> torch.Tensor:
        u = self._check_input(u, self.d, "u", "one feature-space vector per row")
        lead = u.shape[:-1]
        u2 = u.reshape(-1, self.d).to(self.dtype)
        out = torch.empty(u2.shape[0], self.p, dtype=self.dtype, device=u.device)
        for layer, (U, V), sl in zip(self.kr, self.factors(), self.slices):
            dW = (U.to(u.device) * u2[:, sl].unsqueeze(1)) @ V.to(u.device).T  # U diag(c) V^T
            out[:, layer.weight_offset : layer.weight_offset + layer.out * layer.inp] = dW.reshape(u2.shape[0], -1)
        if self.d_dense:
            c = u2[:, self.dense_slice]
            out[:, self.dense_index.to(u.device)] = self._dense_map_back(c)
        return out.reshape(*lead, self.p)

    def _compute_gram(self) -> torch.Tensor:
        """Block diagonal: ``(U^T U) * (V^T V)`` per Khatri-Rao layer, the dense part's ``P^T P``."""
        acc = torch.zeros(self.d, self.d, dtype=torch.float64)
        for (U, V), sl in zip(self.factors(), self.slices):
            U64, V64 = U.to(torch.float64), V.to(torch.float64)
            acc[sl, sl] = (U64.T @ U64) * (V64.T @ V64)
        if self.dense_identity:
            acc[self.dense_slice, self.dense_slice] = torch.eye(self.d_dense, dtype=torch.float64)
        elif self.dense_orthogonal:
            M = self.dense_matrix().to(torch.float64)  # type: ignore[union-attr]
            acc[self.dense_slice, self.dense_slice] = M.T @ M
        elif self.dense_proj is not None:
            acc[self.dense_slice, self.dense_slice] = self.dense_proj.gram().to(torch.float64)
        return acc.to(self.dtype)

    # -- description ------------------------------------------------------------------------

    def parts(self) -> list[dict[str, Any]]:
        """One row per part: name, parameters, coordinates (and energy share when measured)."""
        shares = self.energy.get("fraction", {})
        rows = [{"part": layer.module, "kind": "khatri_rao", "params": layer.out * layer.inp, "d": layer.d,
                 "energy_fraction": shares.get(layer.module)} for layer in self.kr]
        if self.d_dense:
            kind = "identity" if self.dense_identity else "dense_orthogonal" if self.dense_orthogonal else "dense_gaussian"
            rows.append({"part": "dense", "kind": kind, "params": self.p_dense, "d": self.d_dense,
                         "energy_fraction": shares.get("dense")})
        return rows

    def fingerprint(self) -> list[float]:
        """The first entries of each part's random matrix: a check that the stream regenerates."""
        fp = [float(U.reshape(-1)[0]) for U, _ in self.factors()]
        if self.dense_orthogonal:
            fp.append(float(self.dense_matrix().reshape(-1)[0]))  # type: ignore[union-attr]
        elif self.dense_proj is not None:
            fp.append(float(self.dense_proj.block(0).reshape(-1)[0]))
        return fp

    def spec(self) -> dict[str, Any]:
        return {
            **self._spec_head(),
            "block_rows": self.block_rows,
            "layers": [asdict(layer) for layer in self.layers],
            "dense": [asdict(prm) for prm in self.dense],
            "d_dense": self.d_dense,
            "params": [[n, k] for n, k in self.params],
            "fallback": dict(self.fallback),
            "energy": self.energy,
            "orthogonal": self.orthogonal,
            "fingerprint": self.fingerprint(),
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> StructuredProjector:
        keys = ("p", "d", "seed", "dtype", "block_rows", "layers", "dense", "d_dense", "params")
        missing = [k for k in keys if k not in spec]
        if missing:
            raise UserError(f"projector spec: missing {', '.join(missing)}")
        try:
            proj = cls(
                p=spec["p"], d=spec["d"], seed=spec["seed"], dtype=_dtype_from_name(spec["dtype"]),
                layers=[LayerSpec(**layer) for layer in spec["layers"]], dense=[DenseParam(**prm) for prm in spec["dense"]],
                d_dense=spec["d_dense"], params=[tuple(x) for x in spec["params"]], fallback=spec.get("fallback"),
                energy=spec.get("energy"), orthogonal=spec.get("orthogonal", True), block_rows=spec["block_rows"],
            )
        except (TypeError, ValueError) as exc:
            raise UserError(f"projector spec: {exc}") from exc
        expected = spec.get("fingerprint")
        got = proj.fingerprint()
        # QR may round differently with another BLAS: compare to a relative 1e-5
        if expected is not None and (
            len(got) != len(expected) or any(abs(g - float(e)) > 1e-5 * max(abs(float(e)), 1e-3) for g, e in zip(got, expected))
        ):
            raise UserError(
                "projector spec: the regenerated projection factors differ from the stored ones "
                f"(first entries {proj.fingerprint()} vs {list(expected)}); the random number generator "
                f"of torch {torch.__version__} does not reproduce them; recompute the features with this version"
            )
        return proj

    def __repr__(self) -> str:
        split = "+".join(str(layer.d) for layer in self.kr) + f"+dense {self.d_dense}"
        return f"StructuredProjector(p={self.p}, d={self.d} ({split}), seed={self.seed}, dtype={_dtype_name(self.dtype)})"

    # -- construction from the actor and data -----------------------------------------------

    def check_actor(self, actor: nn.Module) -> None:
        """Raise ValueError unless ``actor`` has the parameter layout this projector was fitted to."""
        layout = [(name, math.prod(shape)) for name, _, shape in _param_layout(actor)]
        if layout != self.params:
            raise ValueError(
                "the actor's parameters differ from those the structured projector was fitted to "
                f"({len(layout)} tensors, {sum(k for _, k in layout)} entries vs {len(self.params)}, {self.p})"
            )

    @classmethod
    def fit(
        cls,
        actor: nn.Module,
        x: torch.Tensor,
        a: torch.Tensor,
        d: int = 400,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        min_frac: float = DEFAULT_MIN_FRAC,
        energy_rows: int = DEFAULT_ENERGY_ROWS,
        probe_rows: int = DEFAULT_PROBE_ROWS,
        chunk_size: int = 2048,
        orthogonal: bool = True,
        block_rows: int = DEFAULT_BLOCK_ROWS,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> StructuredProjector:
        """Analyse ``actor``, measure the per-part gradient energy on ``(x, a)`` and split ``d``.

        Args:
            actor: the policy (``log_prob(x, a)``); put in eval mode while analysed.
            x, a: the collected data (inputs ``[N, in]``, actions ``[N]`` or ``[N, act]``);
                ``energy_rows`` evenly spaced rows measure the energy, ``probe_rows`` of them
                check the shortcut against ``vmap(grad)``.
            d: total feature dimension.
            seed: seed of the random factors (the split depends on the data only).
            min_frac: each part keeps at least ``round(min_frac * d)`` coordinates.

        Warns ``StructuredFallbackWarning`` naming every linear layer that falls back to dense.
        Raises UserError when ``d`` cannot be split (fewer coordinates than parts, or more
        than parameters).
        """
        d = _check_int("d", d, 1)
        x, a = prepare_inputs(actor, x, a)
        n = x.shape[0]
        if n == 0:
            raise ValueError("fit needs at least one transition")
        layout = _param_layout(actor)
        p = sum(math.prod(shape) for _, _, shape in layout)
        offsets = {name: off for name, off, _ in layout}
        by_id = {id(prm): name for name, prm in actor.named_parameters()}
        fallback: dict[str, str] = {}
        candidates: list[tuple[str, nn.Linear]] = []
        owners: dict[int, int] = {}
        for _, module in actor.named_modules():
            for prm in module.parameters(recurse=False):
                owners[id(prm)] = owners.get(id(prm), 0) + 1
        for mname, module in actor.named_modules():
            if not isinstance(module, nn.Linear):
                continue
            names = [by_id[id(prm)] for prm in module.parameters() if id(prm) in by_id]
            if parametrize.is_parametrized(module):
                for name in names:
                    fallback[name] = f"{mname}: parametrized weight (a non-linear parameterization)"
                continue
            w = module._parameters.get("weight")
            if w is None or id(w) not in by_id:
                continue
            if owners.get(id(w), 0) > 1 or (module.bias is not None and owners.get(id(module.bias), 0) > 1):
                for name in names:
                    fallback[name] = f"{mname}: weight or bias shared with another module"
                continue
            candidates.append((mname, module))

        idx_probe = _spread(n, min(probe_rows, n))
        with eval_mode(actor):
            cap = _Capture(actor, [m for _, m in candidates])
            try:
                with torch.enable_grad():
                    logp_batch, deltas, inputs = cap.run(x[idx_probe], a[idx_probe])
            finally:
                cap.remove()
            calls, dims = cap.calls, cap.input_dims
            exact: list[int] = []
            for i, (mname, module) in enumerate(candidates):
                names = [by_id[id(prm)] for prm in module.parameters()]
                if calls[i] != 1:
                    why = "never called by log_prob" if calls[i] == 0 else f"called {calls[i]} times per forward pass"
                    for name in names:
                        fallback[name] = f"{mname}: {why}"
                elif dims[i] != 2:
                    for name in names:
                        fallback[name] = f"{mname}: its input has dimensions besides the batch (a sum of outer products)"
                else:
                    exact.append(i)
            # exactness against vmap(grad) on the probe rows
            ref_logp, ref_grads = _vmap_logp_and_grads(actor, x[idx_probe], a[idx_probe])
            coupled = not torch.allclose(logp_batch.detach(), ref_logp, rtol=1e-4, atol=1e-5)
            if coupled:
                reason = "log_prob of a sample depends on the other samples of the batch (e.g. normalization across the batch)"
                for name, _, _ in layout:
                    fallback[name] = reason
                exact = []
            keep = []
            for i in exact:
                mname, module = candidates[i]
                wname = by_id[id(module.weight)]
                got_w = deltas[i].unsqueeze(2) * inputs[i].unsqueeze(1)
                ok = _close(got_w, ref_grads[wname])
                if module.bias is not None:
                    ok = ok and _close(deltas[i], ref_grads[by_id[id(module.bias)]])
                if ok:
                    keep.append(i)
                else:
                    for prm in module.parameters():
                        fallback[by_id[id(prm)]] = f"{mname}: its per-sample gradient is not delta a^T (weight used outside the layer?)"
            exact = keep
            order = sorted(exact, key=lambda i: cap.first_call[i])
            head = order[-1] if order else None

            layers_pre: list[tuple[str, nn.Linear, str]] = []
            for i in sorted(exact, key=lambda i: offsets[by_id[id(candidates[i][1].weight)]]):
                mname, module = candidates[i]
                layers_pre.append((mname, module, "dense" if i == head else "khatri_rao"))
            # the dense part
            dense_pre: list[tuple[str, str, int | None]] = []  # (param name, source, layer index)
            in_layers: dict[str, tuple[str, int]] = {}
            for li, (mname, module, role) in enumerate(layers_pre):
                if role == "dense":
                    in_layers[by_id[id(module.weight)]] = ("weight", li)
                if module.bias is not None:
                    in_layers[by_id[id(module.bias)]] = ("bias", li)
            kr_weights = {by_id[id(m.weight)] for _, m, role in layers_pre if role == "khatri_rao"}
            for name, _, _ in layout:
                if name in kr_weights:
                    continue
                src, li = in_layers.get(name, ("vmap", None))
                dense_pre.append((name, src, li))

            # energies on evenly spaced rows
            idx_energy = _spread(n, min(energy_rows, n))
            vmap_names = [name for name, src, _ in dense_pre if src == "vmap"]
            p_vmap = sum(math.prod(shape) for name, _, shape in layout if name in set(vmap_names))
            vmap_rows = max(1, min(chunk_size, 2**26 // max(1, p_vmap)))
            e_layer = torch.zeros(len(layers_pre), dtype=torch.float64)  # weight energy per layer
            e_bias = torch.zeros(len(layers_pre), dtype=torch.float64)
            e_vmap = 0.0
            mods = [m for _, m, _ in layers_pre]
            for s in range(0, len(idx_energy), chunk_size):
                rows = idx_energy[s : s + chunk_size]
                cap = _Capture(actor, mods)
                try:
                    with torch.enable_grad():
                        _, dl, al = cap.run(x[rows], a[rows])
                finally:
                    cap.remove()
                for li in range(len(mods)):
                    dd = dl[li].double().pow(2).sum(1)
                    e_layer[li] += (dd * inputs_sq(al[li])).sum()
                    e_bias[li] += dd.sum()
                # per-sample gradients of the vmap parameters, in sub-chunks of at most ~64M entries
                for v0 in range(0, len(rows) if vmap_names else 0, vmap_rows):
                    g = _vmap_grads(actor, x[rows[v0 : v0 + vmap_rows]], a[rows[v0 : v0 + vmap_rows]], vmap_names)
                    e_vmap += float(sum(t.double().pow(2).sum() for t in g.values()))
        m = float(len(idx_energy))
        energy_kr = [float(e_layer[li] / m) for li, (_, _, role) in enumerate(layers_pre) if role == "khatri_rao"]
        energy_dense = float(e_vmap / m)
        for li, (_, module, role) in enumerate(layers_pre):
            if role == "dense":
                energy_dense += float(e_layer[li] / m)
            if module.bias is not None:
                energy_dense += float(e_bias[li] / m)

        kr_pre = [(mname, module) for mname, module, role in layers_pre if role == "khatri_rao"]
        caps = [module.out_features * module.in_features for _, module in kr_pre]
        numel = {name: math.prod(shape) for name, _, shape in layout}
        p_dense = sum(numel[name] for name, _, _ in dense_pre)
        parts_energy = energy_kr + ([energy_dense] if p_dense else [])
        parts_caps = caps + ([p_dense] if p_dense else [])
        try:
            split = allocate(parts_energy, parts_caps, d, min_frac)
        except ValueError as exc:
            raise UserError(f"--projector structured: cannot split d = {d} over {len(parts_caps)} parts "
                            f"({parts_caps} parameters): {exc}; choose another --d or --projector dense") from None
        d_kr = split[: len(kr_pre)]
        d_dense = split[-1] if p_dense else 0

        layers: list[LayerSpec] = []
        kr_i = 0
        for mname, module, role in layers_pre:
            wname = by_id[id(module.weight)]
            bname = by_id[id(module.bias)] if module.bias is not None else None
            dl_ = 0
            if role == "khatri_rao":
                dl_ = d_kr[kr_i]
                kr_i += 1
            layers.append(LayerSpec(module=mname, weight=wname, bias=bname, out=module.out_features, inp=module.in_features,
                                    weight_offset=offsets[wname], bias_offset=offsets[bname] if bname else None, role=role, d=dl_))
        dense = [DenseParam(name=name, offset=offsets[name], numel=numel[name], source=src, layer=li) for name, src, li in dense_pre]
        total_e = sum(parts_energy)
        names_parts = [mname for mname, _ in kr_pre] + (["dense"] if p_dense else [])
        energy = {
            "rows": len(idx_energy),
            "per_part": dict(zip(names_parts, parts_energy)),
            "fraction": {k: (v / total_e if total_e > 0 else None) for k, v in zip(names_parts, parts_energy)},
        }
        proj = cls(p, d, seed, dtype, layers, dense, d_dense, [(name, numel[name]) for name, _, _ in layout],
                   fallback=fallback, energy=energy, orthogonal=orthogonal, block_rows=block_rows, cache_bytes=cache_bytes)
        if fallback:
            by_reason: dict[str, list[str]] = {}
            for name, why in fallback.items():
                by_reason.setdefault(why, []).append(name)
            text = "; ".join(f"{', '.join(names)} ({why})" for why, names in by_reason.items())
            warnings.warn(f"structured projector: dense fallback for {text}", StructuredFallbackWarning, stacklevel=2)
        return proj


# ---------------------------------------------------------------------------------------------
# helpers: the batched pass with hooks, vmap references


def _haar(G: torch.Tensor) -> torch.Tensor:
    """Orthonormal columns distributed uniformly (Haar): ``Q`` of ``G = QR`` with ``diag(R) > 0``."""
    Q, R = torch.linalg.qr(G)
    sign = torch.sign(torch.diagonal(R))
    sign[sign == 0] = 1.0
    return Q * sign


def inputs_sq(a: torch.Tensor) -> torch.Tensor:
    """``||a_t||^2`` per row, in float64."""
    return a.double().pow(2).sum(1)


def _spread(n: int, k: int) -> torch.Tensor:
    """``k`` evenly spaced row indices of ``range(n)`` (deterministic)."""
    if k >= n:
        return torch.arange(n)
    return torch.linspace(0, n - 1, k, dtype=torch.float64).round().long()


def _close(got: torch.Tensor, ref: torch.Tensor) -> bool:
    ref = ref.reshape(got.shape).to(got.dtype)
    scale = max(float(ref.abs().max()), float(got.abs().max()), 1e-30)
    return float((got - ref).abs().max()) <= CHECK_RTOL * scale


def _functional_params(actor: nn.Module, requires_grad: bool) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    params = {f"actor.{n}": p.detach().requires_grad_(requires_grad) for n, p in actor.named_parameters()}
    buffers = {f"actor.{n}": b.detach() for n, b in actor.named_buffers()}
    return params, buffers


class _Capture:
    """Forward hooks on the given linear modules: input ``a`` and output ``z`` of each call.

    ``run(x, a)`` does one batched forward of ``log_prob`` (through ``functional_call`` with
    detached parameters that require grad, so the outputs are on the graph but the actor's own
    ``.grad`` is never touched) and one ``autograd.grad`` of ``sum_t log pi_t`` to every ``z``
    at once, returning ``(logp [B], deltas, inputs)``; ``calls``, ``input_dims`` and
    ``first_call`` record how each module was used (the last call is kept).
    """

    def __init__(self, actor: nn.Module, modules: Sequence[nn.Module]) -> None:
        self.actor = actor
        self.modules = list(modules)
        self.calls = [0] * len(self.modules)
        self.input_dims = [0] * len(self.modules)
        self.first_call = [math.inf] * len(self.modules)
        self._clock = 0
        self._io: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.modules)
        self._handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self.modules)]
        self._wrapper = LogProbModule(actor)

    def _hook(self, i: int) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            self.calls[i] += 1
            self.input_dims[i] = inputs[0].dim()
            if self.first_call[i] == math.inf:
                self.first_call[i] = self._clock
            self._clock += 1
            self._io[i] = (inputs[0], output)

        return hook

    def run(self, x: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor | None], list[torch.Tensor | None]]:
        """``(logp, deltas, inputs)``; a module that was not called gets ``None`` in both lists."""
        self._io = [None] * len(self.modules)
        params, buffers = _functional_params(self.actor, True)
        logp = functional_call(self._wrapper, (params, buffers), (x, a))
        called = [i for i, io in enumerate(self._io) if io is not None and io[1].requires_grad]
        outs = [self._io[i][1] for i in called]  # type: ignore[index]
        grads = torch.autograd.grad(logp.sum(), outs, allow_unused=True) if outs else ()
        deltas: list[torch.Tensor | None] = [None] * len(self.modules)
        inputs: list[torch.Tensor | None] = [None] * len(self.modules)
        for i, g in zip(called, grads):
            z = self._io[i][1]  # type: ignore[index]
            deltas[i] = torch.zeros_like(z).detach() if g is None else g.detach()
            inputs[i] = self._io[i][0].detach()  # type: ignore[index]
        self._io = [None] * len(self.modules)
        return logp.detach(), deltas, inputs

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def _vmap_logp_and_grads(actor: nn.Module, x: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-sample ``log pi`` and gradients over every parameter, one unbatched sample at a time under vmap."""
    wrapper = LogProbModule(actor)
    params, buffers = _functional_params(actor, False)

    def f(prm: dict[str, torch.Tensor], xs: torch.Tensor, acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = functional_call(wrapper, (prm, buffers), (xs, acts))
        return out, out

    with torch.no_grad():
        grads, logp = vmap(grad(f, has_aux=True), in_dims=(None, 0, 0))(params, x, a)
    return logp, {k[len("actor."):]: v for k, v in grads.items()}


def _vmap_grads(actor: nn.Module, x: torch.Tensor, a: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Per-sample gradients over the parameters ``names`` only (the others held fixed)."""
    wrapper = LogProbModule(actor)
    params, buffers = _functional_params(actor, False)
    keys = [f"actor.{n}" for n in names]
    var = {k: params[k] for k in keys}
    fixed = {k: v for k, v in params.items() if k not in var}

    def f(v: dict[str, torch.Tensor], xs: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
        return functional_call(wrapper, ({**fixed, **v}, buffers), (xs, acts))

    with torch.no_grad():
        grads = vmap(grad(f), in_dims=(None, 0, 0))(var, x, a)
    return {k[len("actor."):]: v for k, v in grads.items()}


def structured_projected_grads(
    actor: nn.Module,
    x: torch.Tensor,
    a: torch.Tensor,
    projector: StructuredProjector,
    chunk_size: int,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """``P^T grad log pi(a_t | x_t)`` per row for a :class:`StructuredProjector`, ``[N, d]``.

    One batched forward + ``autograd.grad`` per chunk gives every linear layer's ``delta`` and
    ``a``; Khatri-Rao blocks are ``(delta U) * (a V)``; the dense part's per-sample gradients
    (last layer ``delta a^T``, biases ``delta``, fallback parameters from ``vmap(grad)``) are
    assembled into one ``[B, p_dense]`` buffer and multiplied by its random matrix (or, for an
    identity dense part, assembled directly in the output).
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    projector.check_actor(actor)
    x, a = prepare_inputs(actor, x, a)
    modules = dict(actor.named_modules())
    missing = [layer.module for layer in projector.layers if not isinstance(modules.get(layer.module), nn.Linear)]
    if missing:
        raise ValueError(f"the actor has no linear module {missing[0]!r} (the structured projector was fitted to another network)")
    mods = [modules[layer.module] for layer in projector.layers]
    kr_pos = [i for i, layer in enumerate(projector.layers) if layer.role == "khatri_rao"]
    vmap_names = [prm.name for prm in projector.dense if prm.source == "vmap"]
    dtype = projector.dtype
    factors = [(U.to(x.device), V.to(x.device)) for U, V in projector.factors()]
    M = projector.dense_matrix()
    M = M.to(x.device) if M is not None else None
    n = x.shape[0]
    out = torch.empty(n, projector.d, dtype=dtype, device=x.device)
    gd = (torch.empty(min(chunk_size, n), projector.p_dense, dtype=dtype, device=x.device)
          if projector.p_dense and not projector.dense_identity else None)
    with eval_mode(actor):
        cap = _Capture(actor, mods)
        try:
            for start in range(0, n, chunk_size):
                stop = min(start + chunk_size, n)
                b = stop - start
                if mods:
                    with torch.enable_grad():
                        _, deltas, inputs = cap.run(x[start:stop], a[start:stop])
                with torch.no_grad():
                    for li, (U, V), sl in zip(kr_pos, factors, projector.slices):
                        out[start:stop, sl] = (deltas[li].to(dtype) @ U) * (inputs[li].to(dtype) @ V)
                    if projector.p_dense:
                        # an identity dense block is assembled in place in the output
                        buf = out[start:stop, projector.dense_slice] if projector.dense_identity else gd[:b]
                        vg = _vmap_grads(actor, x[start:stop], a[start:stop], vmap_names) if vmap_names else {}
                        col = 0
                        for prm in projector.dense:
                            seg = buf[:, col : col + prm.numel]
                            if prm.source == "weight":
                                layer = projector.layers[prm.layer]
                                seg.view(b, layer.out, layer.inp).copy_(deltas[prm.layer].unsqueeze(2) * inputs[prm.layer].unsqueeze(1))
                            elif prm.source == "bias":
                                seg.copy_(deltas[prm.layer])
                            else:
                                seg.copy_(vg[prm.name].reshape(b, prm.numel))
                            col += prm.numel
                        if not projector.dense_identity:
                            out[start:stop, projector.dense_slice] = projector._dense_project(buf, M)
                if progress is not None:
                    progress(b)
        finally:
            cap.remove()
    return out
