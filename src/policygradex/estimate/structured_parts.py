"""The parts of a structured projection (:mod:`.structured`): the records of its spec
(:class:`LayerSpec`, :class:`DenseParam`), the actor's parameter layout (:func:`param_layout`)
and the split of the ``d`` coordinates among the parts by gradient energy (:func:`allocate`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from torch import nn

__all__ = ["DEFAULT_MIN_FRAC", "DenseParam", "LayerSpec", "allocate", "param_layout"]

#: Each part keeps at least this fraction of ``d`` (8 of 400), so that no layer is left out of
#: the step ``Delta = P u`` entirely.
DEFAULT_MIN_FRAC = 0.02


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


def param_layout(actor: nn.Module) -> list[tuple[str, int, tuple[int, ...]]]:
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
