"""Random projections of per-sample policy gradients (METHOD.md, stage 2, step 3).

A projector holds a matrix ``P`` in ``R^{p x d}`` (``p`` = number of actor parameters, ``d`` the
feature dimension) and offers the three products the method needs, without ever requiring
``P`` as a whole:

* ``project(g)``  = ``g P``   (one row ``P^T g_t`` per sample): gradients -> features;
* ``map_back(u)`` = ``u P^T`` (``P u`` per row): a surrogate solution -> a parameter step;
* ``gram()``      = ``P^T P`` (``d x d``): ``||P u||^2 = u^T (P^T P) u`` without forming ``P u``.

A projector is fully described by ``spec()``, a small JSON-able dict stored in the feature
manifest; :func:`.projectors.projector_from_spec` regenerates the identical projector from
it, so the map back at stage 3 uses exactly the ``P`` that produced the features.

:class:`GaussianProjector` is the dense Johnson-Lindenstrauss projection: entries i.i.d.
``N(0, 1/d)``, so ``E ||P^T g||^2 = ||g||^2`` and ``E[P P^T] = I``.  ``P`` is generated in
blocks of ``block_rows`` rows; block ``b`` comes from its own ``torch.Generator`` seeded from
``(seed, b)``, so every block can be produced on its own, in any order, and ``P`` is the same
however it is consumed (whole, block by block, cached or regenerated).
"""

from __future__ import annotations

import abc
import math
from typing import Any, ClassVar, Iterator

import torch

from ..errors import UserError

__all__ = [
    "Projector",
    "GaussianProjector",
    "block_seed",
    "check_int",
    "dtype_from_name",
    "dtype_name",
    "DEFAULT_BLOCK_ROWS",
    "DEFAULT_CACHE_BYTES",
]

#: Rows of ``P`` per generated block.  With ``d = 400`` in float32 a block is 3.3 MB (plus the
#: matching ``[B, 2048]`` column slice of the input), so an uncached projector needs one block
#: of memory whatever ``p`` is.  Speed does not depend on it: ``project`` of ``[512, 9410]`` takes the same time with 1,024- to
#: 16,384-row blocks as one unblocked matmul.  Part of the spec: another block size gives a
#: different (equally valid) ``P``.
DEFAULT_BLOCK_ROWS = 2048

#: ``P`` is kept in memory after first use when it takes at most this many bytes (e.g. the
#: 137k-parameter policy at ``d = 400``: 219 MB); a larger ``P`` is regenerated block by block
#: on every call, so memory stays at one block whatever ``p`` is.  Regenerating costs about 25%
#: more time in ``projected_grads`` (benchmarks/results/features.json).  Caching never changes
#: values.
DEFAULT_CACHE_BYTES = 256 * 2**20

_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}
_MASK64 = (1 << 64) - 1


def dtype_name(dtype: torch.dtype) -> str:
    """The spec name of a projector dtype (ValueError for another dtype)."""
    for name, dt in _DTYPES.items():
        if dt == dtype:
            return name
    raise ValueError(f"projector dtype must be one of {sorted(_DTYPES)}, got {dtype}")


def dtype_from_name(name: Any) -> torch.dtype:
    """The dtype named in a projector spec (UserError for another name)."""
    if name not in _DTYPES:
        raise UserError(f"projector spec: dtype must be one of {sorted(_DTYPES)}, got {name!r}")
    return _DTYPES[name]


def _splitmix64(x: int) -> int:
    """The SplitMix64 finaliser: a bijective, well-mixing map on 64-bit integers."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def block_seed(seed: int, block: int) -> int:
    """The 64-bit generator seed of block ``block`` of the projector seeded with ``seed``."""
    return _splitmix64(_splitmix64(seed & _MASK64) ^ block)


def check_int(name: str, value: Any, minimum: int) -> int:
    """An integer ``>= minimum`` (not a bool) for projector settings (ValueError naming ``name``)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


class Projector(abc.ABC):
    """A linear map ``P`` in ``R^{p x d}`` from parameter space to feature space.

    Attributes:
        p: input dimension (number of actor parameters).
        d: output (feature) dimension.
        seed: the seed ``P`` is generated from.
        dtype: the dtype of ``P`` and of every result.

    Subclasses set the class attribute ``kind`` (registering them with
    :func:`.projectors.projector_from_spec`; :mod:`.projectors` imports every kind) and
    implement ``project``, ``map_back``, ``spec`` and ``from_spec``.  ``gram`` has a generic
    implementation that subclasses may replace with a cheaper one by overriding ``_compute_gram``.
    """

    kind: ClassVar[str]
    _registry: ClassVar[dict[str, type[Projector]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            Projector._registry[cls.kind] = cls

    def __init__(self, p: int, d: int, seed: int, dtype: torch.dtype) -> None:
        self.p = check_int("p", p, 1)
        self.d = check_int("d", d, 1)
        self.seed = check_int("seed", seed, 0)
        dtype_name(dtype)
        self.dtype = dtype
        self._gram: torch.Tensor | None = None

    @abc.abstractmethod
    def project(self, g: torch.Tensor) -> torch.Tensor:
        """``P^T g`` for every row: ``g`` of shape ``[..., p]`` -> ``[..., d]`` in ``self.dtype``."""

    @abc.abstractmethod
    def map_back(self, u: torch.Tensor) -> torch.Tensor:
        """``P u`` for every row: ``u`` of shape ``[..., d]`` -> ``[..., p]`` in ``self.dtype``."""

    @abc.abstractmethod
    def spec(self) -> dict[str, Any]:
        """A JSON-able description from which :func:`.projectors.projector_from_spec` rebuilds ``self``."""

    def _spec_head(self) -> dict[str, Any]:
        """The fields every projector's spec starts with (kind, sizes, seed, dtype)."""
        return {"kind": self.kind, "p": self.p, "d": self.d, "seed": self.seed, "dtype": dtype_name(self.dtype)}

    @classmethod
    @abc.abstractmethod
    def from_spec(cls, spec: dict[str, Any]) -> Projector:
        """Rebuild the projector described by ``spec`` (raise UserError on a bad spec)."""

    def gram(self) -> torch.Tensor:
        """``P^T P`` as a ``[d, d]`` tensor (computed once, then cached; a fresh copy each call)."""
        if self._gram is None:
            self._gram = self._compute_gram()
        return self._gram.clone()

    def _compute_gram(self) -> torch.Tensor:
        """Generic ``P^T P``: ``project(map_back(E))`` for blocks ``E`` of 64 unit vectors."""
        cols = 64
        out = torch.empty(self.d, self.d, dtype=self.dtype)
        for c0 in range(0, self.d, cols):
            c1 = min(c0 + cols, self.d)
            eye = torch.zeros(c1 - c0, self.d, dtype=self.dtype)
            eye[:, c0:c1] = torch.eye(c1 - c0, dtype=self.dtype)
            out[c0:c1] = self.project(self.map_back(eye))
        return 0.5 * (out + out.T)

    def _check_input(self, x: torch.Tensor, dim: int, name: str, what: str) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() == 0 or x.shape[-1] != dim:
            raise ValueError(f"{name} must have shape [..., {dim}] ({what}), got {tuple(x.shape)}")
        return x

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p}, d={self.d}, seed={self.seed}, dtype={dtype_name(self.dtype)})"


class GaussianProjector(Projector):
    """Dense Gaussian projection, entries i.i.d. ``N(0, 1/d)``, generated in seeded row blocks.

    Args:
        p: number of rows (actor parameters).
        d: number of columns (feature dimension), default 400.
        seed: non-negative integer; block ``b`` is drawn with ``torch.randn`` from a generator
            seeded with :func:`block_seed` ``(seed, b)``.
        dtype: ``torch.float32`` (default) or ``torch.float64``; part of the spec (the random
            stream depends on it).
        block_rows: rows per block (default :data:`DEFAULT_BLOCK_ROWS`); part of the spec.
        cache_bytes: keep the generated blocks in memory when ``P`` takes at most this many
            bytes (default :data:`DEFAULT_CACHE_BYTES`; 0 disables).  Not part of the spec:
            it changes speed and memory, never values.
    """

    kind: ClassVar[str] = "gaussian"

    def __init__(
        self,
        p: int,
        d: int = 400,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        block_rows: int = DEFAULT_BLOCK_ROWS,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        super().__init__(p, d, seed, dtype)
        self.block_rows = check_int("block_rows", block_rows, 1)
        self.n_blocks = math.ceil(self.p / self.block_rows)
        nbytes = self.p * self.d * torch.empty((), dtype=dtype).element_size()
        self._cache: list[torch.Tensor | None] | None = (
            [None] * self.n_blocks if nbytes <= check_int("cache_bytes", cache_bytes, 0) else None
        )
        self._fingerprint: list[float] | None = None

    # -- generation -------------------------------------------------------------------------

    def _generate(self, b: int) -> torch.Tensor:
        rows = min(self.block_rows, self.p - b * self.block_rows)
        gen = torch.Generator(device="cpu")
        gen.manual_seed(block_seed(self.seed, b))
        blk = torch.randn(rows, self.d, generator=gen, dtype=self.dtype)
        return blk.mul_(1.0 / math.sqrt(self.d))

    def block(self, b: int) -> torch.Tensor:
        """Rows ``[b * block_rows, min((b + 1) * block_rows, p))`` of ``P`` (do not modify)."""
        if not 0 <= b < self.n_blocks:
            raise IndexError(f"block {b} out of range [0, {self.n_blocks})")
        if self._cache is None:
            return self._generate(b)
        blk = self._cache[b]
        if blk is None:
            blk = self._cache[b] = self._generate(b)
        return blk

    def _blocks(self) -> Iterator[tuple[int, int, torch.Tensor]]:
        for b in range(self.n_blocks):
            r0 = b * self.block_rows
            blk = self.block(b)
            yield r0, r0 + blk.shape[0], blk

    # -- products ---------------------------------------------------------------------------

    def project(self, g: torch.Tensor) -> torch.Tensor:
        g = self._check_input(g, self.p, "g", "one gradient per row")
        lead = g.shape[:-1]
        g2 = g.reshape(-1, self.p)
        out = torch.zeros(g2.shape[0], self.d, dtype=self.dtype, device=g.device)
        for r0, r1, blk in self._blocks():
            out.addmm_(g2[:, r0:r1].to(self.dtype), blk.to(g.device))
        return out.reshape(*lead, self.d)

    def map_back(self, u: torch.Tensor) -> torch.Tensor:
        u = self._check_input(u, self.d, "u", "one feature-space vector per row")
        lead = u.shape[:-1]
        u2 = u.reshape(-1, self.d).to(self.dtype)
        out = torch.empty(u2.shape[0], self.p, dtype=self.dtype, device=u.device)
        for r0, r1, blk in self._blocks():
            out[:, r0:r1] = u2 @ blk.to(u.device).T
        return out.reshape(*lead, self.p)

    def _compute_gram(self) -> torch.Tensor:
        """``sum_b P_b^T P_b`` over row blocks, accumulated in float64."""
        acc = torch.zeros(self.d, self.d, dtype=torch.float64)
        for _, _, blk in self._blocks():
            blk64 = blk.to(torch.float64)
            acc.addmm_(blk64.T, blk64)
        return acc.to(self.dtype)

    # -- spec -------------------------------------------------------------------------------

    def fingerprint(self) -> list[float]:
        """The first four entries of ``P``: a check that the random stream regenerates."""
        if self._fingerprint is None:
            self._fingerprint = [float(v) for v in self.block(0).reshape(-1)[:4]]
        return list(self._fingerprint)

    def spec(self) -> dict[str, Any]:
        return {**self._spec_head(), "block_rows": self.block_rows, "fingerprint": self.fingerprint()}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> GaussianProjector:
        missing = [k for k in ("p", "d", "seed", "dtype", "block_rows") if k not in spec]
        if missing:
            raise UserError(f"projector spec: missing {', '.join(missing)}")
        try:
            proj = cls(
                p=spec["p"], d=spec["d"], seed=spec["seed"], dtype=dtype_from_name(spec["dtype"]), block_rows=spec["block_rows"]
            )
        except ValueError as exc:
            raise UserError(f"projector spec: {exc}") from exc
        expected = spec.get("fingerprint")
        if expected is not None and proj.fingerprint() != [float(v) for v in expected]:
            raise UserError(
                "projector spec: the regenerated projection matrix differs from the stored one "
                f"(first entries {proj.fingerprint()} vs {list(expected)}); the random number generator "
                f"of torch {torch.__version__} does not reproduce it; recompute the features with this version"
            )
        return proj

