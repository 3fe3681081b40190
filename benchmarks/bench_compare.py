"""`policygradex compare` on a built-in family: the paper's main table under one budget rule.

    python benchmarks/bench_compare.py cartpole      [--seeds 3] [--steps-per-task N] [--out DIR]
    python benchmarks/bench_compare.py lunarlander   [--seeds 3] [--steps-per-task N] [--out DIR]
    python benchmarks/bench_compare.py cartpole-planted --methods multitask,random,gradsim,policygradex

Seeds are added one at a time (compare resumes from its cached units), and the result file
benchmarks/results/compare_<suite>[_<steps-per-task>].json is rewritten after every seed, so a benchmark cut
short still leaves every method at the seeds it finished.  Budgets per family are below; all
methods get the same environment steps per task.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import save  # noqa: E402

from policygradex.compare import compare  # noqa: E402
from policygradex.config import CompareConfig, RunConfig  # noqa: E402
from policygradex.tasks import load_suite  # noqa: E402

# Budgets that fit a 2-core machine shared with other jobs (README: "Benchmarks").
#   run: PolicyGradEx run options (meta-training steps, transitions per task); k = 3, the paper's k.
BUDGETS = {
    "cartpole": dict(steps_per_task=2048, meta_steps=200_000, transitions=8192, k=3),
    "lunarlander": dict(steps_per_task=4096, meta_steps=60_000, transitions=2048, k=3),
    # the planted family (two clusters with mirrored actions): k = 2, the known number of clusters
    "cartpole-planted": dict(steps_per_task=2048, meta_steps=60_000, transitions=8192, k=2, n=8),
}
PAPER = {"cartpole": {"multitask": 145.9, "softmod": 139.3, "random": 144.1, "gradsim": 142.0, "policygradex": 159.2},
         "lunarlander": {"multitask": 53.8, "softmod": 66.1, "random": 73.1, "gradsim": 80.8, "policygradex": 82.8},
         "cartpole-planted": {}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("suite", choices=sorted(BUDGETS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps-per-task", type=int, default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--methods", default=None, help="comma-separated subset of the methods (default all)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    b = dict(BUDGETS[args.suite])
    if args.steps_per_task:
        b["steps_per_task"] = args.steps_per_task
    suite = load_suite(args.suite, b.pop("n", 10), 0)
    run_cfg = RunConfig.model_validate({"ppo": {**suite.ppo_preset, "total_steps": b["meta_steps"]},
                                        "estimate": {"transitions_per_task": b["transitions"]},
                                        "group": {"k": b["k"]}})
    out = args.out or f"runs/bench_compare_{args.suite}"
    t0 = time.perf_counter()
    for n_seeds in range(1, args.seeds + 1):
        extra = {"methods": tuple(args.methods.split(","))} if args.methods else {}
        cfg = CompareConfig(seeds=n_seeds, steps_per_task=b["steps_per_task"], **extra)
        r = compare(suite, run_cfg, cfg, out)
        table = {m: {"mean": e["mean"], "ci95_halfwidth": e["ci95_halfwidth"], "per_seed": e["per_seed_mean"],
                     "vs_multitask": e.get("vs_multitask", {}).get("relative"), "wall_s_per_seed": e["wall_s"]["mean"],
                     "groups_seed0": e["groups"][0]}
                 for m, e in r["methods"].items()}
        name = f"compare_{args.suite}" + (f"_{args.steps_per_task}" if args.steps_per_task else "")
        path = save(name, {
            "suite": args.suite, "n_tasks": suite.n, "seeds_done": n_seeds, "seeds_planned": args.seeds,
            "budget": {**b, "per_task_env_steps": r["budget"]["steps_per_task"], "equal_across_methods": r["budget"]["equal_across_methods"],
                       "ppo_iterations": r["budget"]["iterations"], "ppo_preset": suite.ppo_preset},
            "evaluation": r["evaluation"], "policygradex_run": r.get("policygradex_run"),
            "table": table, "paper": PAPER[args.suite], "elapsed_s": time.perf_counter() - t0,
            "comparison": r,
        })
        print(f"seeds {n_seeds}: " + ", ".join(f"{m} {v['mean']:.1f}" for m, v in table.items()), flush=True)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
