"""Is the missing structure in θ*'s gradients or in the surrogate?  Gradient similarity at θ*.

For each run directory of the trust scoreboard's families with a known partition (made by
``python benchmarks/bench_trust.py --families F --quick``: ``runs/bench_trust/default/<F>/seed<s>``),
the cosine of the per-task mean policy gradients at the run's θ* (compare's ``gradsim``), grouped
by the SDP with k = the true number of groups, and its NMI against the truth.  When this grouping
fails too, the estimate's inputs (θ*'s gradients) lack the structure; when it succeeds where the
run fails, the surrogate loses it.

Usage:
  python benchmarks/bench_gradsim_theta.py [--families fruittree,deepsea] [--seeds 3]

Result: benchmarks/results/gradsim_theta.json (command, nproc, CPU model, versions, date).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import normalized_mutual_info_score

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import save  # noqa: E402

from policygradex.compare.groupings import gradient_similarity, groups_from_affinity  # noqa: E402
from policygradex.tasks import load_suite  # noqa: E402

ROOT = HERE.parent
SUITES = {"fruittree": "mo-fruit-tree", "deepsea": "mo-deep-sea-treasure"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--families", default=",".join(SUITES))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_trust" / "default")
    args = ap.parse_args()
    rows = []
    for fam in args.families.split(","):
        for seed in range(args.seeds):
            run_dir = args.work / fam / f"seed{seed}"
            if not (run_dir / "groups.json").is_file():
                print(f"{fam} seed {seed}: no run in {run_dir}; run benchmarks/bench_trust.py --families {fam} --quick first")
                continue
            suite = load_suite(SUITES[fam], seed=seed)
            truth = suite.true_labels()
            k = len(suite.true_partition)
            U = np.asarray(gradient_similarity(run_dir, suite.n)["U"])
            labels = np.zeros(suite.n, dtype=int)
            for g, members in enumerate(groups_from_affinity(U, k)):
                labels[members] = g
            run = json.loads((run_dir / "groups.json").read_text())
            row = {"family": fam, "seed": seed, "theta_step": run["meta_policy"]["step"], "k": k,
                   "gradsim_nmi": round(float(normalized_mutual_info_score(truth, labels)), 3),
                   "run_nmi": round(float(run["nmi_vs_true_partition"]), 3)}
            rows.append(row)
            print(row, flush=True)
    save("gradsim_theta", {"command": "python benchmarks/bench_gradsim_theta.py " + " ".join(sys.argv[1:]), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
