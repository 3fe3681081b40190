"""Validation of a PolicyGradEx run against real fine-tuning (METHOD.md, "Validation").

``policygradex run`` estimates, for every sampled subset S, how theta* would move if it were
trained on S (theta_S = theta* + P u_S) and how well every task of S would then do (f(S, i)),
all from first-order gradient features.  This module does the expensive thing the estimate
replaces, on the *same* subsets, and measures how far the estimate is from it:

1. **Real adaptation.**  theta* is fine-tuned with PPO on each subset's tasks
   (:func:`policygradex.rl.ppo.finetune`, ``finetune_steps`` environment steps, one fixed seed
   for every subset) and evaluated by rollouts with sampled actions and common random numbers
   (the same environment seeds and action noise for every subset):
   ``f_true(S, i)`` = mean return of theta_S on task i.
2. **First-order approximation error.**  Along each real adaptation path (the actor after
   every PPO iteration) and at points rescaled along it to hit target relative distances,
   ``Delta_true = log pi_theta(a|s) - log pi_theta*(a|s)`` is compared on the subset's
   held-out transitions with the exact first-order prediction ``Delta_lin = g^T (theta -
   theta*)`` (a forward-mode ``torch.func.jvp``, no projection):
   ``err = ||Delta_true - Delta_lin||_2 / ||Delta_true||_2``.
3. **Ground truth.**  The affinity of ``f_true`` on the same subsets, grouped by the same code
   and settings as the run; NMI / ARI of the run's groups against it, a random-grouping
   floor, Spearman correlation of the standardized f against the standardized f_true.
4. **Speedup.**  Wall time of the real route (fine-tuning + evaluation of every subset) over
   the PolicyGradEx route (collect + features + surrogate + evaluate stages).
5. **Generalization measure.**  A Hutchinson estimate of the trace of the Hessian of the
   policy loss ``L(theta) = -mean_t A_t log pi_theta(a_t|s_t)`` at theta* and at a few
   theta_S (Hessian-vector products by forward-over-reverse ``torch.func``), next to the
   measured gap between held-out and training rows.

The real route runs as independent units (theta*'s evaluation, one fine-tuning per subset and
seed) on an execution backend (:mod:`policygradex.backend`: in-process, a process pool or
Ray; the results do not depend on it).  Every finished unit is cached in
``DIR/validate/units/`` at once, so an interrupted validation resumes from them; the assembled
results in ``DIR/validate/finetune.pt`` with a manifest keyed by the run's artifacts and the
validation options; the analysis in ``DIR/validation.json`` with
a manifest keyed by the fine-tuning digest, the run's estimates and the analysis options.
The formulas are in ``docs/validation.md``.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import grad, jvp, vmap

from . import artifacts as art
from .config import RunConfig, ValidateConfig
from .errors import UserError
from .estimate.collect import load_meta_policy, load_rollouts
# logprob_change and relative_error are re-exported (their home: estimate.first_order)
from .estimate.first_order import float64_copy, functional_logprob, functional_logprob_change, logprob_change, relative_error
from .estimate.persample import flat_params
from .stage import stage_seconds
from .stages import group_with_null
from .tasks import TaskSuite

__all__ = [
    "logprob_change",
    "relative_error",
    "policy_loss_fn",
    "hvp_fn",
    "hutchinson_trace",
    "exact_hessian_trace",
    "finetune_subsets",
    "bucket_label",
    "agreement",
    "speedup_breakdown",
    "validate",
]


def agreement(labels_a: Sequence[int], labels_b: Sequence[int]) -> dict[str, float]:
    """NMI and ARI (sklearn) of two partitions given as label vectors; invariant to relabeling."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    a, b = np.asarray(labels_a), np.asarray(labels_b)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"label vectors must have the same length, got {a.shape} and {b.shape}")
    return {"nmi": float(normalized_mutual_info_score(a, b)), "ari": float(adjusted_rand_score(a, b))}


def speedup_breakdown(policygradex_s: dict[str, float], finetune_s: Sequence[float], eval_s: Sequence[float],
                      shared_s: dict[str, float | None] | None = None) -> tuple[float | None, dict]:
    """``(speedup, breakdown)``: the real route (fine-tuning + evaluation of every subset) over the
    PolicyGradEx route (the sum of its timed stages); stages both routes share (training θ*,
    sampling subsets, grouping) are listed but counted in neither."""
    pgx = {k: float(v) for k, v in policygradex_s.items()}
    pgx_total = float(sum(pgx.values()))
    ft_total, ev_total = float(sum(finetune_s)), float(sum(eval_s))
    real_total = ft_total + ev_total
    breakdown = {
        "policygradex_s": {**pgx, "total": pgx_total},
        "real_s": {"finetune": ft_total, "evaluate": ev_total, "total": real_total,
                   "finetune_per_subset_mean": ft_total / max(len(finetune_s), 1),
                   "evaluate_per_subset_mean": ev_total / max(len(eval_s), 1)},
        "shared_not_counted_s": dict(shared_s or {}),
    }
    return (real_total / pgx_total if pgx_total > 0 else None), breakdown


def bucket_label(delta: float) -> str:
    """``0.001 -> "0.1%"``, ``0.05 -> "5%"``."""
    return f"{100 * delta:g}%"


#: A point belongs to the bucket of target delta_b when delta_b / sqrt(2) <= delta < delta_b * sqrt(2).
BUCKET_FACTOR = math.sqrt(2.0)


def _thin(k: int, keep: int) -> list[int]:
    """At most ``keep`` snapshot indices out of ``k``: iterations 1, 2, 4, 8, ... and the last one
    (the error changes smoothly with the distance; early iterations move the most)."""
    if k <= keep:
        return list(range(k))
    idx = sorted({min(k - 1, 2**j - 1) for j in range(keep - 1)} | {k - 1})
    return idx[:keep - 1] + [k - 1] if len(idx) > keep else idx


def _path_points(theta_star: torch.Tensor, path: torch.Tensor, targets: Sequence[float],
                 random_dir: torch.Tensor | None = None, max_real: int = 8) -> list[dict]:
    """The real snapshots of one adaptation path (at most ``max_real``, see :func:`_thin`), and
    for every target delta the point
    ``theta* + t (theta_k - theta*)`` with ``t = target / delta_k``, ``theta_k`` the first snapshot
    at or beyond the target (the last one if the path stays below it)."""
    norm = float(theta_star.norm())
    deltas = [float((p - theta_star).norm()) / norm for p in path]
    pts = [{"kind": "real", "snapshot": k, "t": 1.0, "theta": path[k]} for k in _thin(len(path), max_real)]
    for target in targets:
        k = next((j for j, d in enumerate(deltas) if d >= target), len(deltas) - 1)
        if deltas[k] <= 0:
            continue
        t = target / deltas[k]
        pts.append({"kind": "scaled", "snapshot": k, "t": t, "target": target,
                    "theta": theta_star + t * (path[k] - theta_star)})
        if random_dir is not None:  # control: the same distance in a random direction
            pts.append({"kind": "random", "snapshot": 0, "t": float("nan"), "target": target,
                        "theta": theta_star + target * norm * random_dir / random_dir.norm()})
    return pts


def _bucket_stats(points: list[dict], targets: Sequence[float]) -> dict[str, dict]:
    out = {}
    for target in targets:
        near = [p for p in points if target / BUCKET_FACTOR <= p["delta"] < target * BUCKET_FACTOR and math.isfinite(p["error"])]
        inb = [p for p in near if p["kind"] != "random"]
        rnd = np.array([p["error"] for p in near if p["kind"] == "random"])
        errs = np.array([p["error"] for p in inb])
        real = np.array([p["error"] for p in inb if p["kind"] == "real"])
        vs_logp = np.array([p["error_vs_logp"] for p in inb])
        out[bucket_label(target)] = {
            "delta": target, "n": int(errs.size), "n_real": int(real.size),
            "median": float(np.median(errs)) if errs.size else None,
            "mean": float(errs.mean()) if errs.size else None,
            "max": float(errs.max()) if errs.size else None,
            "median_real": float(np.median(real)) if real.size else None,
            "median_vs_logp": float(np.median(vs_logp)) if vs_logp.size else None,
            "median_random_direction": float(np.median(rnd)) if rnd.size else None,
        }
    return out


# ============================================================================ Hessian trace


def policy_loss_fn(actor: nn.Module, x: torch.Tensor, a: torch.Tensor, adv: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``vec -> L(vec) = -mean_t A_t log pi_vec(a_t | x_t)`` (in the actor's dtype)."""
    logp = functional_logprob(actor, x, a)
    w = adv.detach().to(next(actor.parameters()).dtype)

    def loss(vec: torch.Tensor) -> torch.Tensor:
        return -(w * logp(vec)).mean()

    return loss


def hvp_fn(loss: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``v -> H v`` with ``H`` the Hessian of ``loss`` at ``theta`` (forward-over-reverse:
    ``jvp`` of ``grad``, one pass costs a few gradient evaluations, ``H`` is never formed)."""
    g = grad(loss)

    def hvp(v: torch.Tensor) -> torch.Tensor:
        return jvp(g, (theta,), (v,))[1]

    return hvp


def hutchinson_trace(loss: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor, probes: int, seed: int = 0,
                     batch: int = 8) -> dict:
    """Hutchinson estimate ``tr H ~ (1/K) sum_k v_k^T H v_k`` with ``K = probes`` Rademacher
    vectors ``v_k`` (entries +-1, seeded).  Probes are evaluated ``batch`` at a time under
    ``vmap``.  Returns ``{trace, stderr, probes, samples}``; ``stderr`` is the sample standard
    deviation over probes divided by sqrt(K) (NaN for K = 1)."""
    if probes < 1:
        raise ValueError(f"probes must be >= 1, got {probes}")
    theta = theta.detach()
    gen = torch.Generator().manual_seed(int(seed))
    hvp = hvp_fn(loss, theta)
    batched = vmap(hvp)
    samples = []
    done = 0
    while done < probes:
        b = min(batch, probes - done)
        V = (torch.randint(0, 2, (b, theta.numel()), generator=gen) * 2 - 1).to(theta.dtype)
        HV = batched(V) if b > 1 else hvp(V[0]).unsqueeze(0)
        samples.append((V * HV).sum(dim=1).detach())
        done += b
    s = torch.cat(samples).double()
    return {"trace": float(s.mean()), "stderr": float(s.std() / math.sqrt(probes)) if probes > 1 else float("nan"),
            "probes": int(probes), "samples": s.tolist()}


def exact_hessian_trace(loss: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor) -> tuple[float, torch.Tensor]:
    """``(tr H, H)`` with the full Hessian from ``torch.func.hessian`` (tests; small p only)."""
    H = torch.func.hessian(loss)(theta.detach())
    return float(torch.diagonal(H).sum()), H


# ============================================================================ real fine-tuning


def _effective_steps(n_sub_tasks: int, cfg, total: int) -> int:
    batch = n_sub_tasks * cfg.envs_per_task * cfg.num_steps
    return max(total, batch) // batch * batch


# The fine-tuning is split into independent units, each cached on its own and run by an
# execution backend (policygradex.backend): the evaluation of theta* on every task, and one
# unit per (subset, seed).  A unit's result depends only on theta*, the suite, the PPO config,
# the fine-tuning options and its own tasks and seed (it seeds itself), never on the backend,
# the order of execution or the other units.

#: Version of the per-unit cache format (part of every unit's key).
_UNIT_FORMAT = 2


def finetune_units(names: Sequence[str], members: np.ndarray, ppo_cfg, vcfg: ValidateConfig, prefix: str = "") -> tuple[list, dict]:
    """The units of the real route: ``(units, index)``.

    ``units`` (:class:`policygradex.backend.Unit`, deduplicated by key): the evaluation of
    theta* (key ``theta*``-...) and one unit per distinct (subset tasks, seed); ``index`` maps
    ``("theta*",)`` and ``(s, j)`` (subset ``s``, repeat ``j``) to a unit key.  Keys hash
    ``prefix`` (what every unit depends on: theta*, suite, PPO config, fine-tuning options),
    the unit's tasks, seed, and whether it keeps its adaptation path (repeat 0 only).
    """
    from .backend import Unit

    m = members.shape[0]
    reps = vcfg.finetune_seeds
    index: dict[tuple, str] = {}
    units: dict[str, Unit] = {}
    key = art.config_hash([_UNIT_FORMAT, prefix, "theta*"])
    index[("theta*",)] = key
    units[key] = Unit(key, ("theta*",), tuple(names), "theta* evaluation", 0.0)
    for s in range(m):
        tasks = tuple(int(i) for i in np.flatnonzero(members[s]))
        for j in range(reps):
            seed = vcfg.finetune_seed + j
            key = art.config_hash([_UNIT_FORMAT, prefix, list(tasks), seed, j == 0])
            index[(s, j)] = key
            if key not in units:
                label = f"subset {s + 1}/{m}" + (f" seed {j + 1}/{reps}" if reps > 1 else "")
                cost = _effective_steps(len(tasks), ppo_cfg, vcfg.finetune_steps)
                units[key] = Unit(key, ("finetune", tasks, seed, j == 0), tuple(names[i] for i in tasks), label, float(cost))
    return list(units.values()), index


def _finetune_setup(shared: dict) -> dict:
    """Once per worker process: rebuild the suite and theta* from the shared inputs."""
    from .config import PPOConfig
    from .rl.checkpoint import build_model

    ppo = PPOConfig.model_validate(shared["ppo"])
    torch.set_num_threads(ppo.threads)
    suite = TaskSuite.from_dict(shared["suite"])
    model = build_model(suite, ppo)
    model.load_state_dict(shared["model"])
    model.eval()
    return {**shared, "ppo": ppo, "suite": suite, "model": model, "probe": copy.deepcopy(model.actor)}


def _finetune_unit(ctx: dict, payload: tuple) -> dict:
    """One unit of the real route (runs in a worker): theta*'s evaluation, or the fine-tuning of
    theta* on a subset's tasks with one seed followed by the evaluation of theta_S."""
    from .rl.evaluate import evaluate_policy
    from .rl.ppo import finetune

    torch.set_num_threads(ctx["ppo"].threads)
    model, suite = ctx["model"], ctx["suite"]
    if payload[0] == "theta*":
        base = evaluate_policy(model, suite, episodes=ctx["episodes"], deterministic=False, seed=ctx["eval_seed"])
        return {"theta_star_returns": {k: v["returns"] for k, v in base.items()}}
    _, tasks, seed, keep_path = payload
    res = finetune(model, suite, list(tasks), ctx["ppo"], ctx["finetune_steps"], seed)
    t0 = time.perf_counter()
    ev = evaluate_policy(res.model, suite, episodes=ctx["episodes"], deterministic=False, seed=ctx["eval_seed"], tasks=list(tasks))
    t_ev = time.perf_counter() - t0
    out = {"f": [ev[suite.names[i]]["mean"] for i in tasks], "returns": [ev[suite.names[i]]["returns"] for i in tasks],
           "finetune_s": res.wall_s, "eval_s": t_ev, "env_steps": res.env_steps, "final": flat_params(res.model.actor).to(torch.float32)}
    if keep_path:
        probe, path = ctx["probe"], []
        for _, state in res.snapshots:
            probe.load_state_dict(state)
            path.append(flat_params(probe).to(torch.float32))
        out["path"] = torch.stack(path)
        out["steps"] = [int(k) for k, _ in res.snapshots]
    return out


def _load_unit(cache_dir: Path | None, key: str):
    """A finished unit's result from the cache, or None (missing, unreadable or another key)."""
    if cache_dir is None:
        return None
    path = cache_dir / f"{key}.pt"
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, weights_only=False)
    except Exception:  # noqa: BLE001 - a truncated or corrupted unit is recomputed
        return None
    return blob["result"] if isinstance(blob, dict) and blob.get("key") == key and "result" in blob else None


def finetune_subsets(model, suite: TaskSuite, members: np.ndarray, ppo_cfg, vcfg: ValidateConfig,
                     progress: Callable[[int, str], None] | None = None, backend=None,
                     cache_dir: str | Path | None = None, cache_prefix: str = "", stats: dict | None = None) -> dict:
    """Fine-tune theta* (``model``) on every subset and evaluate it: the real route.

    Every subset uses the same fine-tuning seeds and the same evaluation seed (common random
    numbers), so subsets differ only in their tasks.  With ``vcfg.finetune_seeds = r`` each
    subset is fine-tuned ``r`` times (seeds ``finetune_seed + j``) and ``f_true`` is the mean of
    the ``r`` evaluations.  Returns a dict with ``f_true`` [m, n] (NaN outside the subsets),
    ``f_true_repeats`` [r, m, n], ``paths`` (per subset a [K, p] float32 tensor: the actor after
    each PPO iteration of the first repeat), ``steps`` (env steps at each snapshot),
    ``returns`` (per subset, per task, the episode returns of every repeat), ``finetune_s`` /
    ``eval_s`` (wall time per subset, all repeats), ``finals`` (per repeat, per subset, the
    fine-tuned actor theta_S as a flat float32 vector) and ``theta_star_returns`` (theta*
    evaluated the same way on every task).

    The work runs as independent units (:func:`finetune_units`) on ``backend`` (default: this
    process, serially); the result does not depend on the backend.  With ``cache_dir`` every
    finished unit is stored there at once (``<key>.pt``, atomically) and units already there
    are reused, so an interrupted call resumes; ``cache_prefix`` must then hash everything the
    units depend on besides their tasks and seed.  ``progress(steps, text)`` is called as each
    unit finishes; ``stats`` (a dict), when given, receives the unit counts.
    """
    from .backend import LocalBackend, Resources

    m, n = members.shape
    reps = vcfg.finetune_seeds
    cache = Path(cache_dir) if cache_dir is not None else None
    units, index = finetune_units(suite.names, members, ppo_cfg, vcfg, cache_prefix)
    results = {u.key: r for u in units if (r := _load_unit(cache, u.key)) is not None}
    pending = [u for u in units if u.key not in results]
    if stats is not None:
        stats.update({"units": len(units), "units_reused": len(units) - len(pending), "units_run": len(pending)})
    if pending:
        shared = {"model": {k: v.detach().clone() for k, v in model.state_dict().items()}, "suite": suite.to_dict(),
                  "ppo": ppo_cfg.model_dump(mode="json"), "finetune_steps": vcfg.finetune_steps, "episodes": vcfg.episodes,
                  "eval_seed": vcfg.eval_seed}
        be = backend if backend is not None else LocalBackend()
        for unit, result in be.map(_finetune_unit, pending, shared=shared, setup=_finetune_setup,
                                   resources=Resources(cpus=ppo_cfg.threads)):
            if cache is not None:
                art.save_torch(cache / f"{unit.key}.pt", {"key": unit.key, "result": result})
            results[unit.key] = result
            if progress is not None:
                progress(int(result.get("env_steps", 0)), unit.label)

    f_rep = np.full((reps, m, n), np.nan)
    paths, steps, returns, ft_s, ev_s = [], [], [], [], []
    finals: list[list[torch.Tensor]] = [[] for _ in range(reps)]
    for s in range(m):
        tasks = np.flatnonzero(members[s]).tolist()
        rets: dict[str, list[float]] = {suite.names[i]: [] for i in tasks}
        t_ft = t_ev = 0.0
        for j in range(reps):
            r = results[index[(s, j)]]
            t_ev += r["eval_s"]
            t_ft += r["finetune_s"]
            finals[j].append(r["final"])
            for pos, i in enumerate(tasks):
                f_rep[j, s, i] = r["f"][pos]
                rets[suite.names[i]] += r["returns"][pos]
            if j == 0:
                paths.append(r["path"])
                steps.append(list(r["steps"]))
        ft_s.append(t_ft)
        ev_s.append(t_ev)
        returns.append(rets)
    base = results[index[("theta*",)]]["theta_star_returns"]
    return {"f_true": f_rep.mean(axis=0), "f_true_repeats": f_rep, "paths": paths, "steps": steps, "returns": returns,
            "finetune_s": ft_s, "eval_s": ev_s, "finals": finals, "theta_star_returns": dict(base)}


# ============================================================================ the validation


def _stage_digest(run_dir: Path, stages: Sequence[str]) -> str:
    """Combined digest of finished run stages (see ``artifacts.stage_digest``)."""
    return art.config_hash([art.stage_digest(run_dir, stage) for stage in stages])


def _check_run(run_dir: Path, suite: TaskSuite, cfg: RunConfig) -> None:
    needed = ["config.json", "subsets.json", "collect/meta_policy.json", "collect/rollouts.pt", "f_table.csv", "groups.json"]
    missing = [p for p in needed if not (run_dir / p).is_file()]
    if missing:
        raise UserError(f"{run_dir} is not a finished run (missing {missing[0]}); run `policygradex run --out {run_dir}` first")
    conf = art.read_json(run_dir / "config.json")
    if conf.get("suite") != suite.to_dict() or conf.get("config") != cfg.model_dump(mode="json"):
        raise UserError(f"{run_dir} holds a run of another suite or config; validate with the same options as the run")


def _rho(a, b) -> float | None:
    """Spearman's rank correlation (scipy), or None where it is undefined (a constant input)."""
    import warnings

    from scipy.stats import ConstantInputWarning, spearmanr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantInputWarning)
        r = float(spearmanr(a, b).statistic)
    return r if np.isfinite(r) else None


def _mean(xs: list) -> float | None:
    """Mean of the defined values, None if there are none."""
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def _seed_pairs(reps: np.ndarray, members: np.ndarray) -> tuple[list[np.ndarray], list[float | None]]:
    """Every repeat's f standardized per task (the in-subset entries), and the Spearman
    correlation of every pair of repeats: how reproducible a ground truth is across seeds."""
    z = [_standardized(r_, members)[members] for r_ in reps]
    return z, [_rho(z[a], z[b]) for a in range(len(z)) for b in range(a + 1, len(z))]


def _grouping_summary(g, nt, names: Sequence[str], alpha: float) -> dict:
    """The JSON fields of a ground-truth grouping and its null test."""
    return {"groups": [[names[i] for i in grp] for grp in g.groups], "labels": [int(x) for x in g.labels],
            "k": int(g.k), "null_p": float(nt.p_value), "distinguishable_from_noise": bool(nt.p_value < alpha)}


def _standardized(f: np.ndarray, members: np.ndarray) -> np.ndarray:
    from .estimate.affinity import standardize_per_task

    return standardize_per_task(f, members)[0]


def _finetune_stage(run_dir: Path, vdir: Path, model, suite: TaskSuite, members: np.ndarray, cfg: RunConfig,
                    vcfg: ValidateConfig, backend=None) -> tuple[dict, str]:
    """The real route, cached twice: every finished unit in ``validate/units/<key>.pt`` (kept
    across reruns, so an interrupted validation resumes and a changed ``--finetune-seeds``
    reuses the seeds it had), and the assembled result in ``validate/finetune.pt`` with the
    ``validate_finetune`` manifest."""
    from .ui import progress_bar

    ft_fields = vcfg.model_dump(mode="json", include={"finetune_steps", "finetune_seed", "finetune_seeds", "episodes", "eval_seed"})
    key = art.config_hash([_UNIT_FORMAT, _stage_digest(run_dir, ("train", "collect", "subsets")), cfg.ppo.model_dump(mode="json"),
                           ft_fields])
    st = art.Stage(run_dir, "validate_finetune", key)
    if not st.current:
        # what every unit depends on besides its own tasks and seed (not the subsets stage, nor
        # finetune_seed / finetune_seeds: units are keyed by their own seed)
        prefix = art.config_hash([_stage_digest(run_dir, ("train", "collect")), suite.to_dict(), cfg.ppo.model_dump(mode="json"),
                                  vcfg.model_dump(mode="json", include={"finetune_steps", "episodes", "eval_seed"})])
        units, _ = finetune_units(suite.names, members, cfg.ppo, vcfg, prefix)
        todo = [u for u in units if not (vdir / "units" / f"{u.key}.pt").is_file()]
        stats: dict = {}
        with progress_bar(sum(u.cost for u in todo), f"fine-tune {members.shape[0]} subsets ({len(todo)} units)", unit="steps") as bar:
            res = finetune_subsets(model, suite, members, cfg.ppo, vcfg, progress=lambda k, text: bar.advance(k, text),
                                   backend=backend, cache_dir=vdir / "units", cache_prefix=prefix, stats=stats)
        res["tasks"] = suite.names
        res["members"] = torch.as_tensor(members)
        art.save_torch(vdir / "finetune.pt", res)
        info = backend.describe() if backend is not None else {"backend": "local", "parallelism": 1}
        st.done(["validate/finetune.pt"], {"execution": {**info, **stats}})
    return torch.load(vdir / "finetune.pt", weights_only=False), st.digest


def _approx_error(model, theta_star: torch.Tensor, ro: dict, members: np.ndarray, paths: list[torch.Tensor],
                  steps: list[list[int]], targets: Sequence[float], seed: int = 0,
                  max_real: int = 8) -> tuple[dict, list[dict]]:
    norm = float(theta_star.norm())
    act64 = float64_copy(model.actor)
    gen = torch.Generator().manual_seed(seed)
    points = []
    for s, path in enumerate(paths):
        random_dir = torch.randn(theta_star.shape, generator=gen, dtype=torch.float64)
        tasks = torch.as_tensor(np.flatnonzero(members[s]))
        rows = torch.isin(ro["task"], tasks) & ro["heldout"]
        f = functional_logprob(act64, ro["x"][rows], ro["actions"][rows])
        for p in _path_points(theta_star, path.to(theta_star.dtype), targets, random_dir, max_real):
            d_true, d_lin, logp = functional_logprob_change(f, theta_star, p["theta"])
            delta = float((p["theta"].double() - theta_star.double()).norm()) / norm
            points.append({"subset": s, "kind": p["kind"], "steps": steps[s][p["snapshot"]], "t": p["t"], "delta": delta,
                           "error": relative_error(d_true, d_lin), "error_vs_logp": relative_error(logp, logp - d_true + d_lin),
                           "rows": int(rows.sum()), "rms_delta_logp": float(d_true.pow(2).mean().sqrt())})
    return _bucket_stats(points, targets), points


def _hessian(model, theta_star: torch.Tensor, ro: dict, members: np.ndarray, paths: list[torch.Tensor],
             vcfg: ValidateConfig, names: list[str]) -> list[dict]:
    """Hutchinson trace of the Hessian of the training-rows policy loss, and the loss gap.

    At theta* the rows of every task, at theta_S (the end of subset S's fine-tuning, for the
    first ``hessian_subsets`` subsets) the rows of S's tasks.  The trace is estimated on at
    most ``hessian_rows`` training rows drawn at random (seeded; an unbiased estimate of the
    all-rows trace), in float32; the losses use all rows, in float64.
    """
    act32 = copy.deepcopy(model.actor).float().eval()
    act64 = float64_copy(model.actor)
    gen = torch.Generator().manual_seed(vcfg.hessian_seed)
    out = []
    points = [("theta*", theta_star, np.ones(members.shape[1], dtype=bool))]
    for s in range(min(vcfg.hessian_subsets, len(paths))):
        points.append((f"subset {s}", paths[s][-1].to(theta_star.dtype), members[s]))
    for label, theta, tasks_mask in points:
        tasks = torch.as_tensor(np.flatnonzero(tasks_mask))
        in_tasks = torch.isin(ro["task"], tasks)
        tr_idx = torch.nonzero(in_tasks & ~ro["heldout"]).flatten()
        ho_idx = torch.nonzero(in_tasks & ro["heldout"]).flatten()
        sample = tr_idx if tr_idx.numel() <= vcfg.hessian_rows else tr_idx[torch.randperm(tr_idx.numel(), generator=gen)[:vcfg.hessian_rows]]
        t0 = time.perf_counter()
        loss_h = policy_loss_fn(act32, ro["x"][sample], ro["actions"][sample], ro["adv"][sample])
        est = hutchinson_trace(loss_h, theta.detach().to(torch.float32), vcfg.hessian_probes, seed=vcfg.hessian_seed)
        th = theta.detach().to(torch.float64)
        with torch.no_grad():
            l_tr = float(policy_loss_fn(act64, ro["x"][tr_idx], ro["actions"][tr_idx], ro["adv"][tr_idx])(th))
            l_ho = float(policy_loss_fn(act64, ro["x"][ho_idx], ro["actions"][ho_idx], ro["adv"][ho_idx])(th))
        out.append({"theta": label, "tasks": [names[i] for i in tasks.tolist()],
                    "delta": float((th - theta_star.double()).norm() / theta_star.double().norm()),
                    "trace": est["trace"], "stderr": est["stderr"], "probes": est["probes"], "rows": int(sample.numel()),
                    "loss_train": l_tr, "loss_heldout": l_ho, "generalization_gap": l_ho - l_tr,
                    "seconds": time.perf_counter() - t0})
    return out


def surrogate_truth(model, theta_star: torch.Tensor, ro: dict, members: np.ndarray, finals: list[list[torch.Tensor]]) -> np.ndarray:
    """``f_sur[j, S, i] = mean_t A_t (pi_theta_S(a_t|s_t) / pi_theta*(a_t|s_t) - 1)`` over task
    ``i``'s held-out rows, ``theta_S`` the actor really fine-tuned on ``S`` with repeat ``j``:
    the real improvement of the PPO surrogate objective whose first-order estimate is the run's
    ``first_order_ppo`` evaluator (``exp(g^T u_S) - 1`` in place of the true ratio minus one).
    No rollouts, so no evaluation noise: it isolates how well the estimate predicts what real
    fine-tuning does to each task's objective.  [r, m, n], NaN outside the subsets."""
    act64 = float64_copy(model.actor)
    reps, (m, n) = len(finals), members.shape
    out = np.full((reps, m, n), np.nan)
    held = ro["heldout"]
    fns = {}
    for i in range(n):
        rows = (ro["task"] == i) & held
        fns[i] = (functional_logprob(act64, ro["x"][rows], ro["actions"][rows]), ro["adv"][rows].double())
    ts = theta_star.detach().double()
    with torch.no_grad():
        base = {i: f(ts) for i, (f, _) in fns.items()}
        for j in range(reps):
            for s in range(m):
                th = finals[j][s].double()
                for i in np.flatnonzero(members[s]):
                    f, adv = fns[int(i)]
                    out[j, s, i] = float((adv * torch.expm1(f(th) - base[int(i)])).mean())
    return out


def validate(run_dir: str | Path, suite: TaskSuite, cfg: RunConfig, vcfg: ValidateConfig | None = None, backend=None) -> dict:
    """Validate the finished run in ``run_dir`` (made by :func:`policygradex.pipeline.run` with
    ``suite`` and ``cfg``) against real fine-tuning on the same subsets.

    Writes ``validation.json``, ``approx_error.png``, ``estimated_vs_true.png`` and
    ``validate/`` (``finetune.pt``, ``f_true.csv``, manifests) under ``run_dir``; returns the
    content of ``validation.json``.  Reruns reuse the cached fine-tuning and analysis.

    ``backend`` (:mod:`policygradex.backend`, default: this process, serially) runs the
    fine-tuning units; the caller closes it.  The result does not depend on it.
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    from .group.sdp import random_grouping
    from .report import add_validation, approx_error_plot, estimated_vs_true_plot
    from .ui import console

    vcfg = vcfg or ValidateConfig()
    run_dir = Path(run_dir)
    vdir = run_dir / "validate"
    _check_run(run_dir, suite, cfg)
    torch.set_num_threads(cfg.ppo.threads)
    t_start = time.perf_counter()

    sub = art.read_json(run_dir / "subsets.json")
    members = np.array([[name in s for name in suite.names] for s in sub["subsets"]], dtype=bool)
    model = load_meta_policy(run_dir)

    ft, ft_digest = _finetune_stage(run_dir, vdir, model, suite, members, cfg, vcfg, backend)

    an_fields = vcfg.model_dump(mode="json", exclude={"finetune_steps", "finetune_seed", "finetune_seeds", "episodes", "eval_seed"})
    an_key = art.config_hash([ft_digest, _stage_digest(run_dir, ("collect", "evaluate", "group")), cfg.group.model_dump(mode="json"),
                              an_fields])
    stage = art.Stage(run_dir, "validate", an_key)
    if stage.current:
        result = art.read_json(run_dir / "validation.json")
        add_validation(run_dir, result)
        return result

    t0 = time.perf_counter()
    f_true = np.asarray(ft["f_true"], dtype=float)
    art.write_table(vdir / "f_true.csv", f_true, suite.names)
    theta_star = flat_params(model.actor).to(torch.float64)
    ro = load_rollouts(run_dir)
    n = suite.n

    # 2. first-order approximation error along the real paths
    with console.status("first-order approximation error along the fine-tuning paths"):
        buckets, points = _approx_error(model, theta_star, ro, members, ft["paths"], ft["steps"], vcfg.buckets,
                                       vcfg.hessian_seed, vcfg.approx_snapshots)
    t_approx = time.perf_counter() - t0

    # 3. ground truth and agreement
    t1 = time.perf_counter()
    with console.status(f"ground-truth grouping: SDP + null test ({cfg.group.null_permutations} permutations)"):
        aff_true, g_true, nt_true = group_with_null(f_true, members, cfg.group, backend)
    groups = art.read_json(run_dir / "groups.json")
    est_labels = np.asarray(groups["labels"])
    agree = agreement(g_true.labels, est_labels)
    nmi, ari = agree["nmi"], agree["ari"]
    sizes = np.bincount(est_labels).tolist()
    rnd = [random_grouping(sizes, n, seed=vcfg.random_seed + d) for d in range(vcfg.random_draws)]
    rnd_nmi = np.array([normalized_mutual_info_score(g_true.labels, r) for r in rnd])
    rnd_ari = np.array([adjusted_rand_score(g_true.labels, r) for r in rnd])
    f_est = art.read_table(run_dir / "f_table.csv")
    z_est, z_true = _standardized(f_est, members), _standardized(f_true, members)
    rho = _rho(z_est[members], z_true[members])
    per_task = {}
    for i, name in enumerate(suite.names):
        col = members[:, i]
        per_task[name] = _rho(f_est[col, i], f_true[col, i]) if col.sum() > 2 else None
    reps = np.asarray(ft["f_true_repeats"])
    z_reps, pair = _seed_pairs(reps, members)
    rho_reps = [_rho(z_est[members], z) for z in z_reps]
    rel1 = _mean(pair)
    rel_mean = (len(z_reps) * rel1 / (1 + (len(z_reps) - 1) * rel1)) if rel1 is not None and rel1 > -1 / max(len(z_reps) - 1, 1) else None
    U_est = art.read_table(run_dir / "affinity.csv", index=True)
    iu = np.triu_indices(n, k=1)
    rho_aff = _rho(U_est[iu], aff_true.U[iu]) if n > 2 else None

    # 3b. the same, with the real surrogate improvement in place of the return (no rollout noise)
    with console.status("ground truth from the real surrogate improvement: SDP + null test"):
        sur_reps = surrogate_truth(model, theta_star, ro, members, ft["finals"])
        f_sur = sur_reps.mean(axis=0)
        aff_sur, g_sur, nt_sur = group_with_null(f_sur, members, cfg.group, backend)
    z_sur = _standardized(f_sur, members)
    _, pair_sur = _seed_pairs(sur_reps, members)
    rnd_nmi_sur = np.array([normalized_mutual_info_score(g_sur.labels, r) for r in rnd])
    sur = {"definition": "f_sur(S, i) = mean over task i's held-out rows of A_t (pi_theta_S(a|s) / pi_theta*(a|s) - 1), "
                         "theta_S really fine-tuned on S (mean over the fine-tuning seeds)",
           **agreement(g_sur.labels, est_labels),
           "random_nmi": float(rnd_nmi_sur.mean()),
           "spearman": _rho(z_est[members], z_sur[members]),
           "affinity_spearman": _rho(U_est[iu], aff_sur.U[iu]) if n > 2 else None,
           "spearman_between_seeds": pair_sur, "mean_between_seeds": _mean(pair_sur),
           **_grouping_summary(g_sur, nt_sur, suite.names, cfg.group.alpha)}
    art.write_table(vdir / "f_true_surrogate.csv", f_sur, suite.names)
    t_truth = time.perf_counter() - t1

    # 5. Hessian trace and generalization gap
    t2 = time.perf_counter()
    with console.status(f"Hessian trace (Hutchinson, {vcfg.hessian_probes} probes) at theta* and {vcfg.hessian_subsets} theta_S"):
        hess = _hessian(model, theta_star, ro, members, ft["paths"], vcfg, suite.names)
    t_hess = time.perf_counter() - t2

    # 4. speedup
    st = stage_seconds(run_dir)
    pgx_stages = {k: st.get(k, float("nan")) for k in ("collect", "features", "surrogate", "evaluate")}
    speedup, breakdown = speedup_breakdown(pgx_stages, ft["finetune_s"], ft["eval_s"],
                                           {k: st.get(k) for k in ("train", "subsets", "group")})

    def nz(x: float) -> float | None:
        return float(x) if x is not None and np.isfinite(x) else None

    final_delta = [float((p[-1].double() - theta_star).norm() / theta_star.norm()) for p in ft["paths"]]
    gt = {**_grouping_summary(g_true, nt_true, suite.names, cfg.group.alpha), "penalty": g_true.penalty,
          "constant_tasks": [suite.names[i] for i in aff_true.constant_tasks]}
    result = {
        "suite": suite.name,
        "tasks": suite.names,
        "options": vcfg.model_dump(mode="json"),
        "subsets": {"m": int(members.shape[0]), "size": int(members[0].sum())},
        "approx_error": buckets,
        "approx_error_definition": "||dlogp_true - g^T(theta - theta*)|| / ||dlogp_true|| over the subset's held-out rows",
        "approx_error_points": points,
        "nmi": nmi,
        "ari": ari,
        "random_nmi": float(rnd_nmi.mean()),
        "random_nmi_q95": float(np.quantile(rnd_nmi, 0.95)),
        "random_ari": float(rnd_ari.mean()),
        "random_draws": int(vcfg.random_draws),
        "spearman": nz(rho),
        "spearman_per_task": per_task,
        "affinity_spearman": nz(rho_aff),
        "f_true_reliability": {"seeds": len(z_reps), "spearman_between_seeds": pair, "mean_between_seeds": rel1,
                               "spearman_brown_of_mean": rel_mean, "spearman_estimate_vs_each_seed": rho_reps},
        "speedup": speedup,
        "speedup_breakdown": breakdown,
        "hessian_trace": hess,
        "ground_truth": gt,
        "surrogate_truth": sur,
        "estimated": {"groups": groups["groups"], "labels": groups["labels"], "k": groups["k"], "null_p": groups["null_p"]},
        "finetune": {"env_steps_per_subset": [s[-1] for s in ft["steps"]], "iterations_per_subset": [len(s) for s in ft["steps"]],
                     "final_delta": final_delta, "final_delta_median": float(np.median(final_delta)),
                     "theta_star_mean_return": {k: float(np.mean(v)) for k, v in ft["theta_star_returns"].items()},
                     "f_true_mean_return": float(np.nanmean(f_true))},
        "timings_s": {"finetune": ft["finetune_s"], "evaluate": ft["eval_s"], "approx_error": t_approx,
                      "ground_truth": t_truth, "hessian": t_hess},
    }
    if suite.true_labels() is not None:
        result["ground_truth"]["nmi_vs_true_partition"] = agreement(suite.true_labels(), g_true.labels)["nmi"]
        result["estimated"]["nmi_vs_true_partition"] = agreement(suite.true_labels(), est_labels)["nmi"]
        result["surrogate_truth"]["nmi_vs_true_partition"] = agreement(suite.true_labels(), g_sur.labels)["nmi"]

    approx_error_plot(points, vcfg.buckets, run_dir / "approx_error.png")
    estimated_vs_true_plot(z_est, z_true, members, suite.names, g_true.labels, rho, run_dir / "estimated_vs_true.png")
    result["timings_s"]["analysis_total"] = time.perf_counter() - t0
    result["timings_s"]["validate_call"] = time.perf_counter() - t_start
    art.write_json(run_dir / "validation.json", result)
    add_validation(run_dir, result)
    stage.done(["validation.json", "approx_error.png", "estimated_vs_true.png", "validate/f_true.csv", "validate/f_true_surrogate.csv"])
    return result
