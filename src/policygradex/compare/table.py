"""What ``policygradex compare`` prints: the methods' table, and for ``recommended`` how it
fares against every other method and, on preference suites, the MORL indicators."""

from __future__ import annotations

from rich.table import Table

from ..tasks import TaskSuite


def comparison_lines(r: dict, suite: TaskSuite, seeds: int) -> list:
    """The table of ``comparison.json`` content ``r`` and the lines under it."""
    b = r["budget"]
    budget = (f"{b['steps_per_task']:,} env steps per task for every method" if b["steps_per_task"] is not None else
              f"{b['steps_per_task_requested']:,} env steps per task requested (unequal across methods)")
    t = Table(title=f"{suite.name} (n = {suite.n}): {budget}, "
                    f"{seeds} seed{'s' if seeds > 1 else ''}, mean return over tasks ± 95% CI")
    success = any("success_rate" in e for e in r["methods"].values())  # suites with a success flag (Meta-World)
    morl = any("morl" in e for e in r["methods"].values())  # preference suites (docs/morl.md)
    cols = ("method", "mean return", "± 95% CI", "vs multitask", *(["success"] if success else []),
            *(["expected utility", "hypervolume"] if morl else []), "groups (seed 0)", "wall s / seed")
    for col in cols:
        t.add_column(col, justify="left" if col in ("method", "groups (seed 0)") else "right")
    for name in r["methods_order"]:
        e = r["methods"][name]
        rel = e.get("vs_multitask", {}).get("relative")
        sr = [f"{e['success_rate']['mean']:.0%}" if "success_rate" in e else "-"] if success else []
        mo = [_indicator(e, "expected_utility", ".3f"), _indicator(e, "hypervolume", ".4g")] if morl else []
        t.add_row(name, f"{e['mean']:.1f}", "-" if e["ci95_halfwidth"] is None else f"{e['ci95_halfwidth']:.1f}",
                  "-" if rel is None else f"{rel:+.1%}", *sr, *mo, " | ".join(str(len(g)) for g in e["groups"][0]) + " tasks",
                  f"{e['wall_s']['mean']:.0f}")
    lines: list = [t]
    rec = r.get("recommended")
    if rec is not None:
        vs = "; ".join(f"{name} {v['paired_diff_mean']:+.2f}" + (f" ± {v['paired_diff_ci95_halfwidth']:.2f}"
                                                                    if v["paired_diff_ci95_halfwidth"] is not None else "")
                       + {"above": " (above)", "below": " (BELOW)", "no": "", None: ""}[v["significant"]]
                       for name, v in rec["vs"].items())
        lines.append(f"recommended trains {rec['followed']}; paired difference of its mean return against {vs}; "
                     f"regret against the best in hindsight ({rec['best_in_hindsight']}): {rec['regret']:.2f}")
    return lines


def _indicator(e: dict, key: str, spec: str) -> str:
    m = e.get("morl", {}).get(key)
    return "-" if m is None else format(m["mean"], spec)
