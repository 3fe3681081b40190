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

Modules: this one holds the projector (:class:`StructuredProjector`: factors, products, spec);
:mod:`.structured_parts` the spec's records and the split of ``d`` (:func:`allocate`),
:mod:`.structured_fit` the analysis behind :meth:`StructuredProjector.fit`,
:mod:`.structured_hooks` the batched pass with hooks and the ``vmap(grad)`` references, and
:mod:`.structured_grads` the features (:func:`structured_projected_grads`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict
from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from ..errors import UserError
from .projection import (
    DEFAULT_BLOCK_ROWS,
    DEFAULT_CACHE_BYTES,
    GaussianProjector,
    Projector,
    block_seed,
    check_int,
    dtype_from_name,
    dtype_name,
)
# re-exported: the parts and the fit's constants (.structured_parts, .structured_fit), the features
# (.structured_grads)
from .structured_fit import CHECK_RTOL, DEFAULT_ENERGY_ROWS, DEFAULT_PROBE_ROWS, plan_structured
from .structured_grads import structured_projected_grads
from .structured_hooks import inputs_sq
from .structured_parts import DEFAULT_MIN_FRAC, DenseParam, LayerSpec, allocate, param_layout

__all__ = [
    "StructuredProjector",
    "StructuredFallbackWarning",
    "LayerSpec",
    "DenseParam",
    "structured_projected_grads",
    "allocate",
    "CHECK_RTOL",
    "DEFAULT_ENERGY_ROWS",
    "DEFAULT_MIN_FRAC",
    "DEFAULT_PROBE_ROWS",
    "inputs_sq",
]

#: The orthogonal dense part is materialised (QR) up to this many entries (128 MB in float32).
ORTHO_MAX_ENTRIES = 2**25
#: Stream ids of the factor generators: Khatri-Rao layer ``j`` uses ``block_seed(seed, j)``,
#: the dense part's Gaussian the seed ``block_seed(seed, _DENSE_STREAM)``.
_DENSE_STREAM = 1 << 40


class StructuredFallbackWarning(UserWarning):
    """Part of the network falls back to the dense projection (the shortcut is not exact there)."""


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
        self.d_dense = check_int("d_dense", d_dense, 0)
        self.params = [(str(n), int(k)) for n, k in params]
        self.fallback = dict(fallback or {})
        self.energy = dict(energy or {})
        self.block_rows = check_int("block_rows", block_rows, 1)
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
            out[:, self.dense_slice] = self.dense_project(g2[:, self.dense_index.to(g.device)])
        return out.reshape(*lead, self.d)

    def dense_project(self, gd: torch.Tensor, M: torch.Tensor | None = None) -> torch.Tensor:
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
                p=spec["p"], d=spec["d"], seed=spec["seed"], dtype=dtype_from_name(spec["dtype"]),
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
        return f"StructuredProjector(p={self.p}, d={self.d} ({split}), seed={self.seed}, dtype={dtype_name(self.dtype)})"

    # -- construction from the actor and data -----------------------------------------------

    def check_actor(self, actor: nn.Module) -> None:
        """Raise ValueError unless ``actor`` has the parameter layout this projector was fitted to."""
        layout = [(name, math.prod(shape)) for name, _, shape in param_layout(actor)]
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
        than parameters).  The analysis, step by step, is :func:`.structured_fit.plan_structured`.
        """
        d = check_int("d", d, 1)
        plan = plan_structured(actor, x, a, d, min_frac, energy_rows, probe_rows, chunk_size)
        proj = cls(plan.p, d, seed, dtype, plan.layers, plan.dense, plan.d_dense, plan.params, fallback=plan.fallback,
                   energy=plan.energy, orthogonal=orthogonal, block_rows=block_rows, cache_bytes=cache_bytes)
        if plan.fallback:
            by_reason: dict[str, list[str]] = {}
            for name, why in plan.fallback.items():
                by_reason.setdefault(why, []).append(name)
            text = "; ".join(f"{', '.join(names)} ({why})" for why, names in by_reason.items())
            warnings.warn(f"structured projector: dense fallback for {text}", StructuredFallbackWarning, stacklevel=2)
        return proj


def _haar(G: torch.Tensor) -> torch.Tensor:
    """Orthonormal columns distributed uniformly (Haar): ``Q`` of ``G = QR`` with ``diag(R) > 0``."""
    Q, R = torch.linalg.qr(G)
    sign = torch.sign(torch.diagonal(R))
    sign[sign == 0] = 1.0
    return Q * sign
