"""End-to-end pipeline benchmarks: `make run` wall time and planted-grouping quality.

  python benchmarks/bench_pipeline.py planted [--seeds 3] [--steps 60000]
      `policygradex run --suite cartpole-planted --seed K` for K in seeds (suite seed K too):
      NMI against the planted partition, k, null p, delta, wall time per stage-free run.
  python benchmarks/bench_pipeline.py transitions [--seeds 3]
      NMI on cartpole-planted for 2,048 / 4,096 / 8,192 transitions per task (same theta* per seed).
  python benchmarks/bench_pipeline.py makerun
      wall time of `policygradex run --suite cartpole` (what `make run` does) from an empty run dir.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import policygradex, save  # noqa: E402


def cli(*args: str) -> float:
    return policygradex(*args)[0]


def planted(seeds: int, steps: int) -> dict:
    runs = []
    for k in range(seeds):
        with tempfile.TemporaryDirectory() as d:
            wall = cli("run", "--suite", "cartpole-planted", "--suite-seed", str(k), "--seed", str(k), "--steps", str(steps), "--out", d)
            g = json.loads((Path(d) / "groups.json").read_text())
        runs.append({"seed": k, "nmi": g["nmi_vs_true_partition"], "k": g["k"], "null_p": g["null_p"],
                     "delta_median": g["delta"]["median"], "theta_star_step": g["meta_policy"]["step"], "wall_s": round(wall, 1)})
        print(runs[-1], flush=True)
    return {"suite": "cartpole-planted", "n": 8, "steps": steps, "runs": runs,
            "nmi_mean": sum(r["nmi"] for r in runs) / len(runs), "nmi_min": min(r["nmi"] for r in runs)}


def transitions(seeds: int, steps: int, values: list[int]) -> dict:
    """NMI on the planted family as a function of transitions per task (training shared per seed)."""
    rows = []
    for k in range(seeds):
        with tempfile.TemporaryDirectory() as d:
            for t in values:
                wall = cli("run", "--suite", "cartpole-planted", "--suite-seed", str(k), "--seed", str(k), "--steps", str(steps),
                           "--transitions", str(t), "--out", d)
                g = json.loads((Path(d) / "groups.json").read_text())
                rows.append({"seed": k, "transitions_per_task": t, "nmi": g["nmi_vs_true_partition"], "null_p": g["null_p"],
                             "k": g["k"], "wall_s_incremental": round(wall, 1)})
                print(rows[-1], flush=True)
    summary = {t: [r["nmi"] for r in rows if r["transitions_per_task"] == t] for t in values}
    return {"suite": "cartpole-planted", "steps": steps, "runs": rows, "nmi_by_transitions": summary}


def makerun() -> dict:
    with tempfile.TemporaryDirectory() as d:
        wall = cli("run", "--suite", "cartpole", "--out", d)
        g = json.loads((Path(d) / "groups.json").read_text())
    return {"command": "policygradex run --suite cartpole --out DIR (as make run, after install)", "wall_s": round(wall, 1),
            "target_s": 300, "k": g["k"], "null_p": g["null_p"], "groups": g["groups"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["planted", "makerun", "transitions"])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=60_000)
    a = ap.parse_args()
    if a.part == "transitions":
        save("pipeline_transitions", transitions(a.seeds, a.steps, [2048, 4096, 8192]))
    elif a.part == "planted":
        save("pipeline_planted", planted(a.seeds, a.steps))
    else:
        save("pipeline_makerun", makerun())


if __name__ == "__main__":
    main()
