"""Projected per-sample policy gradients and their on-disk store (METHOD.md, stage 2).

For every transition ``(x_t, a_t)`` collected with the meta-policy ``theta*``,

    g_t  = grad_theta log pi_theta(a_t | x_t)  at theta*, over the actor's parameters only,
    g~_t = P^T g_t  in R^d                      (see :mod:`.projection`),

together with the labels of the stage-3 surrogate: ``y_t = sign(A_t)`` (a zero advantage
counts as ``+1``; its weight is 0 anyway) and ``w_t = |A_t|``.

Per-sample gradients come from ``torch.func``: ``vmap(grad(log_prob))`` through
``functional_call`` on one *unbatched* sample (``x: [in]``, ``a: []`` or ``[act]``), which
vmap batches; no Python loop over samples.  Rows are processed in chunks, so at most
``chunk_size x p`` gradient entries exist at a time and the ``N x p`` gradient matrix never
does.  The actor is put in eval mode for the computation and restored afterwards.

That is the *dense* route (:class:`.projection.GaussianProjector`).  With a
:class:`.structured.StructuredProjector` (``--projector structured``), :func:`projected_grads`
never forms per-sample gradients: one batched forward/backward per chunk gives every linear
layer's ``delta_t`` and input ``a_t``, and the per-layer projection is computed from them
(docs/projector.md).  :func:`.projectors.build_projector` makes either from the ``--projector``
name.

A :class:`FeatureStore` is a directory with one ``task_{i:03d}.pt`` per task and a
``manifest.json`` (written last) holding the task names, row counts, projector spec,
``||theta*||`` and the sha256 of every task file; loading verifies the checksums.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from ..artifacts import save_torch, sha256_file, verify_file, versions, write_json
from ..errors import UserError
# actor_params, flat_params, unflatten and build_projector are re-exported (their homes: .persample, .projectors)
from .persample import LogProbModule, actor_params, eval_mode, flat_params, functional_params, prepare_inputs, unflatten
from .projection import Projector
from .projectors import build_projector, projector_from_spec
from .structured import StructuredProjector, structured_projected_grads

__all__ = [
    "actor_params",
    "flat_params",
    "unflatten",
    "exact_grads",
    "projected_grads",
    "build_features",
    "build_projector",
    "FeatureStore",
    "DEFAULT_CHUNK_SIZE",
]

#: Transitions per vmap chunk.  Measured with ``benchmarks/bench_features.py`` (1 thread, N =
#: 20,480, d = 400; results/features.json): the 9.4k-parameter default policy runs 4.6k, 5.0k,
#: 6.4k, 6.2k, 5.5k transitions/s at 128, 256, 512, 1024, 2048 rows, with peak RSS 0.45-0.55 GB;
#: the 137k-parameter wide policy runs 300-400/s at any chunk size (the dense projection matmul
#: dominates) with peak RSS 0.86, 1.14, 1.69 GB at 256, 512, 1024.  The gradient buffers take
#: about ``2 x chunk_size x p x 4`` bytes: lower ``chunk_size`` for policies with millions of
#: parameters.
DEFAULT_CHUNK_SIZE = 512

Progress = Callable[[int], None]


# ---------------------------------------------------------------------------------------------
# per-sample gradients


def _for_each_chunk(
    actor: nn.Module,
    x: torch.Tensor,
    a: torch.Tensor,
    chunk_size: int,
    consume: Callable[[int, int, torch.Tensor], None],
) -> None:
    """Call ``consume(start, stop, G)`` with ``G[stop - start, p]`` the flattened per-sample
    gradients of rows ``start:stop``, chunk after chunk.

    ``G`` is a buffer reused across chunks: ``consume`` must not keep it.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    x, a = prepare_inputs(actor, x, a)
    wrapper = LogProbModule(actor)
    names = [name for name, _ in actor.named_parameters()]
    params, buffers = functional_params(actor)
    sizes = [t.numel() for t in params.values()]

    def log_prob(prm: dict[str, torch.Tensor], xs: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
        return functional_call(wrapper, (prm, buffers), (xs, acts))

    per_sample = vmap(grad(log_prob), in_dims=(None, 0, 0))
    n = x.shape[0]
    buf = torch.empty(min(chunk_size, n), sum(sizes), dtype=x.dtype, device=x.device)
    with eval_mode(actor), torch.no_grad():
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            grads = per_sample(params, x[start:stop], a[start:stop])
            flat = buf[: stop - start]
            offset = 0
            for name, size in zip(names, sizes):
                flat[:, offset : offset + size] = grads[f"actor.{name}"].reshape(stop - start, size)
                offset += size
            del grads
            consume(start, stop, flat)


def exact_grads(actor: nn.Module, x: torch.Tensor, a: torch.Tensor, chunk_size: int = 4096) -> torch.Tensor:
    """Unprojected per-sample gradients ``[N, p]`` of ``log pi(a_t | x_t)`` (tests, small ``p``)."""
    p = sum(t.numel() for t in actor.parameters())
    out = torch.empty(x.shape[0], p, dtype=next(actor.parameters()).dtype, device=x.device)

    def store(start: int, stop: int, flat: torch.Tensor) -> None:
        out[start:stop] = flat

    _for_each_chunk(actor, x, a, chunk_size, store)
    return out


def projected_grads(
    actor: nn.Module,
    x: torch.Tensor,
    a: torch.Tensor,
    projector: Projector,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: Progress | None = None,
) -> torch.Tensor:
    """``P^T grad_theta log pi(a_t | x_t)`` per row: ``[N, d]`` in ``projector.dtype``.

    Args:
        actor: the policy (``ActorCritic.actor``); gradients are over its parameters only,
            flattened in ``named_parameters`` order, with the actor in eval mode.
        x: policy inputs ``[N, in]``.
        a: actions, ``[N]`` (categorical) or ``[N, act]`` (Gaussian).
        projector: a projector with ``projector.p`` equal to the actor's parameter count.
        chunk_size: rows per vmap chunk; bounds memory at about ``2 x chunk_size x p`` floats.
        progress: called after each chunk with the number of rows that chunk finished.
    """
    p = sum(t.numel() for t in actor.parameters())
    if projector.p != p:
        raise ValueError(f"projector.p = {projector.p} but the actor has {p} parameters")
    if isinstance(projector, StructuredProjector):  # one batched forward/backward per chunk, no per-sample gradients
        return structured_projected_grads(actor, x, a, projector, chunk_size, progress)
    out = torch.empty(x.shape[0], projector.d, dtype=projector.dtype, device=x.device)

    def project(start: int, stop: int, flat: torch.Tensor) -> None:
        out[start:stop] = projector.project(flat)
        if progress is not None:
            progress(stop - start)

    _for_each_chunk(actor, x, a, chunk_size, project)
    return out


# ---------------------------------------------------------------------------------------------
# building per-task features


def build_features(
    actor: nn.Module,
    x_per_task: Sequence[torch.Tensor],
    a_per_task: Sequence[torch.Tensor],
    adv_per_task: Sequence[torch.Tensor],
    heldout_per_task: Sequence[torch.Tensor],
    projector: Projector,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: Progress | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Per-task feature dicts ``{g, y, w, adv, heldout}`` ready for :meth:`FeatureStore.write`.

    ``g`` is ``[N_i, d]`` float32 (projected gradients), ``adv`` the raw advantages (float32),
    ``y = sign(adv)`` in ``{-1, +1}`` with 0 mapped to ``+1``, ``w = |adv|`` and ``heldout`` a
    BoolTensor ``[N_i]``.  ``progress`` is called with the number of rows each chunk finished
    (e.g. ``lambda n: bar.advance(task_id, n)`` for a rich progress bar).
    """
    n_tasks = len(x_per_task)
    lengths = {"a_per_task": len(a_per_task), "adv_per_task": len(adv_per_task), "heldout_per_task": len(heldout_per_task)}
    for name, length in lengths.items():
        if length != n_tasks:
            raise ValueError(f"{name} has {length} entries but x_per_task has {n_tasks}")
    out: list[dict[str, torch.Tensor]] = []
    for i, (x, a, adv, held) in enumerate(zip(x_per_task, a_per_task, adv_per_task, heldout_per_task)):
        n = x.shape[0]
        adv = adv.detach().reshape(-1).to(torch.float32)
        held = held.reshape(-1)
        if a.shape[0] != n or adv.shape[0] != n or held.shape[0] != n:
            raise ValueError(
                f"task {i}: x has {n} rows but a, adv, heldout have {a.shape[0]}, {adv.shape[0]}, {held.shape[0]}"
            )
        if held.dtype != torch.bool:
            raise ValueError(f"task {i}: heldout must be a BoolTensor, got {held.dtype}")
        if not torch.isfinite(adv).all():
            raise UserError(f"task {i}: the advantages contain NaN or inf; check the critic and the rollouts")
        g = projected_grads(actor, x, a, projector, chunk_size=chunk_size, progress=progress).to(torch.float32)
        y = torch.where(adv >= 0, 1.0, -1.0).to(torch.float32)
        out.append({"g": g, "y": y, "w": adv.abs(), "adv": adv.clone(), "heldout": held.clone()})
    return out


# ---------------------------------------------------------------------------------------------
# the store


_FORMAT = "policygradex-features"
_VERSION = 1
_FIELDS = ("g", "y", "w", "adv", "heldout")
_TASK_FILE = re.compile(r"task_\d{3,}\.pt")


def task_file(i: int) -> str:
    """File name of task ``i`` in a feature store."""
    return f"task_{i:03d}.pt"


def _as_task_dict(i: int, data: dict[str, torch.Tensor], d: int) -> dict[str, torch.Tensor]:
    """Validate one task's dict and cast it to the stored dtypes."""
    missing = [k for k in _FIELDS if k not in data]
    if missing:
        raise ValueError(f"task {i}: feature dict lacks {', '.join(missing)}")
    g = data["g"]
    if g.dim() != 2 or g.shape[1] != d:
        raise ValueError(f"task {i}: g must have shape [N, {d}], got {tuple(g.shape)}")
    n = g.shape[0]
    out = {"g": g.detach().to(torch.float32).contiguous()}
    for k in ("y", "w", "adv"):
        out[k] = data[k].detach().reshape(-1).to(torch.float32).contiguous()
    out["heldout"] = data["heldout"].detach().reshape(-1).to(torch.bool).contiguous()
    for k in ("y", "w", "adv", "heldout"):
        if out[k].shape[0] != n:
            raise ValueError(f"task {i}: {k} has {out[k].shape[0]} rows but g has {n}")
    return out


class FeatureStore:
    """Projected gradient features of all tasks, concatenated task after task.

    Attributes:
        task_names: names of the tasks, in order.
        projector: the projector that produced ``G`` (regenerated from its spec on load).
        theta_norm: ``||theta*||`` over the actor's parameters.
        counts: rows per task.
        G: ``[N, d]`` float32 projected gradients.
        y: ``[N]`` float32 labels ``sign(adv)`` in ``{-1, +1}``.
        w: ``[N]`` float32 weights ``|adv|``.
        adv: ``[N]`` float32 raw advantages.
        task: ``[N]`` int64 task index of each row.
        heldout: ``[N]`` bool held-out mask.
        extra: the ``extra`` dict given to :meth:`write` (``{}`` when none).
        directory: where the store lives (``None`` for one built in memory).
    """

    def __init__(
        self,
        task_names: Sequence[str],
        per_task: Sequence[dict[str, torch.Tensor]],
        projector: Projector,
        theta_norm: float,
        extra: dict[str, Any] | None = None,
        directory: str | Path | None = None,
    ) -> None:
        names = [str(t) for t in task_names]
        if len(names) != len(per_task):
            raise ValueError(f"{len(names)} task names but {len(per_task)} per-task feature dicts")
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique, got {names}")
        if not names:
            raise ValueError("a feature store needs at least one task")
        if not math.isfinite(float(theta_norm)) or float(theta_norm) < 0:
            raise ValueError(f"theta_norm must be a finite non-negative number, got {theta_norm!r}")
        tasks = [_as_task_dict(i, data, projector.d) for i, data in enumerate(per_task)]
        self.task_names = names
        self.projector = projector
        self.theta_norm = float(theta_norm)
        self.extra = dict(extra or {})
        self.directory = Path(directory) if directory is not None else None
        self.counts = [t["g"].shape[0] for t in tasks]
        self.G = torch.cat([t["g"] for t in tasks])
        self.y = torch.cat([t["y"] for t in tasks])
        self.w = torch.cat([t["w"] for t in tasks])
        self.adv = torch.cat([t["adv"] for t in tasks])
        self.heldout = torch.cat([t["heldout"] for t in tasks])
        self.task = torch.repeat_interleave(torch.arange(len(names)), torch.tensor(self.counts, dtype=torch.long))

    @property
    def n_tasks(self) -> int:
        return len(self.task_names)

    @property
    def d(self) -> int:
        return self.projector.d

    def mask(self, tasks: Sequence[int] | None = None, heldout: bool | None = None) -> torch.Tensor:
        """Rows of the given task indices (all when ``None``), held-out or not (both when ``None``)."""
        m = torch.ones(self.G.shape[0], dtype=torch.bool)
        if tasks is not None:
            m &= torch.isin(self.task, torch.as_tensor(list(tasks), dtype=torch.long))
        if heldout is not None:
            m &= self.heldout if heldout else ~self.heldout
        return m

    def __repr__(self) -> str:
        return f"FeatureStore(n_tasks={self.n_tasks}, rows={self.G.shape[0]}, d={self.d}, projector={self.projector!r})"

    # -- disk -------------------------------------------------------------------------------

    MANIFEST = "manifest.json"

    @classmethod
    def write(
        cls,
        directory: str | Path,
        task_names: Sequence[str],
        per_task: Sequence[dict[str, torch.Tensor]],
        projector: Projector,
        theta_norm: float,
        extra: dict[str, Any] | None = None,
    ) -> FeatureStore:
        """Write a store to ``directory`` and return it (as if loaded).

        Every file is written atomically.  An existing manifest is removed first and the new
        one written last, so an interrupted write leaves a directory that :meth:`load` rejects
        instead of a mix of old and new tasks.  Task files of an earlier, larger store are
        removed once the new manifest is in place.
        """
        store = cls(task_names, per_task, projector, theta_norm, extra=extra, directory=directory)
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        manifest = directory / cls.MANIFEST
        manifest.unlink(missing_ok=True)
        files: dict[str, str] = {}
        offset = 0
        for i, n in enumerate(store.counts):
            rows = slice(offset, offset + n)
            offset += n
            data = {"g": store.G[rows], "y": store.y[rows], "w": store.w[rows], "adv": store.adv[rows], "heldout": store.heldout[rows]}
            path = directory / task_file(i)
            save_torch(path, {k: v.clone() for k, v in data.items()})
            files[task_file(i)] = sha256_file(path)
        write_json(
            manifest,
            {
                "format": _FORMAT,
                "version": _VERSION,
                "task_names": store.task_names,
                "counts": store.counts,
                "n_rows": int(sum(store.counts)),
                "p": projector.p,
                "d": projector.d,
                "projector": projector.spec(),
                "theta_norm": store.theta_norm,
                "files": files,
                "extra": store.extra,
                "versions": versions(),
            },
        )
        for stale in directory.iterdir():
            if _TASK_FILE.fullmatch(stale.name) and stale.name not in files:
                stale.unlink(missing_ok=True)
        return store

    @classmethod
    def load(cls, directory: str | Path) -> FeatureStore:
        """Load a store, verifying every checksum (UserError naming the bad file otherwise)."""
        directory = Path(directory)
        manifest_path = directory / cls.MANIFEST
        if not manifest_path.exists():
            raise UserError(f"no feature store at {directory}: {manifest_path} is missing (the features were never written or their write was interrupted)")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"feature manifest {manifest_path} is corrupted or truncated ({exc}); delete {directory} and rerun") from exc
        if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
            raise UserError(f"{manifest_path} is not a policygradex feature manifest")
        if manifest.get("version") != _VERSION:
            raise UserError(f"{manifest_path} has feature store version {manifest.get('version')!r}; this policygradex reads version {_VERSION}")
        missing = [k for k in ("task_names", "counts", "projector", "theta_norm", "files") if k not in manifest]
        if missing:
            raise UserError(f"feature manifest {manifest_path} lacks {', '.join(missing)}")
        names, counts, files = manifest["task_names"], manifest["counts"], manifest["files"]
        if not isinstance(names, list) or not isinstance(counts, list) or len(names) != len(counts) or not isinstance(files, dict):
            raise UserError(f"feature manifest {manifest_path} is inconsistent (task_names, counts and files disagree)")
        projector = projector_from_spec(manifest["projector"])
        per_task: list[dict[str, torch.Tensor]] = []
        for i, count in enumerate(counts):
            name = task_file(i)
            path = directory / name
            if name not in files:
                raise UserError(f"feature manifest {manifest_path} has no checksum for {name}")
            verify_file(path, files[name], "feature file")
            try:
                data = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # a checksummed file that does not unpickle: wrong writer
                raise UserError(f"feature file {path} cannot be read ({exc}); delete {directory} and rerun") from exc
            if not isinstance(data, dict) or any(k not in data for k in _FIELDS):
                raise UserError(f"feature file {path} does not hold the fields {', '.join(_FIELDS)}")
            if data["g"].shape != (count, projector.d):
                raise UserError(f"feature file {path} holds g of shape {tuple(data['g'].shape)}, expected ({count}, {projector.d})")
            per_task.append(data)
        try:
            return cls(names, per_task, projector, manifest["theta_norm"], extra=manifest.get("extra"), directory=directory)
        except ValueError as exc:
            raise UserError(f"feature store {directory} is inconsistent: {exc}") from exc
