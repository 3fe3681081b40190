"""Grouping from a policy trained elsewhere: Stable-Baselines3 PPO models of the planted family.

For each suite seed of ``cartpole-planted``: a Stable-Baselines3 PPO ``MlpPolicy`` is trained on
every task behind :class:`policygradex.rl.imported.OneHotTaskEnv` (the task's one-hot appended to
the observation, tasks in turn per episode) for ``--steps`` environment steps in all, saved, and
grouped with ``policygradex run --policy sb3:MODEL.zip --replicates 1``; next to it the project's
own theta* at the same budget (``policygradex run --steps STEPS --replicates 1``).  Right = NMI 1
against the planted partition.  ``--policies 3`` also trains three SB3 models per seed (seeds 0,
1, 2 of SB3) and groups them as three replicates (a calibrated verdict).

Every unit (a model, a run) is cached under ``--work``/steps<N>/seed<s>; a rerun resumes, and a
budget already in the result file is kept unless it is run again.  Results:
``benchmarks/results/policies.json``.

    python benchmarks/bench_policies.py [--seeds 5] [--steps 20000,50000] [--policies 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from common import RESULTS, policygradex, provenance, save

ROOT = Path(__file__).resolve().parent.parent


def train_sb3(suite_seed: int, sb3_seed: int, steps: int, path: Path) -> float:
    """Train and save one SB3 PPO model (cached); its wall seconds (0 when cached)."""
    if path.is_file():
        return 0.0
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    from policygradex.rl.imported import OneHotTaskEnv
    from policygradex.tasks import load_suite

    torch.set_num_threads(1)
    suite = load_suite("cartpole-planted", seed=suite_seed)
    t0 = time.perf_counter()
    env = make_vec_env(lambda: OneHotTaskEnv(suite), n_envs=8, seed=sb3_seed)
    model = PPO("MlpPolicy", env, n_steps=128, batch_size=256, seed=sb3_seed, verbose=0, device="cpu")
    model.learn(steps)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.zip")
    model.save(tmp)
    os.replace(tmp, path)
    return time.perf_counter() - t0


def grouped(run_dir: Path, *args: str) -> dict:
    """``policygradex run ARGS --out run_dir`` (cached by the pipeline itself); groups.json's answer."""
    wall, _ = policygradex("run", "--suite", "cartpole-planted", *args, "--out", str(run_dir), cwd=ROOT)
    g = json.loads((run_dir / "groups.json").read_text())
    v = g["verdict"]
    return {"k": g["k"], "nmi": g["nmi_vs_true_partition"], "p": g["null_p"], "distinguishable": g["distinguishable_from_noise"],
            "calibrated": v["calibrated"], "right": g["nmi_vs_true_partition"] > 1 - 1e-9, "wall_seconds": round(wall, 1)}


def budget(work: Path, seeds: int, steps: int, policies: int) -> dict:
    """Every seed's answers at one training budget, and their summary."""
    rows = []
    for s in range(seeds):
        w = work / f"steps{steps}" / f"seed{s}"
        models = [w / f"sb3_{i}.zip" for i in range(max(1, policies))]
        train_s = [round(train_sb3(s, i, steps, m), 1) for i, m in enumerate(models)]
        row = {"suite_seed": s, "sb3_train_seconds": train_s}
        row["sb3"] = grouped(w / "sb3_run", "--suite-seed", str(s), "--policy", f"sb3:{models[0]}", "--replicates", "1")
        row["own"] = grouped(w / "own_run", "--suite-seed", str(s), "--steps", str(steps), "--replicates", "1")
        if policies > 1:
            row["sb3_replicates"] = grouped(w / "sb3_replicates", "--suite-seed", str(s),
                                            *[a for m in models for a in ("--policy", f"sb3:{m}")], "--workers", "2")
        rows.append(row)
        print(json.dumps({"steps": steps, "seed": s, **{k: v for k, v in row.items() if k != "suite_seed"}}), flush=True)
    summary = {name: {"right": sum(r[name]["right"] for r in rows if name in r), "of": sum(name in r for r in rows),
                      "wrong_but_significant": sum((not r[name]["right"]) and r[name]["distinguishable"] for r in rows if name in r)}
               for name in ("sb3", "own", "sb3_replicates")}
    return {"steps": steps, "policies": policies, "provenance": provenance(), "summary": summary, "rows": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--steps", default="20000,50000", help="environment steps of every training (SB3 and the project's), comma-separated budgets")
    ap.add_argument("--policies", type=int, default=3, help="SB3 models per seed grouped as replicates (1: none)")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_policies")
    args = ap.parse_args()
    path = RESULTS / "policies.json"
    budgets = {b["steps"]: b for b in json.loads(path.read_text())["budgets"]} if path.is_file() else {}
    for steps in (int(x) for x in args.steps.split(",")):
        budgets[steps] = budget(args.work, args.seeds, steps, args.policies)
        save("policies", {"budgets": [budgets[k] for k in sorted(budgets)]})
    for b in sorted(budgets):
        print(b, json.dumps(budgets[b]["summary"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
