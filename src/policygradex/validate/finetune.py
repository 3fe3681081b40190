"""The real route of the validation: theta* fine-tuned with PPO on every subset and evaluated,
giving the ground truth ``f_true`` (and ``f_sur``, the real improvement of the surrogate
objective, from the same fine-tuned actors).

The work runs as independent units (theta*'s evaluation, one fine-tuning per subset and seed)
on an execution backend (:mod:`policygradex.backend`); every finished unit is cached in
``DIR/validate/units/`` at once and the assembled result in ``DIR/validate/finetune.pt``
(:func:`finetune_stage`).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .. import artifacts as art
from ..backend import LocalBackend, Resources, Unit
from ..config import PPOConfig, RunConfig, ValidateConfig
from ..estimate.first_order import float64_copy, functional_logprob
from ..estimate.persample import flat_params
from ..rl.checkpoint import build_model
from ..rl.evaluate import evaluate_policy
from ..rl.ppo import finetune
from ..tasks import TaskSuite
from ..ui import progress_bar
from ..rl.collected import Collected

__all__ = ["finetune_units", "finetune_subsets", "finetune_stage", "surrogate_truth", "run_digest"]


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


def run_digest(run_dir: Path, stages: Sequence[str]) -> str:
    """Combined digest of finished run stages (see ``artifacts.stage_digest``)."""
    return art.config_hash([art.stage_digest(run_dir, stage) for stage in stages])


def finetune_stage(run_dir: Path, vdir: Path, model, suite: TaskSuite, members: np.ndarray, cfg: RunConfig,
                    vcfg: ValidateConfig, backend=None) -> tuple[dict, str]:
    """The real route, cached twice: every finished unit in ``validate/units/<key>.pt`` (kept
    across reruns, so an interrupted validation resumes and a changed ``--finetune-seeds``
    reuses the seeds it had), and the assembled result in ``validate/finetune.pt`` with the
    ``validate_finetune`` manifest."""
    ft_fields = vcfg.model_dump(mode="json", include={"finetune_steps", "finetune_seed", "finetune_seeds", "episodes", "eval_seed"})
    key = art.config_hash([_UNIT_FORMAT, run_digest(run_dir, ("train", "collect", "subsets")), cfg.ppo.model_dump(mode="json"),
                           ft_fields])
    st = art.Stage(run_dir, "validate_finetune", key)
    if not st.current:
        # what every unit depends on besides its own tasks and seed (not the subsets stage, nor
        # finetune_seed / finetune_seeds: units are keyed by their own seed)
        prefix = art.config_hash([run_digest(run_dir, ("train", "collect")), suite.to_dict(), cfg.ppo.model_dump(mode="json"),
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


def surrogate_truth(model, theta_star: torch.Tensor, ro: Collected, members: np.ndarray, finals: list[list[torch.Tensor]]) -> np.ndarray:
    """``f_sur[j, S, i] = mean_t A_t (pi_theta_S(a_t|s_t) / pi_theta*(a_t|s_t) - 1)`` over task
    ``i``'s held-out rows, ``theta_S`` the actor really fine-tuned on ``S`` with repeat ``j``:
    the real improvement of the PPO surrogate objective whose first-order estimate is the run's
    ``first_order_ppo`` evaluator (``exp(g^T u_S) - 1`` in place of the true ratio minus one).
    No rollouts, so no evaluation noise: it isolates how well the estimate predicts what real
    fine-tuning does to each task's objective.  [r, m, n], NaN outside the subsets."""
    act64 = float64_copy(model.actor)
    reps, (m, n) = len(finals), members.shape
    out = np.full((reps, m, n), np.nan)
    held = ro.heldout
    fns = {}
    for i in range(n):
        rows = (ro.task == i) & held
        fns[i] = (functional_logprob(act64, ro.x[rows], ro.actions[rows]), ro.adv[rows].double())
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
