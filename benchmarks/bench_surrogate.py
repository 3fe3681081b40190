"""Benchmark: batched surrogate fits (policygradex) vs one scikit-learn fit per subset.

Synthetic data shaped like projected policy-gradient features (stage 2 of METHOD.md):

* ``G``: per task, Gaussian rows with a decaying spectrum (variance ~ 1/k along the k-th axis
  of a shared random basis, as projected gradients concentrate their energy in a few
  directions), per-task variation of that spectrum and per-task mean offsets;
* ``y = sign(A)`` from a noisy per-task linear rule, the positive rate of each task drawn in
  [60%, 95%] (critic lag makes advantages one-sided);
* ``w = |A|`` log-normal.

The step size follows the method: ``lam`` is chosen (with ``choose_lambda``) so that the median
over subsets of the RMS margin change ``sqrt(mean_t (g_t^T u)^2)`` - the typical change of
``log pi(a|s)``, the quantity PPO clips at 0.2 - is ``--target-margin`` (0.1 by default).
A second regime with ``lam`` 1000 times smaller shows the ill-conditioned case the prototype
hit (where unpreconditioned CG took 257 iterations).

For each regime the batched solver fits all ``m`` subsets; scikit-learn's
``LogisticRegression(lbfgs, fit_intercept=False, C = 1 / (lam |D_S|))`` fits a sample of the
same subsets (all of them with ``--sklearn-sample 0``), and its total is extrapolated to ``m``.
Both run on one thread, timed alternately ``--repeats`` times (medians reported), so that both
see the same load.  Wall-clock and process CPU times are recorded (the machine may be shared;
CPU time is the steadier of the two).

Usage::

    python benchmarks/bench_surrogate.py            # defaults: m=200, N=20000, n=10, d=400
    python benchmarks/bench_surrogate.py --sklearn-sample 0   # time every sklearn fit
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import sklearn
import threadpoolctl
import torch
from sklearn.linear_model import LogisticRegression

from policygradex.estimate.subsets import default_subset_size, sample_subsets
from policygradex.estimate.surrogate import choose_lambda, fit_subsets


def make_data(n_rows: int, n_tasks: int, dim: int, seed: int, label_noise: float = 0.7) -> tuple[np.ndarray, ...]:
    """Synthetic gradient-like features, labels and weights (see the module docstring)."""
    rng = np.random.default_rng(seed)
    task = np.sort(rng.integers(0, n_tasks, n_rows))
    scale = np.arange(1, dim + 1) ** -0.5  # std along the k-th axis: variance ~ 1/k
    basis, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    task_scale = scale[None, :] * np.exp(0.3 * rng.normal(size=(n_tasks, dim)))
    offsets = 0.5 * scale[None, :] * rng.normal(size=(n_tasks, dim))
    Z = rng.normal(size=(n_rows, dim)) * task_scale[task]
    G = (Z + offsets[task]) @ basis.T
    beta = rng.normal(size=(n_tasks, dim)) * scale[None, :]
    score = (Z * beta[task]).sum(axis=1)
    score /= score.std()
    score += label_noise * rng.normal(size=n_rows)
    positive_rate = rng.uniform(0.60, 0.95, size=n_tasks)
    y = np.empty(n_rows)
    for i in range(n_tasks):
        rows = task == i
        threshold = np.quantile(score[rows], 1.0 - positive_rate[i])
        y[rows] = np.where(score[rows] > threshold, 1.0, -1.0)
    w = rng.lognormal(mean=0.0, sigma=1.0, size=n_rows)
    return G, y, w, task


def time_batched(args_t, members_t, lam: float, repeats: int, tol: float) -> dict:
    walls, cpus, fit = [], [], None
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fit = fit_subsets(*args_t, members_t, lam, tol=tol)
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    assert fit is not None
    return summarize_batched(walls, cpus, fit)


def summarize_batched(walls: list[float], cpus: list[float], fit) -> dict:
    return {
        "fit": fit,
        "wall_s": statistics.median(walls),
        "cpu_s": statistics.median(cpus),
        "wall_s_all": walls,
        "cpu_s_all": cpus,
        "preconditioner": fit.preconditioner,
        "newton_iterations_max": int(fit.iterations.max()),
        "cg_iterations_batched": int(fit.cg_iterations),
        "all_converged": bool(fit.converged.all()),
    }


def time_sklearn(G, y, w, task, members, lam: float, sample: list[int], tol: float, max_iter: int) -> dict:
    walls, cpus, coefs, iters = [], [], {}, []
    for s in sample:
        rows = members[s][task]
        w0, c0 = time.perf_counter(), time.process_time()
        clf = LogisticRegression(C=1.0 / (lam * rows.sum()), fit_intercept=False, tol=tol, max_iter=max_iter)
        clf.fit(G[rows], y[rows], sample_weight=w[rows])
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
        coefs[s] = clf.coef_[0].copy()
        iters.append(int(np.max(clf.n_iter_)))
    return {"coefs": coefs, "wall_s": float(sum(walls)), "cpu_s": float(sum(cpus)), "n_iter": iters}


def time_sklearn_repeated(G, y, w, task, members, lam, sample, tol, max_iter, repeats: int) -> dict:
    """``repeats`` timings of the sample; the median total (the machine may be shared)."""
    runs = [time_sklearn(G, y, w, task, members, lam, sample, tol, max_iter) for _ in range(repeats)]
    out = dict(runs[-1])
    out["wall_s"] = statistics.median(r["wall_s"] for r in runs)
    out["cpu_s"] = statistics.median(r["cpu_s"] for r in runs)
    out["wall_s_all"] = [r["wall_s"] for r in runs]
    return out


def rel_diff(u: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(u - ref) / np.linalg.norm(ref))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-rows", type=int, default=20_000)
    parser.add_argument("--n-tasks", type=int, default=10)
    parser.add_argument("--dim", type=int, default=400)
    parser.add_argument("--subsets", type=int, default=200)
    parser.add_argument("--subset-size", type=int, default=None, help="default: default_subset_size(n)")
    parser.add_argument("--target-margin", type=float, default=0.1, help="median RMS of g^T u that sets lam")
    parser.add_argument("--small-lam-factor", type=float, default=1e-3, help="second regime: lam times this")
    parser.add_argument("--sklearn-sample", type=int, default=24, help="sklearn fits timed per regime; 0 = all")
    parser.add_argument("--sklearn-tol", type=float, default=1e-6)
    parser.add_argument("--tol", type=float, default=1e-6, help="policygradex relative gradient tolerance")
    parser.add_argument("--loose-tol", type=float, default=1e-4, help="second batched run, for matched accuracy")
    parser.add_argument(
        "--repeats", type=int, default=5,
        help="repeats of the batched fit and of the sklearn sample, alternated (medians reported)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "surrogate.json")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    threadpoolctl.threadpool_limits(args.threads)

    G, y, w, task = make_data(args.n_rows, args.n_tasks, args.dim, args.seed)
    size = args.subset_size or default_subset_size(args.n_tasks)
    members = sample_subsets(args.n_tasks, size, min_pair_coverage=3, m=args.subsets, seed=args.seed)
    m = members.shape[0]
    args_t = (torch.tensor(G), torch.tensor(y), torch.tensor(w), torch.tensor(task))
    members_t = torch.tensor(members)
    pos = [float((y[task == i] > 0).mean()) for i in range(args.n_tasks)]
    print(f"data: N={args.n_rows} n={args.n_tasks} d={args.dim} m={m} size={size}; "
          f"positives per task {min(pos):.2f}..{max(pos):.2f}", flush=True)

    # lam for the trust-region regime: median RMS margin change = target (gram = G^T G / N)
    gram = args_t[0].T @ args_t[0] / args.n_rows
    cl_walls, cl_cpus = [], []
    for _ in range(max(1, min(3, args.repeats))):
        w0, c0 = time.perf_counter(), time.process_time()
        lam, _, rms = choose_lambda(
            *args_t, members_t, None, gram, 1.0, target_delta=args.target_margin, tol=args.tol
        )
        cl_walls.append(time.perf_counter() - w0)
        cl_cpus.append(time.process_time() - c0)
    choose = {"wall_s": statistics.median(cl_walls), "cpu_s": statistics.median(cl_cpus), "wall_s_all": cl_walls,
              "lam": lam, "median_rms_margin": float(np.median(rms.numpy()))}
    print(f"choose_lambda: lam={lam:.4g} (median RMS margin {choose['median_rms_margin']:.4f}) "
          f"in {choose['wall_s']:.2f} s wall", flush=True)

    if args.sklearn_sample <= 0 or args.sklearn_sample >= m:
        sample = list(range(m))
    else:
        sample = sorted({int(round(k)) for k in np.linspace(0, m - 1, args.sklearn_sample)})

    regimes = {}
    for name, lam_r in [("trust_region", lam), ("small_lam", lam * args.small_lam_factor)]:
        # batched fit and the sklearn sample timed alternately, so that both see the same load
        walls, cpus, sk_runs, fit = [], [], [], None
        for _ in range(args.repeats):
            w0, c0 = time.perf_counter(), time.process_time()
            fit = fit_subsets(*args_t, members_t, lam_r, tol=args.tol)
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
            sk_runs.append(time_sklearn(G, y, w, task, members, lam_r, sample, args.sklearn_tol, 100_000))
        batched = summarize_batched(walls, cpus, fit)
        sk = dict(sk_runs[-1])
        sk["wall_s"] = statistics.median(r["wall_s"] for r in sk_runs)
        sk["cpu_s"] = statistics.median(r["cpu_s"] for r in sk_runs)
        sk["wall_s_all"] = [r["wall_s"] for r in sk_runs]
        fit = batched.pop("fit")
        u = fit.u.numpy()
        # high-accuracy reference (float64 data products, tol 1e-10) to measure every solver's error
        ref = fit_subsets(*args_t, members_t, lam_r, tol=1e-10, max_iter=100).u.numpy()
        batched["max_rel_error_vs_reference"] = max(rel_diff(u[s], ref[s]) for s in range(m))
        loose = time_batched(args_t, members_t, lam_r, args.repeats, args.loose_tol)
        u_loose = loose.pop("fit").u.numpy()
        loose["tol"] = args.loose_tol
        loose["max_rel_error_vs_reference"] = max(rel_diff(u_loose[s], ref[s]) for s in range(m))
        sk_default = time_sklearn_repeated(
            G, y, w, task, members, lam_r, sample, 1e-4, 100_000, max(1, min(3, args.repeats))
        )
        diffs = [rel_diff(u[s], sk["coefs"][s]) for s in sample]
        diffs_default = [rel_diff(u[s], sk_default["coefs"][s]) for s in sample]
        scale = m / len(sample)
        sk_wall, sk_cpu = sk["wall_s"] * scale, sk["cpu_s"] * scale
        skd_wall, skd_cpu = sk_default["wall_s"] * scale, sk_default["cpu_s"] * scale
        rms_margin = (fit.u @ gram * fit.u).sum(1).sqrt()
        regimes[name] = {
            "lam": lam_r,
            "median_rms_margin": float(rms_margin.median()),
            "batched": batched,
            "sklearn": {
                "tol": args.sklearn_tol,
                "fits_timed": len(sample),
                "extrapolated": len(sample) < m,
                "repeats": len(sk_runs),
                "wall_s_timed": sk["wall_s"],
                "cpu_s_timed": sk["cpu_s"],
                "wall_s_timed_all": sk["wall_s_all"],
                "wall_s_for_all_m": sk_wall,
                "cpu_s_for_all_m": sk_cpu,
                "lbfgs_iterations_median": statistics.median(sk["n_iter"]),
                "lbfgs_iterations_max": max(sk["n_iter"]),
                "max_rel_diff_to_batched": max(diffs),
                "median_rel_diff_to_batched": statistics.median(diffs),
                "max_rel_error_vs_reference": max(rel_diff(sk["coefs"][s], ref[s]) for s in sample),
            },
            "sklearn_default_tol": {
                "tol": 1e-4,
                "wall_s_for_all_m": skd_wall,
                "cpu_s_for_all_m": skd_cpu,
                "lbfgs_iterations_median": statistics.median(sk_default["n_iter"]),
                "max_rel_diff_to_batched": max(diffs_default),
                "max_rel_error_vs_reference": max(rel_diff(sk_default["coefs"][s], ref[s]) for s in sample),
            },
            "batched_loose_tol": loose,
            # same accuracy or better than sklearn at tol=sklearn_tol, on the timed subsets
            "speedup_wall_at_matched_accuracy": (
                sk_wall / loose["wall_s"]
                if loose["max_rel_error_vs_reference"] <= max(rel_diff(sk["coefs"][s], ref[s]) for s in sample)
                else None
            ),
            "speedup_wall": sk_wall / batched["wall_s"],
            "speedup_cpu": sk_cpu / batched["cpu_s"],
            "speedup_wall_vs_sklearn_default_tol": skd_wall / batched["wall_s"],
            "speedup_cpu_vs_sklearn_default_tol": skd_cpu / batched["cpu_s"],
        }
        r = regimes[name]
        print(
            f"{name}: lam={lam_r:.4g} batched {batched['wall_s']:.2f} s wall / {batched['cpu_s']:.2f} s cpu "
            f"(Newton <= {batched['newton_iterations_max']}, CG {batched['cg_iterations_batched']}); "
            f"sklearn tol={args.sklearn_tol:g} {sk_wall:.1f} s wall / {sk_cpu:.1f} s cpu for {m} "
            f"({'extrapolated from ' + str(len(sample)) if len(sample) < m else 'all timed'}); "
            f"speedup {r['speedup_wall']:.1f}x wall, {r['speedup_cpu']:.1f}x cpu "
            f"(vs sklearn tol=1e-4: {r['speedup_wall_vs_sklearn_default_tol']:.1f}x wall); "
            f"max rel diff {max(diffs):.2e}; batched tol={args.loose_tol:g}: {loose['wall_s']:.2f} s, error "
            f"{loose['max_rel_error_vs_reference']:.1e} vs sklearn's {r['sklearn']['max_rel_error_vs_reference']:.1e}",
            flush=True,
        )

    result = {
        "benchmark": "surrogate",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "threads": args.threads,
        "load_average_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "sklearn": sklearn.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "config": {
            "n_rows": args.n_rows, "n_tasks": args.n_tasks, "dim": args.dim, "subsets": m,
            "subset_size": size, "rows_per_subset_mean": float(members[:, task].sum(axis=1).mean()),
            "positive_rate_per_task": pos, "target_rms_margin": args.target_margin, "tol": args.tol,
            "seed": args.seed,
        },
        "choose_lambda": choose,
        "regimes": regimes,
        "notes": (
            "speedup = (sklearn time for all m subsets, median over repeats of the timed sample, extrapolated "
            "linearly when fits_timed < m) / (batched time for all m subsets, median of repeats); the batched "
            "fit and the sklearn sample are timed alternately, one thread each. "
            "Relative differences compare the batched solution with sklearn's on the timed subsets; "
            "'reference' is the batched solver run to tol=1e-10 (float64 data products)."
        ),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
