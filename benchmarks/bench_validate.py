"""`policygradex validate` on the planted family: PolicyGradEx against real fine-tuning.

  python benchmarks/bench_validate.py [--suite cartpole-planted] [--out DIR] [--seed 0] [-- extra validate options]
  python benchmarks/bench_validate.py budget [--suite S] [--steps-list 1024,2048,8192,16384] [--out DIR] [-- --k 2]
      the same run validated with each fine-tuning budget (3 seeds each): how reproducible the
      two ground truths are (seed-to-seed Spearman of f_true and of the surrogate truth), and how
      well they agree with the estimate; saves benchmarks/results/validate_budget.json
      (cartpole-planted) or validate_budget_<suite>[<options>].json.

Runs `policygradex validate --suite cartpole-planted --out DIR` (defaults: 200k meta-training
steps, 8,192 fine-tuning steps x 3 seeds per subset, 16 evaluation episodes) in a fresh
directory (a temporary one unless --out is given), so that both routes are timed in the same
session, and saves benchmarks/results/validate_planted.json: the first-order error per
distance bucket, NMI / ARI against the ground truth and the random floor, Spearman, the
reliability of the ground truth, the speedup with its stage breakdown, and the Hessian traces.

  python benchmarks/bench_validate.py --suite highway
  python benchmarks/bench_validate.py --suite metaworld-mt10
      the first-order approximation error table on the slow suites (highway: ~150 env steps/s per
      task in pure Python; MT10: MuJoCo) at a budget that finishes in about 25 minutes on a
      loaded 2-core machine: the quick profile, fewer fine-tuning seeds (2 / 3), fine-tuning
      steps, episodes and Hessian probes (SUITE_DEFAULTS; options after -- override them).  The budget
      is recorded in the JSON under "budget".  Results: validate_highway.json,
      validate_metaworld_mt10.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import policygradex, save  # noqa: E402

#: Per-suite `policygradex validate` options, put before the user's extra options (which win).
SUITE_DEFAULTS: dict[str, list[str]] = {
    "highway": ["--profile", "quick", "--finetune-seeds", "2", "--finetune-steps", "2048", "--episodes", "8",
                "--probes", "8"],
    "metaworld-mt10": ["--profile", "quick", "--finetune-seeds", "3", "--finetune-steps", "8192", "--episodes", "8",
                       "--probes", "8"],
}


def validate_cli(*args: str) -> float:
    return policygradex("validate", *args)[0]


def budget(out: Path | None, seed: int, steps_list: list[int], suite: str = "cartpole-planted", extra: list[str] = ()) -> dict:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        d = out or Path(tmp) / "val_budget"
        for steps in steps_list:
            args = ["--suite", suite, "--seed", str(seed), "--finetune-steps", str(steps), "--out", str(d), *extra]
            wall = validate_cli(*args)
            r = json.loads((d / "validation.json").read_text())
            rel = r["f_true_reliability"]
            rows.append({"finetune_steps": steps, "seeds": rel["seeds"], "seed_to_seed_spearman": rel["spearman_between_seeds"],
                         "seed_to_seed_mean": rel["mean_between_seeds"], "estimate_vs_each_seed": rel["spearman_estimate_vs_each_seed"],
                         "spearman": r["spearman"], "nmi": r["nmi"], "ari": r["ari"], "random_nmi": r["random_nmi"],
                         "ground_truth_k": r["ground_truth"]["k"], "ground_truth_null_p": r["ground_truth"]["null_p"],
                         "ground_truth_nmi_vs_planted": r["ground_truth"].get("nmi_vs_true_partition"),
                         "f_true_mean_return": r["finetune"]["f_true_mean_return"],
                         "final_delta_median": r["finetune"]["final_delta_median"], "speedup": r["speedup"],
                         "real_route_s": r["speedup_breakdown"]["real_s"]["total"], "wall_s_incremental": round(wall, 1),
                         "estimated_k": r["estimated"]["k"], "estimated_null_p": r["estimated"]["null_p"],
                         "surrogate_truth": {k: v for k, v in r["surrogate_truth"].items() if k not in ("definition", "labels")}})
            print(rows[-1], flush=True)
    return {"suite": suite, "seed": seed, "extra_options": list(extra), "rows": rows,
            "surrogate_truth_definition": r["surrogate_truth"]["definition"]}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "budget":
        ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        ap.add_argument("part", choices=["budget"])
        ap.add_argument("--out", type=Path, default=None)
        ap.add_argument("--seed", type=int, default=0)
        ap.add_argument("--suite", default="cartpole-planted")
        ap.add_argument("--steps-list", default="1024,2048,8192,16384", help="fine-tuning steps per subset, comma-separated")
        argv = sys.argv[1:]
        cut = argv.index("--") if "--" in argv else len(argv)
        a = ap.parse_args(argv[:cut])
        a.extra = argv[cut + 1:]  # further `policygradex validate` options, e.g. -- --k 2
        steps_list = [int(x) for x in a.steps_list.split(",")]
        name = "validate_budget" if a.suite == "cartpole-planted" and not a.extra else \
            "validate_budget_" + a.suite.replace("-", "_") + "".join(x.strip("-") for x in a.extra)
        print(save(name, budget(a.out, a.seed, steps_list, a.suite, a.extra)))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="run directory (default: a fresh temporary one)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--suite", default="cartpole-planted", help="suite to validate; results go to validate_<suite>.json")
    ap.add_argument("extra", nargs="*", help="further `policygradex validate` options (after --)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = a.out or Path(tmp) / f"val_{a.suite}"
        defaults = SUITE_DEFAULTS.get(a.suite, [])
        cmd = ["validate", "--suite", a.suite, "--seed", str(a.seed), "--out", str(out), *defaults, *a.extra]
        wall, _ = policygradex(*cmd, stdout=None)
        r = json.loads((out / "validation.json").read_text())
        groups = json.loads((out / "groups.json").read_text())
    summary = {
        "cli": "policygradex " + " ".join(cmd),
        "wall_s": round(wall, 1),
        "budget": {"suite_defaults": defaults, "extra": list(a.extra)},
        "options": r["options"],
        "subsets": r["subsets"],
        "approx_error": r["approx_error"],
        "nmi": r["nmi"], "ari": r["ari"], "random_nmi": r["random_nmi"], "random_nmi_q95": r["random_nmi_q95"],
        "random_ari": r["random_ari"],
        "spearman": r["spearman"], "spearman_per_task": r["spearman_per_task"], "affinity_spearman": r["affinity_spearman"],
        "f_true_reliability": r["f_true_reliability"],
        "ground_truth": r["ground_truth"], "estimated": r["estimated"], "surrogate_truth": r.get("surrogate_truth"),
        "estimated_null_p": groups["null_p"], "theta_star_step": groups["meta_policy"]["step"],
        "delta_median_of_surrogates": groups["delta"]["median"],
        "speedup": r["speedup"], "speedup_breakdown": r["speedup_breakdown"],
        "hessian_trace": r["hessian_trace"],
        "finetune": {k: r["finetune"][k] for k in ("final_delta_median", "theta_star_mean_return", "f_true_mean_return")},
        "timings_s": {k: v for k, v in r["timings_s"].items() if not isinstance(v, list)},
    }
    print(json.dumps({k: summary[k] for k in ("nmi", "ari", "random_nmi", "spearman", "speedup")}, indent=2))
    name = "planted" if a.suite == "cartpole-planted" else Path(a.suite).stem.replace("-", "_")  # a suite file: its name
    print(save(f"validate_{name}", summary))


if __name__ == "__main__":
    main()
