"""``policygradex compare``: run every method under one budget, cache each (method, seed),
aggregate with t-based 95% confidence intervals, write comparison.json / .csv / .png.

Layout of ``--out DIR``::

    DIR/run/                         the PolicyGradEx run (pipeline.run; its stages are cached)
    DIR/compare/<method>/affinity.csv, affinity_info.json     (gradsim, tag) cached affinity
    DIR/compare/<method>/seed_<s>/result.json                 per-task returns, steps, groups, wall time
    DIR/compare/<method>/seed_<s>/group_<g>.pt                the trained policy of each group
                                                              (a checkpoint: `policygradex evaluate` reads it)
    DIR/compare/<method>/seed_<s>.manifest.json               key + checksums: the unit is done
    DIR/comparison.json, comparison.csv, comparison.png

A unit (method, seed) is skipped when its manifest matches its key (suite, downstream PPO
config, budget, evaluation settings, method, seed, the groups it trains, and theta* when warm
starting) and its files check out, so a killed ``compare`` resumes from the finished units and
a changed option reruns only the units it affects.

Execution.  The units that are not cached run on an execution backend
(:mod:`policygradex.backend`: this process, a process pool or Ray; ``--backend``,
``--workers``, ``--ray-address``).  A unit's result depends only on its own inputs (it seeds
itself from its seed and group index, and sets its own torch thread count), never on the
backend or the order of execution.  The driver stores each unit as it finishes (its files,
``result.json``, then the manifest, each written atomically), so a killed ``compare`` resumes on
any backend.  In this process the units write their files straight into the cache and the
progress bar advances per PPO iteration; in other processes a unit writes into a temporary
directory and sends the files back with its result (so a remote Ray cluster needs no shared
file system), and the bar advances as each unit finishes.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from .. import artifacts as art, outdir
from ..backend import LocalBackend, Resources, Unit
from ..config import CompareConfig, PPOConfig, RunConfig, SACConfig
from ..errors import UserError
from ..report import save_png
from ..rl.learners import learner_for
from ..tasks import TaskSuite
from ..ui import console, progress_bar
from .methods import METHODS, CompareContext, Method, get_method
from ..estimate.collect import load_meta_policy
from ..morl import indicators
from ..pipeline import run as run_pipeline
from ..rl.evaluate import evaluate_policy
from .pcgrad import PCGrad

__all__ = ["compare", "ci95", "summarize", "UNIT_KEYS", "BASELINE"]

#: Keys every unit result has (a custom ``Method.run_unit`` must return them too).
UNIT_KEYS = ("method", "seed", "per_task", "mean", "env_steps_per_task", "env_steps", "wall_s", "groups")
#: The method that relative improvements are measured against.
BASELINE = "multitask"
#: The method that follows the tool's own answer (compare.methods), compared with every other.
RECOMMENDED = "recommended"


def ci95(values) -> tuple[float, float | None, float | None]:
    """(mean, half-width, t critical value) of a t-based 95% interval over ``values``
    (half-width None for a single value)."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    m = float(v.mean())
    if v.size < 2:
        return m, None, None
    t = float(stats.t.ppf(0.975, v.size - 1))
    return m, float(t * v.std(ddof=1) / math.sqrt(v.size)), t


def _downstream_ppo(run_cfg: RunConfig, arch: str) -> PPOConfig | SACConfig:
    learner = run_cfg.learner()  # the run's learner's config (PPOConfig, SACConfig with --algo sac)
    net = learner.net.model_copy(update={"arch": arch})
    return learner.model_copy(update={"net": net})


def _iterations(cfg: PPOConfig | SACConfig, steps_per_task: int) -> int:
    """Iterations of the config's learner (PPO updates, SAC vector steps) that give every task ``steps_per_task`` steps."""
    return learner_for(cfg).iterations(cfg, steps_per_task)


def _task_steps(cfg: PPOConfig | SACConfig, steps_per_task: int) -> int:
    """Environment steps every task actually gets (whole iterations)."""
    return _iterations(cfg, steps_per_task) * learner_for(cfg).steps_per_iteration(cfg)


def _unit_arch(method: Method, cfg: CompareConfig) -> str:
    return method.arch or cfg.arch


def _theta_star_state(ctx: CompareContext) -> dict:
    if "theta_star" not in ctx.cache:

        model = load_meta_policy(ctx.run_dir)
        ctx.cache["theta_star"] = {k: v.clone() for k, v in model.state_dict().items()}
    return ctx.cache["theta_star"]


def _warm(ctx: CompareContext, ppo: PPOConfig) -> bool:
    """Warm start when asked and theta*'s network is the unit's network."""
    return bool(ctx.cfg.warm_start and ctx.run_dir is not None and ppo.net == ctx.run_cfg.learner().net)


def _unit_key(ctx: CompareContext, method: Method, seed: int, groups: list[list[int]], ppo: PPOConfig, warm: bool) -> str:
    c = ctx.cfg
    ppo_fields = ppo.model_dump(mode="json", exclude={"total_steps", "seed", "checkpoint_every"})
    parts = [ctx.suite.to_dict(), ppo_fields, c.steps_per_task, c.episodes, c.deterministic, c.eval_seed, method.name,
             method.pcgrad, seed, groups, warm, ctx.run_digest("collect") if warm else None, c.minibatches]
    if method.key_parts is not None:
        parts.append(method.key_parts(ctx))
    return art.config_hash(parts)


def _train_unit(ctx: CompareContext, method: Method, seed: int, groups: list[list[int]], info: dict, ppo: PPOConfig,
                warm: bool, unit_dir: Path, bar) -> tuple[dict, list[Path]]:
    suite, c = ctx.suite, ctx.cfg
    learner = learner_for(ppo)
    t0 = time.perf_counter()
    per_task, steps, files, train_ret, surgery_stats, minibatch_sizes = {}, {}, [], {}, [], []
    for g, tasks in enumerate(groups):
        gseed = seed * 1000 + g
        surgery = PCGrad(gseed) if method.pcgrad else None
        advance = lambda k: bar.advance(k, f"{method.name} seed {seed}")  # noqa: E731
        init = _theta_star_state(ctx) if warm else None
        gppo = learner.group_config(ppo, len(tasks), suite.n, c.steps_per_task, gseed, c.minibatches)
        minibatch_sizes.append(learner.group_batch_size(gppo))
        work_dir = unit_dir / f"group_{g}_train"
        res = learner.train_group(suite, tasks, gppo, c.steps_per_task, gseed, work_dir, init_state=init, grad_surgery=surgery,
                                  on_step=advance,
                                  context=f"compare's {method.name} policy for group {g + 1} of {len(groups)} (seed {seed})")
        ev = evaluate_policy(res.model, suite, episodes=c.episodes, deterministic=c.deterministic, seed=c.eval_seed, tasks=tasks)
        for t in tasks:
            name = suite.names[t]
            per_task[name] = {"mean": ev[name]["mean"], "std": ev[name]["std"], "returns": ev[name]["returns"]}
            if "success_rate" in ev[name]:
                per_task[name]["success_rate"] = ev[name]["success_rate"]
            if "discounted_vector_mean" in ev[name]:  # a preference task (tasks/mo.py): its vector return
                per_task[name]["discounted_vector_mean"] = ev[name]["discounted_vector_mean"]
            steps[name] = res.env_steps[t]
            train_ret[name] = res.train_returns[t]
        if surgery is not None:
            surgery_stats.append({"conflicting_pairs": surgery.conflicts, "pairs": surgery.pairs})
        path = unit_dir / f"group_{g}.pt"
        rets = {suite.names[t]: per_task[suite.names[t]]["mean"] for t in tasks}
        learner.save_group_policy(path, res, gppo, suite, rets)  # the group's policy as a checkpoint
        shutil.rmtree(work_dir, ignore_errors=True)  # the group training's own files (SAC's run folder), if any
        files.append(path)
    per_task = {name: per_task[name] for name in suite.names}
    result = {
        "method": method.name, "seed": seed, "kind": method.kind,
        "per_task": per_task,
        "mean": float(np.mean([v["mean"] for v in per_task.values()])),
        "env_steps_per_task": {name: steps[name] for name in suite.names},
        "env_steps": int(sum(steps.values())),
        "iterations": _iterations(ppo, c.steps_per_task),
        "wall_s": time.perf_counter() - t0,
        "groups": [[suite.names[t] for t in grp] for grp in groups],
        "grouping": info,
        "arch": ppo.net.arch, "init": "theta*" if warm else "scratch", "minibatch_sizes": minibatch_sizes,
        "learner": learner.name,
        "train_returns_last20": train_ret,
        "policies": [f"group_{g}.pt" for g in range(len(groups))],
    }
    rates = [v["success_rate"] for v in per_task.values() if "success_rate" in v]
    if rates:
        result["success_rate"] = float(np.mean(rates))
    if "mo_env" in suite.metadata and all("discounted_vector_mean" in v for v in per_task.values()):
        result["morl"] = indicators(suite, {k: v["discounted_vector_mean"] for k, v in per_task.items()})
    if surgery_stats:
        tot = sum(s["pairs"] for s in surgery_stats)
        result["pcgrad"] = {"conflict_fraction": (sum(s["conflicting_pairs"] for s in surgery_stats) / tot) if tot else None}
    return result, files


# ----------------------------------------------------------------------------- units on a backend


class _NoBar:
    """The progress bar of a unit that runs in another process (the driver advances per unit)."""

    def advance(self, *args, **kwargs) -> None:
        pass


def _compare_unit(uctx: dict, payload: tuple) -> dict:
    """One (method, seed) unit: train and evaluate (``Method.run_unit`` or :func:`_train_unit`).

    In this process (``uctx["bar"]`` set) the unit writes its files into its cache directory;
    elsewhere into a temporary directory, and its files travel back as bytes (``blobs``)."""
    import torch

    ctx, bar = uctx["ctx"], uctx.get("bar")
    name, seed, groups, info, ppo, warm, unit_dir = payload
    method = uctx["methods"][name]
    torch.set_num_threads(ppo.threads)
    run_unit = method.run_unit if method.run_unit is not None else _train_unit
    if bar is not None:
        result, files = run_unit(ctx, method, seed, groups, info, ppo, warm, Path(unit_dir), bar)
        return {"result": result, "files": [Path(p) for p in files]}
    with tempfile.TemporaryDirectory(prefix="policygradex-unit-") as tmp:
        result, files = run_unit(ctx, method, seed, groups, info, ppo, warm, Path(tmp), _NoBar())
        blobs = {Path(p).relative_to(tmp).as_posix(): Path(p).read_bytes() for p in files}
    return {"result": result, "blobs": blobs}


def _portable_context(ctx: CompareContext, warm: bool) -> CompareContext:
    """What a unit in another process needs of the context (theta* read here, once, when warm
    starting; the groupings are already made): no file of the run is read by the unit."""
    cache = {"theta_star": _theta_star_state(ctx)} if warm else {}
    return CompareContext(ctx.suite, ctx.run_cfg, ctx.cfg, ctx.out_dir, ctx.run_dir, ctx.run_groups, cache)


def _run_pending(ctx: CompareContext, be, pending: list, total: int) -> None:
    """Run the pending units on ``be``, storing each one as it finishes."""
    suite, cfg = ctx.suite, ctx.cfg
    in_process = getattr(be, "name", "") == "local" and be.parallelism == 1
    methods = {p[0].name: p[0] for p in pending}
    units, stages = [], {}
    for m, s, groups, info, ppo, warm, st in pending:
        unit_dir = ctx.cache_dir / m.name / f"seed_{s}"
        key = f"{m.name}/seed_{s}"
        stages[key] = (m, unit_dir, st)
        cost = suite.n * _task_steps(ppo, cfg.steps_per_task)
        units.append(Unit(key, (m.name, s, groups, info, ppo, warm, str(unit_dir)),
                          tuple(suite.names[t] for g in groups for t in g), f"method {m.name} seed {s}", float(cost)))
    threads = max(p[4].threads for p in pending)
    with progress_bar(total, f"compare {suite.name}" + ("" if in_process else f" ({be.name}, {len(units)} units)")) as bar:
        if in_process:
            shared = {"ctx": ctx, "methods": methods, "bar": bar}
        else:  # sent once; the Method's grouping and key functions stay here (only run_unit travels)
            shared = {"ctx": _portable_context(ctx, any(p[5] for p in pending)),
                      "methods": {n: dataclasses.replace(m, grouping=None, key_parts=None) for n, m in methods.items()}}
        for unit, out in be.map(_compare_unit, units, shared=shared, resources=Resources(cpus=threads)):
            m, unit_dir, st = stages[unit.key]
            result = out["result"]
            missing = [k for k in UNIT_KEYS if k not in result]
            if missing:
                raise RuntimeError(f"method {m.name!r} returned a unit result without {', '.join(missing)}")
            if "blobs" in out:
                files = []
                for rel, data in out["blobs"].items():
                    art.write_bytes(unit_dir / rel, data)
                    files.append(unit_dir / rel)
                bar.advance(int(unit.cost), unit.label)
            else:
                files = out["files"]
            art.write_json(unit_dir / "result.json", result)
            st.t0 = time.perf_counter() - float(result["wall_s"])  # the manifest's seconds: the unit's own wall time
            # the manifest last: the unit is done
            st.done([str(p.relative_to(ctx.cache_dir)) for p in [*files, unit_dir / "result.json"]],
                    {"execution": be.describe()})


def _check_methods(cfg: CompareConfig) -> list[Method]:
    return [get_method(m) for m in cfg.methods]


def compare(suite: TaskSuite, run_cfg: RunConfig, cfg: CompareConfig, out_dir: str | Path,
            run_dir: str | Path | None = None, backend=None) -> dict:
    """Run (or resume) the comparison; returns the content of ``comparison.json``.

    ``backend`` (:mod:`policygradex.backend`; default: this process, serially) runs the
    (method, seed) units that are not cached, and the PolicyGradEx run's own units; the caller
    closes it.  The results do not depend on it."""
    methods = _check_methods(cfg)
    if suite.n < 2:
        raise UserError(f"suite {suite.name!r} has {suite.n} task; compare needs at least 2")
    out_dir = Path(out_dir)
    ctx = CompareContext(suite, run_cfg, cfg, out_dir)
    import torch

    torch.set_num_threads(run_cfg.learner().threads)
    learner = learner_for(run_cfg.learner())
    other = [m.name for m in methods if not m.trains_with(learner.name)]
    if other:
        allowed = [name for name, m in METHODS.items() if m.trains_with(learner.name)]
        raise UserError(f"--methods {other[0]}: not available with --algo {learner.name} (allowed: {', '.join(allowed)})")
    if run_dir is not None and any(m.needs_run for m in methods):
        outdir.check_output_dir(run_dir, "--run-dir")  # a bad --run-dir is named before anything is written
    outdir.lock_run_dir(out_dir)  # absent, empty or ours (marked); never a user's directory
    t_run = 0.0
    if any(m.needs_run for m in methods):

        ctx.run_dir = Path(run_dir) if run_dir is not None else out_dir / "run"
        # claim it here, so that a bad directory is named by the option that gave it (the
        # pipeline's own claim of the same directory is then a no-op: the lock is re-entrant)
        outdir.lock_run_dir(ctx.run_dir, flag="--run-dir" if run_dir is not None else "--out")
        t0 = time.perf_counter()
        res = run_pipeline(suite, run_cfg, ctx.run_dir, backend=backend)
        t_run = time.perf_counter() - t0
        ctx.run_groups = res.groups
        if res.groups["k"] == 1:
            console.print("[bold yellow]note:[/] PolicyGradEx found one group, so every grouping method trains the multi-task "
                          "policy; pass --k to fix the number of groups")

    # plan: groups of every unit, and which units are already done
    plan = []
    for m in methods:
        ppo = _downstream_ppo(run_cfg, _unit_arch(m, cfg))
        warm = _warm(ctx, ppo)
        for s in range(cfg.seeds):
            t0 = time.perf_counter()
            groups, info = m.grouping(ctx, s) if m.grouping is not None else ([list(range(suite.n))], {})
            info = {**info, "grouping_s": time.perf_counter() - t0}
            st = art.Stage(ctx.cache_dir, f"{m.name}/seed_{s}", _unit_key(ctx, m, s, groups, ppo, warm))
            plan.append((m, s, groups, info, ppo, warm, st))
    # seed-major order: an interrupted comparison has every method at the seeds it finished
    pending = sorted((p for p in plan if not p[-1].current), key=lambda p: p[1])
    total = sum(suite.n * _task_steps(p[4], cfg.steps_per_task) for p in pending)
    if pending:
        console.print(f"compare: {len(plan) - len(pending)} of {len(plan)} (method, seed) units cached; "
                      f"training {len(pending)} ({total:,} env steps, {_task_steps(run_cfg.learner(), cfg.steps_per_task):,} per task)")
    be = backend if backend is not None else LocalBackend()
    execution = {**be.describe(), "units": len(plan), "units_reused": len(plan) - len(pending), "units_run": len(pending)}
    if pending:
        _run_pending(ctx, be, pending, total)
    units = {}
    for m, s, *_ in plan:
        units.setdefault(m.name, []).append(art.read_json(ctx.cache_dir / m.name / f"seed_{s}" / "result.json"))
    comparison = summarize(suite, run_cfg, cfg, methods, units, ctx, t_run)
    comparison["execution"] = execution
    write_outputs(out_dir, comparison)
    return comparison


def summarize(suite: TaskSuite, run_cfg: RunConfig, cfg: CompareConfig, methods: list[Method], units: dict[str, list[dict]],
              ctx: CompareContext | None = None, run_s: float = 0.0) -> dict:
    """Aggregate unit results over seeds: per task and overall, mean with a t-based 95% CI."""
    out_methods = {}
    for m in methods:
        rs = sorted(units[m.name], key=lambda r: r["seed"])
        seed_means = [r["mean"] for r in rs]
        mean, half, tcrit = ci95(seed_means)
        per_task = {}
        for name in rs[0]["per_task"]:  # the suite's tasks; a meta-RL method's held-out tasks
            vals = [r["per_task"][name]["mean"] for r in rs]
            tm, th, _ = ci95(vals)
            per_task[name] = {"mean": tm, "ci95_halfwidth": th, "per_seed": vals}
            if all("success_rate" in r["per_task"][name] for r in rs):
                per_task[name]["success_rate"] = float(np.mean([r["per_task"][name]["success_rate"] for r in rs]))
        steps = [r["env_steps_per_task"] for r in rs]
        entry = {
            "description": m.description, "kind": m.kind,
            "seeds": [r["seed"] for r in rs],
            "mean": mean, "ci95_halfwidth": half,
            "ci95": [mean - half, mean + half] if half is not None else None,
            "std_over_seeds": float(np.std(seed_means, ddof=1)) if len(rs) > 1 else None,
            "per_seed_mean": seed_means,
            "per_task": per_task,
            "env_steps_per_task": steps[0] if all(s == steps[0] for s in steps) else steps,
            "env_steps_per_seed": rs[0]["env_steps"],
            "wall_s": {"mean": float(np.mean([r["wall_s"] for r in rs])), "per_seed": [r["wall_s"] for r in rs],
                       "grouping_s": _grouping_seconds(rs)},
            "groups": [r["groups"] for r in rs],
            "grouping": rs[0].get("grouping", {}),
            "arch": rs[0].get("arch"), "init": rs[0].get("init"),
        }
        if all("success_rate" in r for r in rs):
            sm, sh, _ = ci95([r["success_rate"] for r in rs])
            entry["success_rate"] = {"mean": sm, "ci95_halfwidth": sh, "per_seed": [r["success_rate"] for r in rs]}
        if all("morl" in r for r in rs):  # preference suites: the indicators of the method's policies, per seed
            entry["morl"] = {key: dict(zip(("mean", "ci95_halfwidth"), ci95([r["morl"][key] for r in rs])[:2]),
                                       per_seed=[r["morl"][key] for r in rs])
                             for key in ("expected_utility", "hypervolume") if key in rs[0]["morl"]}
            entry["morl"].update({k: v for k, v in rs[0]["morl"].items() if k.startswith("front_") or k == "ref_point"})
        if "pcgrad" in rs[0]:
            entry["pcgrad"] = {"conflict_fraction_per_seed": [r["pcgrad"]["conflict_fraction"] for r in rs]}
        out_methods[m.name] = entry
    if BASELINE in out_methods:
        base = out_methods[BASELINE]
        for name, e in out_methods.items():
            diffs = [a - b for a, b in zip(e["per_seed_mean"], base["per_seed_mean"])]
            dm, dh, _ = ci95(diffs)
            e["vs_multitask"] = {"relative": (e["mean"] - base["mean"]) / abs(base["mean"]) if base["mean"] else None,
                                 "paired_diff_mean": dm, "paired_diff_ci95_halfwidth": dh}
    if RECOMMENDED in out_methods:
        out_recommended = _recommended_vs_others(out_methods)
    all_steps = [e["env_steps_per_task"] for e in out_methods.values()]
    equal = all(isinstance(s, dict) and s == all_steps[0] for s in all_steps)
    learner = run_cfg.learner()
    trainer = learner_for(learner)
    res = {
        "suite": suite.name, "tasks": suite.names, "n_tasks": suite.n,
        "methods_order": [m.name for m in methods],
        "budget": {"steps_per_task_requested": cfg.steps_per_task,
                   "steps_per_task": next(iter(all_steps[0].values())) if equal and all_steps else None,
                   "equal_across_methods": equal,
                   "learner": run_cfg.algo,
                   "iterations": _iterations(learner, cfg.steps_per_task),
                   "per_task_steps_per_iteration": trainer.steps_per_iteration(learner),
                   "rule": "every task gets the same environment steps; a group of s tasks trains for s x steps_per_task"},
        "evaluation": {"episodes": cfg.episodes, "deterministic": cfg.deterministic, "seed": cfg.eval_seed,
                       "common_random_numbers": True},
        "seeds": cfg.seeds,
        "ci": "t-based 95% interval over seeds of the mean return over tasks",
        "methods": out_methods,
        **({"recommended": out_recommended} if RECOMMENDED in out_methods else {}),
        "config": {"compare": cfg.model_dump(mode="json"), "run": run_cfg.model_dump(mode="json")},
        "versions": art.versions(),
    }
    if ctx is not None and ctx.run_groups is not None:
        g = ctx.run_groups
        res["policygradex_run"] = {"dir": str(ctx.run_dir), "k": g["k"], "groups": g["groups"], "null_p": g.get("null_p"),
                                   "distinguishable_from_noise": g.get("distinguishable_from_noise"),
                                   "meta_policy": g.get("meta_policy"), "k_rule": "fixed by --k" if run_cfg.group.k else "auto (trace penalty)",
                                   "wall_s_this_call": run_s}
    return res


def _recommended_vs_others(out_methods: dict) -> dict:
    """``recommended`` against every other multi-task method (comparison.json ``recommended``):
    the paired difference of the per-seed mean returns with its 95% CI (``significant``: the CI
    excludes 0), and the regret against the best method in hindsight (the largest mean)."""
    rec = out_methods[RECOMMENDED]
    others = {n: e for n, e in out_methods.items() if n != RECOMMENDED and e["kind"] == "multi_task"}
    vs = {}
    for name, e in others.items():
        diffs = [a - b for a, b in zip(rec["per_seed_mean"], e["per_seed_mean"])]
        dm, dh, _ = ci95(diffs)
        sig = None if dh is None else ("above" if dm - dh > 0 else "below" if dm + dh < 0 else "no")
        vs[name] = {"paired_diff_mean": dm, "paired_diff_ci95_halfwidth": dh, "significant": sig}
    pool = {**others, RECOMMENDED: rec}
    best = max(pool, key=lambda n: pool[n]["mean"])
    return {"followed": rec["grouping"].get("followed"), "vs": vs, "best_in_hindsight": best,
            "regret": pool[best]["mean"] - rec["mean"],
            "regret_relative": (pool[best]["mean"] - rec["mean"]) / abs(pool[best]["mean"]) if pool[best]["mean"] else None}


def _grouping_seconds(rs: list[dict]) -> float | None:
    g = rs[0].get("grouping", {})
    v = g.get("affinity_s")
    return float(v) if v is not None and math.isfinite(v) else None


def write_outputs(out_dir: Path, comparison: dict) -> None:
    """comparison.json, comparison.csv (one row per method) and comparison.png (bar chart)."""
    import csv
    import io

    art.write_json(out_dir / "comparison.json", comparison)
    names = comparison["tasks"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "mean", "ci95_low", "ci95_high", "seeds", "env_steps_per_task", "wall_s_mean", "vs_multitask", *names])
    for mname in comparison["methods_order"]:
        e = comparison["methods"][mname]
        lo, hi = e["ci95"] if e["ci95"] else ("", "")
        steps = e["env_steps_per_task"]
        steps = next(iter(steps.values())) if isinstance(steps, dict) and len(set(steps.values())) == 1 else "unequal"
        rel = e.get("vs_multitask", {}).get("relative")
        w.writerow([mname, f"{e['mean']:.3f}", lo if lo == "" else f"{lo:.3f}", hi if hi == "" else f"{hi:.3f}", len(e["seeds"]),
                    steps, f"{e['wall_s']['mean']:.1f}", "" if rel is None else f"{rel:.4f}",
                    *[f"{e['per_task'][t]['mean']:.3f}" if t in e["per_task"] else "" for t in names]])
    art.write_text(out_dir / "comparison.csv", buf.getvalue())
    bar_chart(comparison, out_dir / "comparison.png")


def bar_chart(comparison: dict, path: Path) -> None:
    import matplotlib.pyplot as plt  # the Agg backend is selected by ..report

    order = comparison["methods_order"]
    ms = [comparison["methods"][m] for m in order]
    means = [e["mean"] for e in ms]
    errs = [e["ci95_halfwidth"] or 0.0 for e in ms]
    fig, ax = plt.subplots(figsize=(1.2 * len(order) + 2.5, 4))
    colors = ["tab:red" if m == "policygradex" else "tab:gray" if m == BASELINE else "tab:blue" for m in order]
    ax.bar(range(len(order)), means, yerr=errs, capsize=5, color=colors, alpha=0.85)
    for i, e in enumerate(ms):
        for v in e["per_seed_mean"]:
            ax.plot(i, v, "k.", ms=4)
    ax.set_xticks(range(len(order)), order, rotation=20)
    ax.set_ylabel("mean return over tasks")
    b = comparison["budget"]
    ax.set_title(f"{comparison['suite']} (n = {comparison['n_tasks']}): {b['steps_per_task'] or b['steps_per_task_requested']:,} steps "
                 f"per task, {comparison['seeds']} seeds, 95% CI", fontsize=10, parse_math=False)
    fig.tight_layout()
    save_png(fig, path, dpi=110)
