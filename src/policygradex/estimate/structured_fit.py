"""How :meth:`.structured.StructuredProjector.fit` analyses an actor and its data, step by step
(:func:`plan_structured`):

1. :func:`_candidates`: the linear layers that may take the shortcut (not parametrized, weight and
   bias owned by that layer alone);
2. :func:`_probe`: on a few probe rows, the candidates called once per forward pass on batched
   inputs whose per-sample gradient ``delta a^T`` matches ``vmap(grad)``; the last of them (in
   call order) is the head, in the dense part;
3. :func:`_dense_params`: the parameters of the dense part and where their per-sample gradients
   come from;
4. :func:`_energies`: the gradient energy of every part on evenly spaced rows;
5. :func:`_split`: ``d`` split among the parts in proportion to their energies, and the spec's
   records.

Every parameter that leaves the shortcut gets a reason in ``fallback``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import UserError
from .persample import eval_mode, prepare_inputs
from .structured_hooks import Capture, inputs_sq, spread, vmap_grads, vmap_logp_and_grads
from .structured_parts import DenseParam, LayerSpec, allocate, param_layout

__all__ = ["CHECK_RTOL", "DEFAULT_ENERGY_ROWS", "DEFAULT_PROBE_ROWS", "StructuredPlan", "plan_structured"]

#: Rows (evenly spaced over the data) on which the per-part gradient energy is measured.
DEFAULT_ENERGY_ROWS = 4096
#: Rows on which the shortcut is checked against ``vmap(grad)``.
DEFAULT_PROBE_ROWS = 8
#: Relative tolerance of that check (float32 round-off is ~1e-6).
CHECK_RTOL = 1e-3

Fallback = dict[str, str]  # parameter name -> why it left the shortcut
Layer = tuple[str, nn.Linear, str]  # (module name, module, role: "khatri_rao" or "dense")
Dense = tuple[str, str, "int | None"]  # (parameter name, source, layer index)


@dataclass
class StructuredPlan:
    """What :func:`plan_structured` found: the constructor arguments of a
    :class:`.structured.StructuredProjector` that depend on the actor and the data."""

    p: int
    layers: list[LayerSpec]
    dense: list[DenseParam]
    d_dense: int
    params: list[tuple[str, int]]
    fallback: Fallback
    energy: dict[str, Any]


@dataclass
class _Params:
    """The actor's parameters: layout (``(name, offset, shape)``), offsets, sizes, and the name of
    each parameter tensor by ``id``."""

    layout: list[tuple[str, int, tuple[int, ...]]]
    offsets: dict[str, int]
    numel: dict[str, int]
    by_id: dict[int, str]

    @classmethod
    def of(cls, actor: nn.Module) -> _Params:
        layout = param_layout(actor)
        return cls(layout, {name: off for name, off, _ in layout}, {name: math.prod(shape) for name, _, shape in layout},
                   {id(prm): name for name, prm in actor.named_parameters()})


def plan_structured(
    actor: nn.Module, x: torch.Tensor, a: torch.Tensor, d: int, min_frac: float, energy_rows: int, probe_rows: int,
    chunk_size: int,
) -> StructuredPlan:
    """Analyse ``actor`` on ``(x, a)`` and split ``d`` (see the module docstring for the steps)."""
    x, a = prepare_inputs(actor, x, a)
    n = x.shape[0]
    if n == 0:
        raise ValueError("fit needs at least one transition")
    prm = _Params.of(actor)
    fallback: Fallback = {}
    candidates = _candidates(actor, prm, fallback)
    with eval_mode(actor):
        layers = _probe(actor, x, a, candidates, prm, fallback, spread(n, min(probe_rows, n)))
        dense = _dense_params(layers, prm)
        rows = spread(n, min(energy_rows, n))
        energy_kr, energy_dense = _energies(actor, x, a, layers, dense, prm, rows, chunk_size)
    return _split(layers, dense, prm, energy_kr, energy_dense, len(rows), d, min_frac, fallback)


def _candidates(actor: nn.Module, prm: _Params, fallback: Fallback) -> list[tuple[str, nn.Linear]]:
    """The linear layers that may take the shortcut; the parametrized ones and those sharing a
    weight or bias with another module fall back."""
    by_id = prm.by_id
    candidates: list[tuple[str, nn.Linear]] = []
    owners: dict[int, int] = {}
    for _, module in actor.named_modules():
        for p in module.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    for mname, module in actor.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        names = [by_id[id(p)] for p in module.parameters() if id(p) in by_id]
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
    return candidates


def _probe(
    actor: nn.Module, x: torch.Tensor, a: torch.Tensor, candidates: list[tuple[str, nn.Linear]], prm: _Params,
    fallback: Fallback, idx: torch.Tensor,
) -> list[Layer]:
    """The candidates whose shortcut is exact on the rows ``idx``, in parameter order, with their
    roles: the last one called (the head) is ``"dense"``, the others ``"khatri_rao"``."""
    by_id = prm.by_id
    cap = Capture(actor, [m for _, m in candidates])
    try:
        with torch.enable_grad():
            logp_batch, deltas, inputs = cap.run(x[idx], a[idx])
    finally:
        cap.remove()
    calls, dims = cap.calls, cap.input_dims
    exact: list[int] = []
    for i, (mname, module) in enumerate(candidates):
        names = [by_id[id(p)] for p in module.parameters()]
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
    ref_logp, ref_grads = vmap_logp_and_grads(actor, x[idx], a[idx])
    coupled = not torch.allclose(logp_batch.detach(), ref_logp, rtol=1e-4, atol=1e-5)
    if coupled:
        reason = "log_prob of a sample depends on the other samples of the batch (e.g. normalization across the batch)"
        for name, _, _ in prm.layout:
            fallback[name] = reason
        exact = []
    keep = []
    for i in exact:
        mname, module = candidates[i]
        got_w = deltas[i].unsqueeze(2) * inputs[i].unsqueeze(1)
        ok = _close(got_w, ref_grads[by_id[id(module.weight)]])
        if module.bias is not None:
            ok = ok and _close(deltas[i], ref_grads[by_id[id(module.bias)]])
        if ok:
            keep.append(i)
        else:
            for p in module.parameters():
                fallback[by_id[id(p)]] = f"{mname}: its per-sample gradient is not delta a^T (weight used outside the layer?)"
    order = sorted(keep, key=lambda i: cap.first_call[i])
    head = order[-1] if order else None
    layers: list[Layer] = []
    for i in sorted(keep, key=lambda i: prm.offsets[by_id[id(candidates[i][1].weight)]]):
        mname, module = candidates[i]
        layers.append((mname, module, "dense" if i == head else "khatri_rao"))
    return layers


def _close(got: torch.Tensor, ref: torch.Tensor) -> bool:
    ref = ref.reshape(got.shape).to(got.dtype)
    scale = max(float(ref.abs().max()), float(got.abs().max()), 1e-30)
    return float((got - ref).abs().max()) <= CHECK_RTOL * scale


def _dense_params(layers: list[Layer], prm: _Params) -> list[Dense]:
    """Every parameter outside the Khatri-Rao weights, in parameter order, with the source of its
    per-sample gradient: ``"weight"`` / ``"bias"`` of a layer, or ``"vmap"``."""
    by_id = prm.by_id
    in_layers: dict[str, tuple[str, int]] = {}
    for li, (_, module, role) in enumerate(layers):
        if role == "dense":
            in_layers[by_id[id(module.weight)]] = ("weight", li)
        if module.bias is not None:
            in_layers[by_id[id(module.bias)]] = ("bias", li)
    kr_weights = {by_id[id(m.weight)] for _, m, role in layers if role == "khatri_rao"}
    dense: list[Dense] = []
    for name, _, _ in prm.layout:
        if name in kr_weights:
            continue
        src, li = in_layers.get(name, ("vmap", None))
        dense.append((name, src, li))
    return dense


def _energies(
    actor: nn.Module, x: torch.Tensor, a: torch.Tensor, layers: list[Layer], dense: list[Dense], prm: _Params,
    rows_idx: torch.Tensor, chunk_size: int,
) -> tuple[list[float], float]:
    """Mean gradient energy on the rows ``rows_idx``: per Khatri-Rao layer
    (``||delta_t||^2 ||a_t||^2``), and of the dense part (the head's weight, every bias, the
    ``vmap`` parameters' ``||g_t||^2``)."""
    vmap_names = [name for name, src, _ in dense if src == "vmap"]
    p_vmap = sum(math.prod(shape) for name, _, shape in prm.layout if name in set(vmap_names))
    vmap_rows = max(1, min(chunk_size, 2**26 // max(1, p_vmap)))
    e_layer = torch.zeros(len(layers), dtype=torch.float64)  # weight energy per layer
    e_bias = torch.zeros(len(layers), dtype=torch.float64)
    e_vmap = 0.0
    mods = [m for _, m, _ in layers]
    for s in range(0, len(rows_idx), chunk_size):
        rows = rows_idx[s : s + chunk_size]
        cap = Capture(actor, mods)
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
            g = vmap_grads(actor, x[rows[v0 : v0 + vmap_rows]], a[rows[v0 : v0 + vmap_rows]], vmap_names)
            e_vmap += float(sum(t.double().pow(2).sum() for t in g.values()))
    m = float(len(rows_idx))
    energy_kr = [float(e_layer[li] / m) for li, (_, _, role) in enumerate(layers) if role == "khatri_rao"]
    energy_dense = float(e_vmap / m)
    for li, (_, module, role) in enumerate(layers):
        if role == "dense":
            energy_dense += float(e_layer[li] / m)
        if module.bias is not None:
            energy_dense += float(e_bias[li] / m)
    return energy_kr, energy_dense


def _split(
    layers: list[Layer], dense: list[Dense], prm: _Params, energy_kr: list[float], energy_dense: float, n_rows: int,
    d: int, min_frac: float, fallback: Fallback,
) -> StructuredPlan:
    """``d`` split among the Khatri-Rao layers and the dense part (:func:`.structured_parts.allocate`),
    and the plan's records; UserError when ``d`` cannot be split."""
    by_id, offsets, numel = prm.by_id, prm.offsets, prm.numel
    kr_pre = [(mname, module) for mname, module, role in layers if role == "khatri_rao"]
    caps = [module.out_features * module.in_features for _, module in kr_pre]
    p_dense = sum(numel[name] for name, _, _ in dense)
    parts_energy = energy_kr + ([energy_dense] if p_dense else [])
    parts_caps = caps + ([p_dense] if p_dense else [])
    try:
        split = allocate(parts_energy, parts_caps, d, min_frac)
    except ValueError as exc:
        raise UserError(f"--projector structured: cannot split d = {d} over {len(parts_caps)} parts "
                        f"({parts_caps} parameters): {exc}; choose another --d or --projector dense") from None
    d_kr = split[: len(kr_pre)]
    d_dense = split[-1] if p_dense else 0

    specs: list[LayerSpec] = []
    kr_i = 0
    for mname, module, role in layers:
        wname = by_id[id(module.weight)]
        bname = by_id[id(module.bias)] if module.bias is not None else None
        dl_ = 0
        if role == "khatri_rao":
            dl_ = d_kr[kr_i]
            kr_i += 1
        specs.append(LayerSpec(module=mname, weight=wname, bias=bname, out=module.out_features, inp=module.in_features,
                               weight_offset=offsets[wname], bias_offset=offsets[bname] if bname else None, role=role, d=dl_))
    dense_specs = [DenseParam(name=name, offset=offsets[name], numel=numel[name], source=src, layer=li)
                   for name, src, li in dense]
    total_e = sum(parts_energy)
    names_parts = [mname for mname, _ in kr_pre] + (["dense"] if p_dense else [])
    energy = {
        "rows": n_rows,
        "per_part": dict(zip(names_parts, parts_energy)),
        "fraction": {k: (v / total_e if total_e > 0 else None) for k, v in zip(names_parts, parts_energy)},
    }
    p = sum(math.prod(shape) for _, _, shape in prm.layout)
    params = [(name, numel[name]) for name, _, _ in prm.layout]
    return StructuredPlan(p, specs, dense_specs, d_dense, params, fallback, energy)
