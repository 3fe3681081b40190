"""Which checkpoint theta* is with and without the learning-progress cap (``[estimate] progress_cap``).

  python benchmarks/bench_theta_choice.py [--families planted,identical,cartpole,thrusters] [--seeds 5] [--workers 2]

For each family and seed, the training of replicate 0 of the trust scoreboard's run (the same
suite, seed and defaults as ``benchmarks/bench_trust.py``; made with ``policygradex run
--replicates 1 --theta-window 1``, or reused from ``runs/bench_trust/default/<family>/seed<s>``
when that exists), and theta* chosen from its checkpoints by the rule with the cap (the default,
0.5) and without it (1.0), with the same probes.  Where the two agree, the cap changes nothing on
that training; the scoreboard's answers computed before the cap stand for it.

Result: benchmarks/results/theta_choice.json (per training: the checkpoints' mean training
returns, how many the cap allows, both choices) and a table on stdout.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing as mp
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_trust import FAMILIES, ROOT  # noqa: E402
from common import policygradex, save  # noqa: E402


def run_dir_for(work: Path, name: str, seed: int) -> Path:
    """The scoreboard's own run directory when it exists, else one of this benchmark's."""
    trust = ROOT / "runs" / "bench_trust" / "default" / name / f"seed{seed}"
    return trust if (trust / "train.manifest.json").is_file() else work / name / f"seed{seed}"


def choose(name: str, seed: int, work: Path) -> dict:
    from policygradex.config import CollectConfig
    from policygradex.estimate.collect import mean_training_return, progress_cap, select_checkpoint

    fam = FAMILIES[name]
    d = run_dir_for(work, name, seed)
    if not (d / "train.manifest.json").is_file():
        args = [a.replace("{seed}", str(seed)) for a in fam.args]
        policygradex("run", *args, "--replicates", "1", "--theta-window", "1", "--null-permutations", "9", "--workers", "1",
                     "--out", str(d), env=dict(fam.env), cwd=ROOT)
    if fam.env:  # the suite's environment module must be importable here too
        sys.path.insert(0, dict(fam.env)["PYTHONPATH"])
    ckpts = sorted((d / "train" / "checkpoints").glob("step_*.pt"))
    c = CollectConfig()
    common = dict(probe_transitions=c.probe_transitions, min_adv_scale=c.min_adv_scale, min_label_frac=c.min_label_frac,
                  min_healthy_frac=c.min_healthy_frac, seed=c.seed, keep=c.signal_keep)
    returns = [mean_training_return(p) for p in ckpts]
    new, old = (select_checkpoint(ckpts, **common, progress=cap) for cap in (c.progress_cap, 1.0))
    return {"family": name, "seed": seed, "checkpoints": [int(p.stem.split("_")[1]) for p in ckpts],
            "mean_training_returns": [None if r is None else round(r, 2) for r in returns],
            "allowed_by_cap": progress_cap(returns, c.progress_cap), "theta_star_with_cap": new.step,
            "theta_star_without_cap": old.step, "same": new.step == old.step}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--families", default="planted,identical,cartpole,thrusters")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_theta_choice")
    a = ap.parse_args()
    jobs = [(f, s) for f in a.families.split(",") for s in range(min(a.seeds, FAMILIES[f].seeds))]
    with cf.ProcessPoolExecutor(a.workers, mp_context=mp.get_context("spawn")) as pool:
        rows = list(pool.map(choose, *zip(*jobs), [a.work] * len(jobs)))
    print("| family | seed | checkpoints allowed | theta* with cap | without | same |\n|---|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['family']} | {r['seed']} | {r['allowed_by_cap']}/{len(r['checkpoints'])} | {r['theta_star_with_cap']} | "
              f"{r['theta_star_without_cap']} | {'yes' if r['same'] else 'no'} |")
    print(save("theta_choice", {"rows": rows, "same": sum(r["same"] for r in rows), "trainings": len(rows)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
