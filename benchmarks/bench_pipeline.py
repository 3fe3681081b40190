"""End-to-end pipeline benchmarks: `make run` wall time and planted-grouping quality.

  python benchmarks/bench_pipeline.py planted [--seeds 3] [--steps 60000]
      `policygradex run --suite cartpole-planted --seed K` for K in seeds (suite seed K too):
      NMI against the planted partition, k, null p, delta, wall time per stage-free run.
  python benchmarks/bench_pipeline.py transitions [--seeds 3]
      NMI on cartpole-planted for 2,048 / 4,096 / 8,192 transitions per task (same theta* per seed).
  python benchmarks/bench_pipeline.py makerun
      `policygradex run --suite cartpole --out runs/default` (what `make run` does) from an empty run
      dir: wall time, the groups, and the exact stdout (pipeline_makerun.json).
  python benchmarks/bench_pipeline.py quickstart
      the README's quick start, `policygradex run --suite cartpole-planted --out runs/planted`: the
      exact stdout, the groups and report.md's verdict (pipeline_quickstart.json).

  python benchmarks/bench_pipeline.py replicates [--replicates 2,3]
      `policygradex run --suite cartpole --replicates R` from empty run dirs with --workers 1 and
      --workers 2: wall times, their ratio, and whether the outputs are byte-identical
      (pipeline_replicates.json).  Each replicate's training is a unit and its estimates
      (theta* and each theta-window member) follow as units of their own, so three replicates
      on two workers overlap the third training with the first two's estimates.

makerun and quickstart run the command in an empty temporary working directory (so the printed
paths are the README's runs/default and runs/planted) with COLUMNS=100; `--extra` appends options
to the command and `--save-as NAME` writes results/NAME.json instead (a quick check of the script:
`quickstart --extra "--steps 2048 --transitions 256 --null-permutations 20" --save-as check_quickstart`).
The README's blocks are rendered from these files by `python benchmarks/readme_figures.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
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
            wall = cli("run", "--suite", "cartpole-planted", "--suite-seed", str(k), "--seed", str(k), "--replicates", "1", "--theta-window", "1", "--steps", str(steps), "--out", d)
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
                wall = cli("run", "--suite", "cartpole-planted", "--suite-seed", str(k), "--seed", str(k), "--replicates", "1", "--theta-window", "1", "--steps", str(steps),
                           "--transitions", str(t), "--out", d)
                g = json.loads((Path(d) / "groups.json").read_text())
                rows.append({"seed": k, "transitions_per_task": t, "nmi": g["nmi_vs_true_partition"], "null_p": g["null_p"],
                             "k": g["k"], "wall_s_incremental": round(wall, 1)})
                print(rows[-1], flush=True)
    summary = {t: [r["nmi"] for r in rows if r["transitions_per_task"] == t] for t in values}
    return {"suite": "cartpole-planted", "steps": steps, "runs": rows, "nmi_by_transitions": summary}


COLUMNS = 100  # terminal width of the captured output (the README shows it at this width)


def readme_run(suite: str, out: str, extra: list[str]) -> dict:
    """``policygradex run --suite SUITE --out OUT EXTRA`` in an empty temporary working directory:
    wall time, exact stdout, groups.json and report.md's verdict."""
    args = ["run", "--suite", suite, "--out", out, *extra]
    os.environ["COLUMNS"] = str(COLUMNS)
    with tempfile.TemporaryDirectory() as d:
        wall, proc = policygradex(*args, capture_output=True, text=True, cwd=d, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"policygradex {shlex.join(args)} exited with {proc.returncode}:\n{proc.stderr}")
        run_dir = Path(d) / out
        g = json.loads((run_dir / "groups.json").read_text())
        report = (run_dir / "report.md").read_text()
    verdict = report.split("## Verdict\n", 1)[1].split("\n## ", 1)[0].strip()
    return {"command": "policygradex " + shlex.join(args), "columns": COLUMNS, "wall_s": round(wall, 1), "stdout": proc.stdout,
            "k": g["k"], "null_p": g["null_p"], "groups": g["groups"], "distinguishable_from_noise": g["distinguishable_from_noise"],
            "signal_collapsed": g["signal_collapsed"], "signal": g.get("signal"), "stability": g["stability"]["per_task"],
            "nmi_vs_true_partition": g.get("nmi_vs_true_partition"), "delta_median": g["delta"]["median"],
            "meta_policy": g["meta_policy"], "report_verdict": verdict, "verdict": g.get("verdict"),
            "replicates": (g.get("verdict") or {}).get("replicates", 1), "stability_source": g["stability"].get("source")}


def makerun(extra: list[str]) -> dict:
    return {**readme_run("cartpole", "runs/default", extra), "target_s": 300,
            "note": "what `make run` does (after install), from an empty run directory"}


def quickstart(extra: list[str]) -> dict:
    return {**readme_run("cartpole-planted", "runs/planted", extra), "note": "the README's quick start, from an empty run directory"}


REPLICATE_OUTPUTS = ("groups.json", "affinity.csv", "coassociation.csv", "replicates.json", "f_table.csv")


def replicates(values: list[int], extra: list[str]) -> dict:
    """Serial (--workers 1) against parallel (--workers 2) replicates, from empty run directories."""
    import hashlib

    rows = []
    for r in values:
        row: dict = {"replicates": r}
        digests = {}
        for workers in (1, 2):
            with tempfile.TemporaryDirectory() as d:
                out = Path(d) / "run"
                args = ["run", "--suite", "cartpole", "--replicates", str(r), "--workers", str(workers), *extra, "--out", str(out)]
                load = os.getloadavg()
                row[f"wall_s_workers{workers}"] = round(cli(*args), 1)
                row[f"load_before_workers{workers}"] = [round(x, 2) for x in load]
                digests[workers] = {f: hashlib.sha256((out / f).read_bytes()).hexdigest() for f in REPLICATE_OUTPUTS}
                row["command"] = "policygradex " + shlex.join(args[:-2])
        row["speedup"] = round(row["wall_s_workers1"] / row["wall_s_workers2"], 2)
        row["identical_outputs"] = digests[1] == digests[2]
        print(row, flush=True)
        rows.append(row)
    return {"suite": "cartpole", "runs": rows, "note": "same machine, same run; outputs compared: " + ", ".join(REPLICATE_OUTPUTS)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["planted", "makerun", "transitions", "quickstart", "replicates"])
    ap.add_argument("--replicates", default="2,3", help="replicates: the R values")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=60_000)
    ap.add_argument("--extra", default="", help="makerun / quickstart: options appended to the command (a quick check)")
    ap.add_argument("--save-as", default=None, help="result name (default: pipeline_<part>)")
    a = ap.parse_args()
    extra = shlex.split(a.extra)
    if a.part == "transitions":
        res = transitions(a.seeds, a.steps, [2048, 4096, 8192])
    elif a.part == "planted":
        res = planted(a.seeds, a.steps)
    elif a.part == "makerun":
        res = makerun(extra)
    elif a.part == "replicates":
        res = replicates([int(x) for x in a.replicates.split(",")], extra)
    else:
        res = quickstart(extra)
    print(save(a.save_as or f"pipeline_{a.part}", res))


if __name__ == "__main__":
    main()
