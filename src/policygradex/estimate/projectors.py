"""The projector kinds by name: :func:`build_projector` makes one for an actor from the
``--projector`` option, :func:`projector_from_spec` regenerates one from the spec stored in a
feature manifest.

Both kinds are imported here explicitly: the dense Gaussian (:mod:`.projection`, spec kind
``"gaussian"``) and the per-layer projection (:mod:`.structured`, spec kind ``"structured"``).
A new kind is a :class:`.projection.Projector` subclass with a ``kind`` (which registers it for
:func:`projector_from_spec`), imported here and named in :data:`PROJECTORS`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import UserError
from .projection import GaussianProjector, Projector
from .structured import StructuredProjector

__all__ = ["PROJECTORS", "build_projector", "projector_from_spec"]

#: ``--projector`` values: ``dense`` is the seeded Gaussian (:class:`.projection.GaussianProjector`,
#: whose spec kind is ``"gaussian"``; ``"gaussian"`` is accepted as an alias), ``structured``
#: the per-layer projection of :mod:`.structured`.
PROJECTORS = ("dense", "structured")
_ALIASES = {"gaussian": "dense"}


def build_projector(
    kind: str,
    actor: nn.Module,
    x: torch.Tensor,
    a: torch.Tensor,
    d: int,
    seed: int,
    dtype: torch.dtype = torch.float32,
) -> Projector:
    """The projector ``kind`` (``dense``, ``gaussian`` = ``dense``, or ``structured``) for ``actor``.

    ``dense`` needs only the parameter count; ``structured`` analyses the actor's layers and
    splits ``d`` by the gradient energy measured on ``(x, a)`` (the collected transitions of
    all tasks): see :meth:`.structured.StructuredProjector.fit`.
    """
    name = _ALIASES.get(kind, kind)
    if name == "dense":
        return GaussianProjector(sum(t.numel() for t in actor.parameters()), d, seed, dtype)
    if name == "structured":
        return StructuredProjector.fit(actor, x, a, d=d, seed=seed, dtype=dtype)
    raise UserError(f"--projector must be one of {', '.join(PROJECTORS)}, got {kind!r}")


def projector_from_spec(spec: dict[str, Any]) -> Projector:
    """Regenerate the projector that ``spec()`` described (raise UserError on a bad spec)."""
    if not isinstance(spec, dict) or "kind" not in spec:
        raise UserError(f"projector spec must be a dict with a 'kind', got {spec!r}")
    cls = Projector._registry.get(spec["kind"])
    if cls is None:
        raise UserError(f"projector spec: unknown kind {spec['kind']!r}; known kinds: {sorted(Projector._registry)}")
    return cls.from_spec(spec)
