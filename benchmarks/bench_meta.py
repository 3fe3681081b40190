"""Meta-RL on held-out tasks (`policygradex compare --methods meta-maml,meta-policygradex,meta-multitask`).

    python benchmarks/bench_meta.py cartpole|lunarlander [--seeds 3] [--steps-per-task N] [--n-test N] [--adapt-steps N]

n = 10 training tasks; held-out tasks drawn from the same parameter ranges (compare/meta.py).
The PolicyGradEx groups come from the `bench_compare.py cartpole` run (same run options, k = 3;
`runs/bench_compare_cartpole/run`, reused when it exists).  Seeds are added one at a time and
benchmarks/results/compare_meta_<suite>[_<non-default budget>].json is rewritten after every seed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(__file__))
from bench_compare import BUDGETS  # noqa: E402
from common import save  # noqa: E402

from policygradex.compare import compare  # noqa: E402
from policygradex.compare.meta import meta_iterations  # noqa: E402
from policygradex.config import CompareConfig, RunConfig  # noqa: E402
from policygradex.tasks import load_suite  # noqa: E402

METHODS = ("meta-maml", "meta-policygradex", "meta-multitask")
# What fits a 2-core machine shared with other jobs (the paper: 50 test tasks, 200 adaptation steps).
META = {"cartpole": dict(steps_per_task=5120, n_test=50, adapt_steps=20, episodes=5, probe_episodes=2),
        "lunarlander": dict(steps_per_task=4096, n_test=50, adapt_steps=20, episodes=3, probe_episodes=2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("suite", choices=sorted(META))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps-per-task", type=int, default=None)
    ap.add_argument("--n-test", type=int, default=None)
    ap.add_argument("--adapt-steps", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    b = dict(BUDGETS[args.suite])
    m = dict(META[args.suite])
    for key in ("steps_per_task", "n_test", "adapt_steps"):
        if getattr(args, key) is not None:
            m[key] = getattr(args, key)
    suite = load_suite(args.suite, b.pop("n", 10), 0)
    run_cfg = RunConfig.model_validate({"ppo": {**suite.ppo_preset, "total_steps": b["meta_steps"]},
                                        "estimate": {"transitions_per_task": b["transitions"]},
                                        "group": {"k": b["k"]}})
    out = args.out or f"runs/bench_meta_{args.suite}"
    run_dir = f"runs/bench_compare_{args.suite}/run"
    t0 = time.perf_counter()
    for n_seeds in range(1, args.seeds + 1):
        cfg = CompareConfig(seeds=n_seeds, methods=METHODS, **m)
        r = compare(suite, run_cfg, cfg, out, run_dir)
        table = {}
        for name, e in r["methods"].items():
            units = [json.loads((Path(out) / "compare" / name / f"seed_{s}" / "result.json").read_text()) for s in e["seeds"]]
            table[name] = {"mean_after_adaptation": e["mean"], "ci95_halfwidth": e["ci95_halfwidth"], "per_seed": e["per_seed_mean"],
                           "mean_before_adaptation_per_seed": [u["mean_before_adaptation"] for u in units],
                           "chosen_group_counts_per_seed": [u["test"]["chosen_group_counts"] for u in units],
                           "train_env_steps_per_task": e["env_steps_per_task"], "wall_s_per_seed": e["wall_s"]["mean"],
                           "groups_seed0": e["groups"][0]}
        suffix = "".join(f"_{k.replace('_', '')}{m[k]}" for k in ("steps_per_task", "n_test", "adapt_steps")
                         if m[k] != META[args.suite][k])
        path = save(f"compare_meta_{args.suite}{suffix}", {
            "suite": args.suite, "n_tasks": suite.n, "seeds_done": n_seeds, "seeds_planned": args.seeds,
            "budget": {**m, "meta_iterations": meta_iterations(cfg),
                       "rollout": f"{cfg.meta_envs} envs x {cfg.meta_rollout_steps} steps", "inner_steps": cfg.inner_steps,
                       "inner_lr": cfg.inner_lr, "meta_lr": cfg.meta_lr, "equal_across_methods": r["budget"]["equal_across_methods"],
                       "train_env_steps_per_task": r["budget"]["steps_per_task"], "policygradex_run": b},
            "evaluation": r["evaluation"], "policygradex_run": r.get("policygradex_run"),
            "table": table, "elapsed_s": time.perf_counter() - t0, "comparison": r,
        })
        print(f"seeds {n_seeds}: " + ", ".join(f"{k} {v['mean_after_adaptation']:.1f}" for k, v in table.items()), flush=True)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
