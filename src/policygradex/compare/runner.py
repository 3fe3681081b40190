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
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from .. import artifacts as art
from ..config import CompareConfig, PPOConfig, RunConfig
from ..errors import UserError
from ..tasks import TaskSuite
from ..ui import console, progress_bar
from .methods import CompareContext, Method, get_method
from .train import group_ppo, iterations_for, train_group

__all__ = ["compare", "ci95", "summarize", "UNIT_KEYS", "BASELINE"]

#: Keys every unit result has (a custom ``Method.run_unit`` must return them too).
UNIT_KEYS = ("method", "seed", "per_task", "mean", "env_steps_per_task", "env_steps", "wall_s", "groups")
#: The method that relative improvements are measured against.
BASELINE = "multitask"


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


def _downstream_ppo(run_cfg: RunConfig, arch: str) -> PPOConfig:
    net = run_cfg.ppo.net.model_copy(update={"arch": arch})
    return run_cfg.ppo.model_copy(update={"net": net})


def _unit_arch(method: Method, cfg: CompareConfig) -> str:
    return method.arch or cfg.arch


def _theta_star_state(ctx: CompareContext) -> dict:
    if "theta_star" not in ctx.cache:
        from ..estimate.collect import load_meta_policy

        model = load_meta_policy(ctx.run_dir)
        ctx.cache["theta_star"] = {k: v.clone() for k, v in model.state_dict().items()}
    return ctx.cache["theta_star"]


def _warm(ctx: CompareContext, ppo: PPOConfig) -> bool:
    """Warm start when asked and theta*'s network is the unit's network."""
    return bool(ctx.cfg.warm_start and ctx.run_dir is not None and ppo.net == ctx.run_cfg.ppo.net)


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
    from ..rl.checkpoint import save_checkpoint
    from ..rl.evaluate import evaluate_policy
    from .pcgrad import PCGrad

    suite, c = ctx.suite, ctx.cfg
    t0 = time.perf_counter()
    per_task, steps, files, train_ret, surgery_stats, minibatch_sizes = {}, {}, [], {}, [], []
    for g, tasks in enumerate(groups):
        gseed = seed * 1000 + g
        surgery = PCGrad(gseed) if method.pcgrad else None
        gppo = group_ppo(ppo, len(tasks), suite.n, c.minibatches).model_copy(update={"seed": gseed})
        minibatch_sizes.append(gppo.minibatch_size)
        res = train_group(suite, tasks, gppo, c.steps_per_task, gseed,
                          init_state=_theta_star_state(ctx) if warm else None, grad_surgery=surgery,
                          on_step=lambda k: bar.advance(k, f"{method.name} seed {seed}"))
        ev = evaluate_policy(res.model, suite, episodes=c.episodes, deterministic=c.deterministic, seed=c.eval_seed, tasks=tasks)
        for t in tasks:
            name = suite.names[t]
            per_task[name] = {"mean": ev[name]["mean"], "std": ev[name]["std"], "returns": ev[name]["returns"]}
            steps[name] = res.env_steps[t]
            train_ret[name] = res.train_returns[t]
        if surgery is not None:
            surgery_stats.append({"conflicting_pairs": surgery.conflicts, "pairs": surgery.pairs})
        path = unit_dir / f"group_{g}.pt"
        total = sum(res.env_steps.values())
        save_checkpoint(path, res.model, None, gppo.model_copy(update={"total_steps": total}), suite, total, res.iterations,
                        {suite.names[t]: per_task[suite.names[t]]["mean"] for t in tasks})
        files.append(path)
    per_task = {name: per_task[name] for name in suite.names}
    result = {
        "method": method.name, "seed": seed, "kind": method.kind,
        "per_task": per_task,
        "mean": float(np.mean([v["mean"] for v in per_task.values()])),
        "env_steps_per_task": {name: steps[name] for name in suite.names},
        "env_steps": int(sum(steps.values())),
        "iterations": iterations_for(ppo, c.steps_per_task),
        "wall_s": time.perf_counter() - t0,
        "groups": [[suite.names[t] for t in grp] for grp in groups],
        "grouping": info,
        "arch": ppo.net.arch, "init": "theta*" if warm else "scratch", "minibatch_sizes": minibatch_sizes,
        "train_returns_last20": train_ret,
        "policies": [f"group_{g}.pt" for g in range(len(groups))],
    }
    if surgery_stats:
        tot = sum(s["pairs"] for s in surgery_stats)
        result["pcgrad"] = {"conflict_fraction": (sum(s["conflicting_pairs"] for s in surgery_stats) / tot) if tot else None}
    return result, files


def _check_methods(cfg: CompareConfig) -> list[Method]:
    return [get_method(m) for m in cfg.methods]


def compare(suite: TaskSuite, run_cfg: RunConfig, cfg: CompareConfig, out_dir: str | Path,
            run_dir: str | Path | None = None) -> dict:
    """Run (or resume) the comparison; returns the content of ``comparison.json``."""
    methods = _check_methods(cfg)
    if suite.n < 2:
        raise UserError(f"suite {suite.name!r} has {suite.n} task; compare needs at least 2")
    out_dir = Path(out_dir)
    ctx = CompareContext(suite, run_cfg, cfg, out_dir)
    import torch

    torch.set_num_threads(run_cfg.ppo.threads)
    t_run = 0.0
    if any(m.needs_run for m in methods):
        from ..pipeline import run as run_pipeline

        ctx.run_dir = Path(run_dir) if run_dir is not None else out_dir / "run"
        t0 = time.perf_counter()
        res = run_pipeline(suite, run_cfg, ctx.run_dir)
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
    per_iter = run_cfg.ppo.envs_per_task * run_cfg.ppo.num_steps
    total = sum(suite.n * iterations_for(p[4], cfg.steps_per_task) * p[4].envs_per_task * p[4].num_steps for p in pending)
    if pending:
        console.print(f"compare: {len(plan) - len(pending)} of {len(plan)} (method, seed) units cached; "
                      f"training {len(pending)} ({total:,} env steps, {iterations_for(run_cfg.ppo, cfg.steps_per_task) * per_iter:,} per task)")
    with progress_bar(total, f"compare {suite.name}") as bar:
        for m, s, groups, info, ppo, warm, st in pending:
            unit_dir = ctx.cache_dir / m.name / f"seed_{s}"
            st.t0 = time.perf_counter()
            if m.run_unit is not None:
                result, files = m.run_unit(ctx, m, s, groups, info, ppo, warm, unit_dir, bar)
            else:
                result, files = _train_unit(ctx, m, s, groups, info, ppo, warm, unit_dir, bar)
            missing = [k for k in UNIT_KEYS if k not in result]
            if missing:
                raise RuntimeError(f"method {m.name!r} returned a unit result without {', '.join(missing)}")
            art.write_json(unit_dir / "result.json", result)
            st.done([str(p.relative_to(ctx.cache_dir)) for p in [*files, unit_dir / "result.json"]])
    units = {}
    for m, s, *_ in plan:
        units.setdefault(m.name, []).append(art.read_json(ctx.cache_dir / m.name / f"seed_{s}" / "result.json"))
    comparison = summarize(suite, run_cfg, cfg, methods, units, ctx, t_run)
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
    all_steps = [e["env_steps_per_task"] for e in out_methods.values()]
    equal = all(isinstance(s, dict) and s == all_steps[0] for s in all_steps)
    ppo = run_cfg.ppo
    res = {
        "suite": suite.name, "tasks": suite.names, "n_tasks": suite.n,
        "methods_order": [m.name for m in methods],
        "budget": {"steps_per_task_requested": cfg.steps_per_task,
                   "steps_per_task": next(iter(all_steps[0].values())) if equal and all_steps else None,
                   "equal_across_methods": equal,
                   "iterations": iterations_for(ppo, cfg.steps_per_task),
                   "per_task_steps_per_iteration": ppo.envs_per_task * ppo.num_steps,
                   "rule": "every task gets the same environment steps; a group of s tasks trains for s x steps_per_task"},
        "evaluation": {"episodes": cfg.episodes, "deterministic": cfg.deterministic, "seed": cfg.eval_seed,
                       "common_random_numbers": True},
        "seeds": cfg.seeds,
        "ci": "t-based 95% interval over seeds of the mean return over tasks",
        "methods": out_methods,
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
                 f"per task, {comparison['seeds']} seeds, 95% CI", fontsize=10)
    fig.tight_layout()
    buf = __import__("io").BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    art.write_bytes(path, buf.getvalue())
