"""Does following the tool pay?  ``recommended`` against the alternatives a user has, per family.

For every family, one ``policygradex compare`` at the default run options (three replicates,
auto-k) with the methods

  recommended  the tool's answer as a user follows it: the run's groups when its verdict is
               "distinguishable from noise", else one policy for all tasks
  multitask    one policy for all tasks
  pertask      one policy per task
  random       a random partition with the run's group sizes (a new draw per seed)
  gradsim      SDP grouping (the run's k) of the cosine of per-task mean policy gradients at θ*

at the same environment steps per task for every method (compare's budget rule; default 4,096:
at 20,480, compare's own default, every grouping of ``cartpole-planted`` reached CartPole's
500 cap in seed 0, multitask, random, gradsim and recommended alike, which leaves nothing to
compare), over ``--seeds`` training seeds (default 5), and reports each method's mean return with its 95% CI,
the paired difference of ``recommended`` against each method (significant when its 95% CI
excludes 0), and the regret of ``recommended`` against the best method in hindsight.  On the
MO-Gymnasium families the expected utility and hypervolume of each method's policies too.

Families (``--families``, comma-separated; default all): planted (``cartpole-planted``),
cartpole, lunarlander, fruittree (``mo-fruit-tree``), deepsea (``mo-deep-sea-treasure``).

Built from cached units: compare caches every (method, seed) unit and the run's stages under
``runs/bench_decision/<family>/``, so a call that is stopped (``--max-minutes`` ends the current
compare call and keeps its finished units) resumes where it stopped, in this or a later session.
The result file is rewritten after every family and keeps the families of earlier calls; a
family already in it is not recomputed (``--recompute`` does), so a fresh clone resumes with
the families still pending.

Usage:
  python benchmarks/bench_decision.py [--families planted,deepsea] [--seeds 5] [--max-minutes 120]
      [--workers 2] [--steps-per-task 4096]

Result: benchmarks/results/decision.json (command, nproc, CPU model, versions, load average,
date) and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import RESULTS, provenance, save  # noqa: E402

ROOT = HERE.parent
METHODS = "recommended,multitask,pertask,random,gradsim"
FAMILIES = {
    "planted": ("--suite", "cartpole-planted"),
    "cartpole": ("--suite", "cartpole"),
    "lunarlander": ("--suite", "lunarlander"),
    "fruittree": ("--suite", "mo-fruit-tree"),
    "deepsea": ("--suite", "mo-deep-sea-treasure"),
}


def run_family(work: Path, name: str, seeds: int, steps_per_task: int, workers: int, deadline: float) -> dict | None:
    """compare for one family until it finishes or the deadline passes: its comparison.json, or None."""
    out = work / name
    args = [sys.executable, "-m", "policygradex.cli", "compare", *FAMILIES[name], "--methods", METHODS, "--seeds", str(seeds),
            "--steps-per-task", str(steps_per_task), "--workers", str(workers), "--out", str(out)]
    left = deadline - time.time()
    if left < 60:
        return None
    env = {**os.environ, "POLICYGRADEX_QUIET": "1"}
    try:
        subprocess.run(args, cwd=ROOT, env=env, check=True, timeout=left, stdout=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        print(f"{name}: stopped at the time limit; its finished units are cached", flush=True)
        return None
    return json.loads((out / "comparison.json").read_text())


def summarize(name: str, cmp: dict) -> dict:
    ms = cmp["methods"]
    row = {"family": name, "suite": cmp["suite"], "n_tasks": cmp["n_tasks"], "seeds": cmp["seeds"],
           "steps_per_task": cmp["budget"]["steps_per_task"],
           "run": {k: cmp["policygradex_run"][k] for k in ("k", "null_p", "distinguishable_from_noise", "groups")},
           "methods": {m: {"mean": e["mean"], "ci95_halfwidth": e["ci95_halfwidth"], "per_seed_mean": e["per_seed_mean"],
                           "k_seed0": len(e["groups"][0]),
                           **({"morl": {k: v for k, v in e["morl"].items() if k in ("expected_utility", "hypervolume")}}
                              if "morl" in e else {})}
                       for m, e in ms.items()},
           "recommended": cmp["recommended"]}
    return row


def _num(x: float, scale: float, sign: str = "") -> str:
    """Two decimals for a family whose returns are small (|mean| < 10), else one."""
    return format(x, f"{sign}.{2 if abs(scale) < 10 else 1}f")


def _paired(v: dict, scale: float) -> str:
    half = "" if v["paired_diff_ci95_halfwidth"] is None else f" ± {_num(v['paired_diff_ci95_halfwidth'], scale)}"
    return f"{_num(v['paired_diff_mean'], scale, '+')}{half} ({v['significant']})"


def table(rows: list[dict]) -> str:
    """The markdown table of the result file's families (README block ``decision``)."""
    methods = METHODS.split(",")
    head = ["family", "the run's verdict", "recommended trains", *methods, "recommended − multitask (paired)",
            "recommended − best other (paired)", "regret"]
    out = ["| " + " | ".join(head) + " |", "|---|---|---|" + "---:|" * (len(head) - 3)]
    for r in rows:
        if "pending" in r:
            out.append(f"| {r['family']} | not measured yet |" + " |" * (len(head) - 2))
            continue
        run = r["run"]
        verdict = f"k = {run['k']}, p = {run['null_p']:.3f}" + ("" if run["distinguishable_from_noise"] else ": noise")
        cells, scale = [], max(abs(r["methods"][m]["mean"]) for m in methods)
        for m in methods:
            e = r["methods"][m]
            cells.append(_num(e["mean"], scale) + ("" if e["ci95_halfwidth"] is None else f" ± {_num(e['ci95_halfwidth'], scale)}"))
        rec = r["recommended"]
        others = {n: v for n, v in rec["vs"].items()}
        best_other = max(others, key=lambda n: r["methods"][n]["mean"])
        k = r["methods"]["recommended"]["k_seed0"]
        out.append(f"| {r['family']} | {verdict} | {k} group{'s' if k > 1 else ''} | " + " | ".join(cells) +
                   f" | {_paired(others['multitask'], scale)} | {_paired(others[best_other], scale)} vs {best_other} | "
                   f"{_num(rec['regret'], scale)} |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--steps-per-task", type=int, default=4_096)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-minutes", type=float, default=120.0)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_decision")
    ap.add_argument("--recompute", action="store_true", help="recompute families already in the result file")
    args = ap.parse_args()
    families = [f for f in args.families.split(",") if f]
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        ap.error(f"unknown families {unknown}; allowed: {', '.join(FAMILIES)}")
    deadline = time.time() + 60 * args.max_minutes
    path = RESULTS / "decision.json"
    done = {r["family"]: r for r in (json.loads(path.read_text())["families"] if path.is_file() else []) if "pending" not in r}
    for name in families:
        if name in done and not args.recompute:
            continue
        cmp = run_family(args.work, name, args.seeds, args.steps_per_task, args.workers, deadline)
        if cmp is not None:
            prov = provenance()  # families accumulate over calls (and machines): each says where it was computed
            done[name] = {**summarize(name, cmp), "command": "python benchmarks/bench_decision.py " + " ".join(sys.argv[1:]),
                          "computed": {k: prov[k] for k in ("date", "git_commit", "cpu_model", "nproc")}}
        rows = [done.get(f, {"family": f, "pending": True}) for f in FAMILIES]
        save("decision", {"methods": METHODS.split(","), "complete": all("pending" not in r for r in rows), "families": rows})
    rows = [done.get(f, {"family": f, "pending": True}) for f in FAMILIES]
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
