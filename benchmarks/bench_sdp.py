"""Benchmark the grouping SDP: wall time and planted-partition recovery versus n.

For each n, a planted affinity with ``k`` blocks of unequal sizes (within-block ``--within``,
between ``--between``, plus symmetric Gaussian noise of standard deviation ``--noise`` per
entry, tasks shuffled) is grouped with ``group_tasks`` in auto-k mode (default penalty
4 x mean |off-diagonal U|) and in fixed-k mode, with the chosen solver (default ``auto``:
Clarabel for n <= 40, SCS above).  The time is the wall time of the whole ``group_tasks`` call:
cvxpy problem construction and canonicalization, the solve and the rounding.  Recovery is the
adjusted Rand index and NMI against the planted partition.

Usage:
    python benchmarks/bench_sdp.py                       # n = 10 25 50 100, noise 0.3 0.6
    python benchmarks/bench_sdp.py --sizes 10 100 --noise 0.5 --repeats 3

Writes ``benchmarks/results/sdp.json`` (``--out``) with the command, nproc, library versions
and date next to the per-run records and a per-(n, noise, mode) summary.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from policygradex.artifacts import versions, write_json
from policygradex.group.sdp import CLARABEL_MAX_N, group_tasks

TARGET_SECONDS_AT_100 = 5.0


def planted(n: int, k: int, noise: float, within: float, between: float, rng: np.random.Generator):
    """Planted block affinity with unequal block sizes (each >= 2) and symmetric noise."""
    if n < 2 * k:
        raise SystemExit(f"--sizes: n = {n} is too small for k = {k} blocks of >= 2 tasks")
    sizes = 2 + rng.multinomial(n - 2 * k, rng.dirichlet(np.full(k, 2.0)))
    truth = rng.permutation(np.repeat(np.arange(k), sizes))
    U = np.where(truth[:, None] == truth[None, :], within, between)
    E = rng.normal(0.0, noise, size=(n, n))
    U = U + (E + E.T) / np.sqrt(2.0)
    np.fill_diagonal(U, 0.0)
    return U, truth, sorted(sizes.tolist())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 25, 50, 100], help="numbers of tasks n")
    ap.add_argument("--k", type=int, default=4, help="number of planted blocks")
    ap.add_argument("--noise", type=float, nargs="+", default=[0.3, 0.6], help="noise std per entry")
    ap.add_argument("--within", type=float, default=1.0, help="affinity inside a block")
    ap.add_argument("--between", type=float, default=-0.3, help="affinity between blocks")
    ap.add_argument("--repeats", type=int, default=3, help="independent draws per (n, noise)")
    ap.add_argument("--solver", default="auto", choices=["auto", "clarabel", "scs"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "sdp.json")
    args = ap.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    group_tasks(np.array([[0.0, 1.0], [1.0, 0.0]]), penalty=0.0)  # import/JIT warm-up
    load_before = os.getloadavg()
    records = []
    for n in args.sizes:
        for noise in args.noise:
            for rep in range(args.repeats):
                U, truth, sizes = planted(n, args.k, noise, args.within, args.between, rng)
                for mode, k in (("auto", None), ("fixed", args.k)):
                    t0 = time.perf_counter()
                    g = group_tasks(U, k=k, solver=args.solver)
                    seconds = time.perf_counter() - t0
                    rec = {
                        "n": n,
                        "noise": noise,
                        "repeat": rep,
                        "mode": mode,
                        "planted_sizes": sizes,
                        "seconds": round(seconds, 4),
                        "solver": g.solver,
                        "status": g.status,
                        "k_found": g.k,
                        "trace": round(g.trace, 4),
                        "ari": round(float(adjusted_rand_score(truth, g.labels)), 4),
                        "nmi": round(float(normalized_mutual_info_score(truth, g.labels)), 4),
                        "gap": round(g.gap, 6),
                    }
                    records.append(rec)
                    print(
                        f"n={n:4d} noise={noise:.2f} {mode:5s} {g.solver:8s} {seconds:7.2f}s "
                        f"k={g.k:2d} (trace {g.trace:6.2f}) ARI={rec['ari']:.3f} gap={g.gap:.4f}",
                        flush=True,
                    )

    summary = []
    for n in args.sizes:
        for noise in args.noise:
            for mode in ("auto", "fixed"):
                rs = [r for r in records if r["n"] == n and r["noise"] == noise and r["mode"] == mode]
                summary.append(
                    {
                        "n": n,
                        "noise": noise,
                        "mode": mode,
                        "median_seconds": round(statistics.median(r["seconds"] for r in rs), 4),
                        "max_seconds": round(max(r["seconds"] for r in rs), 4),
                        "mean_ari": round(statistics.fmean(r["ari"] for r in rs), 4),
                        "k_found": [r["k_found"] for r in rs],
                    }
                )
    at_100 = [r["seconds"] for r in records if r["n"] == 100]
    vers = versions()
    for mod in ("scipy", "clarabel", "scs"):
        try:
            vers[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - version reporting only
            pass
    result = {
        "benchmark": "sdp",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "nproc_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "versions": vers,
        "config": {
            "k": args.k,
            "within": args.within,
            "between": args.between,
            "noise": args.noise,
            "repeats": args.repeats,
            "solver": args.solver,
            "clarabel_max_n_for_auto": CLARABEL_MAX_N,
            "seed": args.seed,
            "penalty_rule": "4 x mean |off-diagonal U| (auto mode)",
            "timing": "wall time of one group_tasks call: cvxpy build + solve + rounding",
        },
        "target": {
            "max_seconds_at_n100": TARGET_SECONDS_AT_100,
            "met": (max(at_100) <= TARGET_SECONDS_AT_100) if at_100 else None,
        },
        "summary": summary,
        "runs": records,
    }
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
