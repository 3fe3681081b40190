"""Dense vs structured projection of per-sample policy gradients (issue 9; docs/projector.md).

Parts (each updates its own section of benchmarks/results/projector.json):

  python benchmarks/bench_projector.py speed      # time per 2,048 transitions, ratio to one batched fwd+bwd, peak RSS
  python benchmarks/bench_projector.py big        # a 4-layer 1024-wide policy (p = 2.1M): structured runs, dense memory
  python benchmarks/bench_projector.py nmi        # groups of `policygradex run` with --projector dense vs structured
  python benchmarks/bench_projector.py accuracy   # inner products and norms vs exact vmap gradients (needs nmi's runs)
  python benchmarks/bench_projector.py all        # the four, in the order speed, big, nmi, accuracy

Policies: ``default`` is the CartPole-suite actor ``ActorCritic(4 + 10, Discrete(2), hidden=(64, 64,
64))`` (p = 9,410, the project's default network); ``wide`` is METHOD.md's reference
``ActorCritic(18, Discrete(4), hidden=(256, 256, 256))`` (p = 137,476), the network of the issue's
"1.4-1.7 s dense vs 9-10 ms fwd+bwd".  Both at PPO's initialisation, on random inputs (speed does
not depend on the weights); the accuracy part also uses the trained theta* and collected data of
the nmi part's runs.  d = 400, 1 torch thread, float32 for timing.

Timing is interleaved in one process (fwd+bwd, structured, dense, repeated; medians and the median
of per-repeat ratios), because the machine is shared and its load drifts; peak RSS comes from a
fresh process per method (``ru_maxrss``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, provenance, policygradex, save  # noqa: E402

VARIANTS: dict[str, dict[str, Any]] = {
    "default": {"obs_dim": 4, "n_tasks": 10, "n_actions": 2, "hidden": (64, 64, 64)},
    "wide": {"obs_dim": 18, "n_tasks": 0, "n_actions": 4, "hidden": (256, 256, 256)},
    "big": {"obs_dim": 18, "n_tasks": 0, "n_actions": 4, "hidden": (1024, 1024, 1024)},
}
D = 400
N = 2048


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _setup(variant: str, n: int = N, seed: int = 0):
    import gymnasium as gym
    import torch

    from policygradex.rl.networks import ActorCritic

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    var = VARIANTS[variant]
    in_dim = var["obs_dim"] + var["n_tasks"]
    actor = ActorCritic(in_dim, gym.spaces.Discrete(var["n_actions"]), hidden=var["hidden"]).actor
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n, in_dim, generator=gen)
    if var["n_tasks"]:
        x[:, var["obs_dim"] :] = torch.nn.functional.one_hot(torch.arange(n) * var["n_tasks"] // n, var["n_tasks"]).float()
    a = torch.randint(0, var["n_actions"], (n,), generator=gen)
    return actor, x, a


def _fwd_bwd(actor, x, a) -> None:
    actor.zero_grad(set_to_none=True)
    actor.log_prob(x, a).sum().backward()
    actor.zero_grad(set_to_none=True)


# ---------------------------------------------------------------------------------------------
# speed


def _time_variant(variant: str, repeats: int, dense_repeats: int) -> dict[str, Any]:
    """Interleaved timings for one policy, in its own process."""
    import torch

    from policygradex.estimate.features import flat_params, projected_grads
    from policygradex.estimate.projection import GaussianProjector
    from policygradex.estimate.structured import StructuredProjector

    actor, x, a = _setup(variant)
    p = flat_params(actor).numel()
    StructuredProjector.fit(actor, x[:64], a[:64], d=D, seed=1)  # warm-up: imports, vmap, hooks
    fits = []
    for _ in range(3):
        t0 = time.perf_counter()
        sp = StructuredProjector.fit(actor, x, a, d=D, seed=0)
        fits.append(time.perf_counter() - t0)
    dp = GaussianProjector(p, D, 0)
    dp.project(torch.zeros(1, p))  # P generated once and cached, as in the pipeline
    for fn in (lambda: _fwd_bwd(actor, x, a), lambda: projected_grads(actor, x, a, sp, 2048),
               lambda: projected_grads(actor, x[:512], a[:512], dp, 512)):
        fn()
    t = {"fwd_bwd": [], "structured": [], "structured_chunk512": [], "dense": []}
    for r in range(repeats):
        for name, fn in (("fwd_bwd", lambda: _fwd_bwd(actor, x, a)),
                         ("structured", lambda: projected_grads(actor, x, a, sp, 2048)),
                         ("structured_chunk512", lambda: projected_grads(actor, x, a, sp, 512)),
                         ("dense", lambda: projected_grads(actor, x, a, dp, 512))):
            if name == "dense" and r >= dense_repeats:
                continue
            t0 = time.perf_counter()
            fn()
            t[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in t.items()}
    k = min(len(t["dense"]), len(t["structured"]))
    ratio_fb = statistics.median(s / f for s, f in zip(t["structured"], t["fwd_bwd"]))
    ratio_dense = statistics.median(dd / s for dd, s in zip(t["dense"][:k], t["structured"][:k]))
    return {
        "variant": variant, "p": p, "n": N, "d": D, "threads": 1,
        "split": {"khatri_rao": {layer.module: layer.d for layer in sp.kr}, "dense": sp.d_dense, "p_dense": sp.p_dense,
                  "dense_kind": sp.parts()[-1]["kind"], "energy_fraction": sp.energy["fraction"]},
        "seconds_median": {k_: round(v, 5) for k_, v in med.items()},
        "seconds_all": {k_: [round(x_, 5) for x_ in v] for k_, v in t.items()},
        "fit_seconds_median": round(statistics.median(fits), 4),
        "structured_over_fwd_bwd": round(ratio_fb, 2),
        "structured_chunk512_over_fwd_bwd": round(statistics.median(s / f for s, f in zip(t["structured_chunk512"], t["fwd_bwd"])), 2),
        "dense_over_fwd_bwd": round(med["dense"] / med["fwd_bwd"], 1),
        "dense_over_structured": round(ratio_dense, 1),
    }


def _peak_variant(variant: str, method: str) -> dict[str, Any]:
    """Peak RSS of one method on 2,048 transitions, in a fresh process."""
    import torch

    from policygradex.estimate.features import flat_params, projected_grads
    from policygradex.estimate.projection import GaussianProjector
    from policygradex.estimate.structured import StructuredProjector

    actor, x, a = _setup(variant)
    p = flat_params(actor).numel()
    if method == "structured":
        proj = StructuredProjector.fit(actor, x, a, d=D, seed=0)
    elif method == "dense":
        proj = GaussianProjector(p, D, 0)
        proj.project(torch.zeros(1, p))
    setup = _rss_mb()
    if method == "fwd_bwd":
        _fwd_bwd(actor, x, a)
    else:
        projected_grads(actor, x, a, proj, 2048 if method == "structured" else 512)
    peak = _rss_mb()
    return {"method": method, "rss_after_setup_mb": round(setup, 1), "peak_rss_mb": round(peak, 1), "increment_mb": round(peak - setup, 1)}


def _in_process(fn, *args):
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def speed(variants: list[str], repeats: int, dense_repeats: int) -> dict[str, Any]:
    out = {}
    for v in variants:
        res = _in_process(_time_variant, v, repeats, dense_repeats)
        res["peak_memory"] = {m: _in_process(_peak_variant, v, m) for m in ("fwd_bwd", "structured", "dense")}
        out[v] = res
        print(json.dumps({k: res[k] for k in ("variant", "p", "seconds_median", "structured_over_fwd_bwd", "dense_over_structured")}), flush=True)
    return {"targets": {"structured_over_fwd_bwd_max": 3.0, "dense_over_structured_min": 20.0}, "variants": out}


# ---------------------------------------------------------------------------------------------
# a network too big for the dense route


def _big_structured() -> dict[str, Any]:
    from policygradex.estimate.features import flat_params, projected_grads
    from policygradex.estimate.structured import StructuredProjector

    actor, x, a = _setup("big")
    p = flat_params(actor).numel()
    setup = _rss_mb()
    t0 = time.perf_counter()
    sp = StructuredProjector.fit(actor, x, a, d=D, seed=0)
    t_fit = time.perf_counter() - t0
    projected_grads(actor, x[:64], a[:64], sp, 2048)
    ts = []
    for _ in range(3):
        t0 = time.perf_counter()
        g = projected_grads(actor, x, a, sp, 2048)
        ts.append(time.perf_counter() - t0)
    fb = []
    for _ in range(3):
        t0 = time.perf_counter()
        _fwd_bwd(actor, x, a)
        fb.append(time.perf_counter() - t0)
    assert g.shape == (N, D)
    return {"p": p, "n": N, "fit_seconds": round(t_fit, 3), "seconds_median": round(statistics.median(ts), 4),
            "fwd_bwd_seconds_median": round(statistics.median(fb), 4),
            "ratio_to_fwd_bwd": round(statistics.median(ts) / statistics.median(fb), 2),
            "split": {"khatri_rao": {layer.module: layer.d for layer in sp.kr}, "dense": sp.d_dense, "p_dense": sp.p_dense},
            "rss_after_setup_mb": round(setup, 1), "peak_rss_mb": round(_rss_mb(), 1)}


def _big_dense(rows: int, chunk: int) -> dict[str, Any]:
    import torch

    from policygradex.estimate.features import flat_params, projected_grads
    from policygradex.estimate.projection import GaussianProjector

    actor, x, a = _setup("big", n=rows)
    p = flat_params(actor).numel()
    proj = GaussianProjector(p, D, 0)  # P (p x 400 x 4 bytes) is over the 256 MB cache: regenerated per chunk
    setup = _rss_mb()
    t0 = time.perf_counter()
    g = projected_grads(actor, x, a, proj, chunk)
    dt = time.perf_counter() - t0
    assert g.shape == (rows, D) and torch.isfinite(g).all()
    return {"p": p, "rows": rows, "chunk_size": chunk, "seconds": round(dt, 2), "seconds_per_2048_extrapolated": round(dt * N / rows, 1),
            "P_bytes": p * D * 4, "P_cached": proj._cache is not None,
            "rss_after_setup_mb": round(setup, 1), "peak_rss_mb": round(_rss_mb(), 1)}


def big(dense_rows: int, dense_chunk: int) -> dict[str, Any]:
    s = _in_process(_big_structured)
    print("structured", s, flush=True)
    dn = _in_process(_big_dense, dense_rows, dense_chunk)
    print("dense", dn, flush=True)
    p = s["p"]
    return {
        "policy": "ActorCritic(18, Discrete(4), hidden=(1024, 1024, 1024)).actor (4 linear layers)",
        "structured": s,
        "dense_measured": dn,
        "dense_memory_estimate_default_chunk": {
            "chunk_size": 512,
            "gradient_buffers_gb": round(2 * 512 * p * 4 / 2**30, 2),
            "P_gb_if_cached": round(p * D * 4 / 2**30, 2),
            "note": "the dense route holds chunk x p per-sample gradients twice (vmap output and the flat buffer); "
                    "P is regenerated per chunk above 256 MB",
        },
    }


# ---------------------------------------------------------------------------------------------
# NMI of the groups of real runs


def _cli(*args: str) -> float:
    return policygradex(*args)[0]


def _groups(run_dir: Path) -> dict[str, Any]:
    g = json.loads((run_dir / "groups.json").read_text())
    feat = json.loads((run_dir / "features.manifest.json").read_text()) if (run_dir / "features.manifest.json").exists() else {}
    spec = json.loads((run_dir / "features" / "manifest.json").read_text())["projector"]
    out = {"labels": g["labels"], "k": g["k"], "null_p": round(g["null_p"], 4), "delta_median": g["delta"]["median"],
           "lam": g["delta"]["lam"], "stability_mean_ari": g["stability"]["mean_ari"],
           "approx_error_median": g["approx_error_at_delta"]["median"], "projector_kind": spec["kind"],
           "features_stage_seconds": feat.get("extra", {}).get("seconds")}
    if spec["kind"] == "structured":
        out["split"] = {**{layer["module"]: layer["d"] for layer in spec["layers"] if layer["role"] == "khatri_rao"}, "dense": spec["d_dense"]}
        out["energy_fraction"] = spec["energy"]["fraction"]
        out["fallback"] = spec["fallback"]
    if "nmi_vs_true_partition" in g:
        out["nmi_vs_truth"] = g["nmi_vs_true_partition"]
    return out


def _compare(name: str, run_dir: Path, base_args: list[str], projector_seed: int | None = None) -> dict[str, Any]:
    """`policygradex run` with --projector dense, then structured, in the same directory (training and
    collection are shared: their stage keys do not involve the projector)."""
    from sklearn.metrics import normalized_mutual_info_score

    extra: list[str] = []
    if projector_seed is not None:
        cfg = run_dir.parent / f"{run_dir.name}_pseed{projector_seed}.toml"
        cfg.write_text(f"[estimate]\nprojector_seed = {projector_seed}\n")
        extra = ["--config", str(cfg)]
    row: dict[str, Any] = {"name": name, "args": base_args + (["projector_seed", str(projector_seed)] if projector_seed is not None else [])}
    for kind in ("dense", "structured"):
        wall = _cli("run", *base_args, *extra, "--replicates", "1", "--theta-window", "1", "--projector", kind, "--out", str(run_dir))
        row[kind] = {**_groups(run_dir), "wall_s_incremental": round(wall, 1)}
    row["nmi_structured_vs_dense"] = float(normalized_mutual_info_score(row["dense"]["labels"], row["structured"]["labels"]))
    print(json.dumps({k: row[k] for k in ("name", "nmi_structured_vs_dense")} | {
        k: {kk: row[k].get(kk) for kk in ("k", "null_p", "nmi_vs_truth", "features_stage_seconds")} for k in ("dense", "structured")}), flush=True)
    return row


def nmi(workdir: Path, planted_small_seeds: int, planted_seeds: int, lunar_steps: int | None) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    small = ["--suite", "cartpole-planted", "--steps", "20000", "--transitions", "4096", "--null-permutations", "50"]
    for ps in range(planted_small_seeds):
        rows.append(_compare(f"cartpole-planted (tests' config) projector seed {ps}", workdir / "planted_small", small, ps))
    for k in range(planted_seeds):
        args = ["--suite", "cartpole-planted", "--suite-seed", str(k), "--seed", str(k), "--steps", "60000"]
        rows.append(_compare(f"cartpole-planted suite seed {k}, 60k steps (bench_pipeline planted)", workdir / f"planted_{k}", args))
    rows.append(_compare("cartpole (default options, 200k steps)", workdir / "cartpole", ["--suite", "cartpole"]))
    lunar = ["--suite", "lunarlander"] + (["--steps", str(lunar_steps)] if lunar_steps else [])
    rows.append(_compare(f"lunarlander ({lunar_steps or 200_000} steps)", workdir / "lunarlander", lunar))
    planted = [r for r in rows if "nmi_vs_truth" in r["dense"]]
    return {
        "workdir": str(workdir),
        "runs": rows,
        "summary": {
            "planted_nmi_vs_truth_dense": [r["dense"]["nmi_vs_truth"] for r in planted],
            "planted_nmi_vs_truth_structured": [r["structured"]["nmi_vs_truth"] for r in planted],
            "nmi_structured_vs_dense": {r["name"]: round(r["nmi_structured_vs_dense"], 3) for r in rows},
        },
    }


# ---------------------------------------------------------------------------------------------
# accuracy: inner products and norms against exact per-sample gradients


def _pair_errors(G, Gp):
    import torch

    n = G.shape[0]
    iu = torch.triu_indices(n, n, 1)
    nrm = G.norm(dim=1)
    scaled = ((Gp @ Gp.T - G @ G.T) / (nrm[:, None] * nrm[None, :]))[iu[0], iu[1]].abs()
    norm = ((Gp.pow(2).sum(1) / nrm.pow(2)) - 1).abs()
    return scaled, norm


def _summ(t) -> dict[str, float]:
    return {"median": round(float(t.median()), 4), "p90": round(float(t.quantile(0.9)), 4)}


def _accuracy_case(name: str, actor, x, a, sample, seeds: int, task=None, adv=None) -> dict[str, Any]:
    """Pairs among ``sample`` rows; the structured projector is fitted on all of ``(x, a)``."""
    import torch

    from policygradex.estimate.features import exact_grads, flat_params
    from policygradex.estimate.projection import GaussianProjector
    from policygradex.estimate.structured import StructuredProjector

    p = flat_params(actor).numel()
    G = exact_grads(actor, x[sample], a[sample], chunk_size=64).double()
    task_means = None
    if task is not None:
        # advantage-weighted per-task mean gradients (what the surrogate aggregates), on up to 512 rows per task
        ms = []
        for i in range(int(task.max()) + 1):
            rows = torch.nonzero(task == i).squeeze(1)
            rows = rows[torch.linspace(0, len(rows) - 1, min(512, len(rows))).round().long()]
            Gi = exact_grads(actor, x[rows], a[rows], chunk_size=128).double()
            ai = adv[rows].double() / adv[rows].abs().mean().clamp_min(1e-12)
            ms.append((ai[:, None] * Gi).mean(0))
        task_means = torch.stack(ms)
    res: dict[str, Any] = {"name": name, "p": p, "pairs_rows": len(sample), "seeds": seeds}
    for kind in ("dense", "structured", "structured_iid"):
        sc, nr, tc = [], [], []
        for s in range(seeds):
            if kind == "dense":
                proj = GaussianProjector(p, D, s, dtype=torch.float64)
            else:
                proj = StructuredProjector.fit(actor, x, a, d=D, seed=s, dtype=torch.float64, orthogonal=(kind == "structured"))
            e_s, e_n = _pair_errors(G, proj.project(G))
            sc.append(e_s)
            nr.append(e_n)
            if task_means is not None:
                Mp = proj.project(task_means)
                c0 = task_means / task_means.norm(dim=1, keepdim=True)
                c1 = Mp / Mp.norm(dim=1, keepdim=True)
                n_t = task_means.shape[0]
                iu = torch.triu_indices(n_t, n_t, 1)
                tc.append(((c1 @ c1.T) - (c0 @ c0.T))[iu[0], iu[1]].abs())
        res[kind] = {"scaled_inner_product_error": _summ(torch.cat(sc)), "norm_error": _summ(torch.cat(nr))}
        if tc:
            res[kind]["task_cosine_error"] = _summ(torch.cat(tc))
        if kind != "dense":
            res[kind]["split"] = {**{layer.module: layer.d for layer in proj.kr}, "dense": proj.d_dense}
    for kind in ("structured", "structured_iid"):
        res[f"{kind}_over_dense"] = {
            "median": round(res[kind]["scaled_inner_product_error"]["median"] / res["dense"]["scaled_inner_product_error"]["median"], 2),
            "p90": round(res[kind]["scaled_inner_product_error"]["p90"] / res["dense"]["scaled_inner_product_error"]["p90"], 2),
        }
    print(json.dumps({"name": name, **{k: res[k] for k in ("structured_over_dense", "structured_iid_over_dense")},
                      "dense": res["dense"]["scaled_inner_product_error"], "structured": res["structured"]["scaled_inner_product_error"]}), flush=True)
    return res


def _accuracy_all(run_dirs: list[str], rows: int, seeds: int) -> list[dict[str, Any]]:
    import torch

    from policygradex.estimate.collect import load_rollouts
    from policygradex.rl.checkpoint import load_checkpoint

    torch.set_num_threads(1)
    out = []
    for v in ("default", "wide"):
        actor, x, a = _setup(v)
        sample = torch.linspace(0, N - 1, rows).round().long()
        out.append(_accuracy_case(f"{v} policy, PPO init, random inputs", actor, x, a, sample, seeds))
    for rd in run_dirs:
        rd = Path(rd)
        meta = json.loads((rd / "collect" / "meta_policy.json").read_text())
        model, suite, _, _ = load_checkpoint(rd / "train" / "checkpoints" / meta["checkpoint"])
        c = load_rollouts(rd)
        sample = torch.linspace(0, c.x.shape[0] - 1, rows).round().long()
        out.append(_accuracy_case(f"{suite.name} theta* ({meta['checkpoint']}), collected data", model.actor, c.x, c.actions,
                                  sample, seeds, task=c.task, adv=c.adv))
    return out


def accuracy(run_dirs: list[str], rows: int, seeds: int) -> dict[str, Any]:
    cases = _in_process(_accuracy_all, run_dirs, rows, seeds)
    return {
        "definition": "scaled inner-product error |<P^T g_i, P^T g_j> - <g_i, g_j>| / (||g_i|| ||g_j||) over all pairs of "
                      f"{rows} evenly spaced rows, pooled over projector seeds; norm error | ||P^T g||^2 / ||g||^2 - 1 |; "
                      "task cosine error: |cos - cos_exact| between advantage-weighted per-task mean gradients; exact g from vmap, "
                      "float64 projections; structured_iid = the structured projector with i.i.d. instead of orthogonal directions",
        "target": "structured scaled inner-product error within 1.5x of dense",
        "cases": cases,
    }


# ---------------------------------------------------------------------------------------------


def _merge(section: str, data: dict[str, Any]) -> Path:
    path = RESULTS / "projector.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    old.pop("provenance", None)
    old[section] = {"provenance": provenance(), **data}
    old["benchmark"] = "dense vs structured projection of per-sample policy gradients (issue 9)"
    return save("projector", old)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["speed", "big", "nmi", "accuracy", "all"])
    ap.add_argument("--variants", default="default,wide")
    ap.add_argument("--repeats", type=int, default=9, help="interleaved repeats of fwd+bwd and structured")
    ap.add_argument("--dense-repeats", type=int, default=3, help="repeats of the (slow) dense route")
    ap.add_argument("--dense-rows", type=int, default=128, help="big: rows of the dense route's measured run")
    ap.add_argument("--dense-chunk", type=int, default=64, help="big: chunk size of the dense route's measured run")
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "pgx_bench_projector"), help="nmi: run directories")
    ap.add_argument("--planted-small-seeds", type=int, default=5, help="nmi: projector seeds on the tests' planted config")
    ap.add_argument("--planted-seeds", type=int, default=3, help="nmi: suite seeds of the 60k-step planted runs")
    ap.add_argument("--lunar-steps", type=int, default=None, help="nmi: lunarlander training steps (default: the run default)")
    ap.add_argument("--runs", default=None, help="accuracy: comma-separated run dirs (default: nmi's planted_small, cartpole, lunarlander)")
    ap.add_argument("--rows", type=int, default=256, help="accuracy: rows whose pairs are compared")
    ap.add_argument("--seeds", type=int, default=5, help="accuracy: projector seeds")
    args = ap.parse_args()
    parts = ["speed", "big", "nmi", "accuracy"] if args.part == "all" else [args.part]
    wd = Path(args.workdir)
    for part in parts:
        if part == "speed":
            path = _merge("speed", speed(args.variants.split(","), args.repeats, args.dense_repeats))
        elif part == "big":
            path = _merge("big", big(args.dense_rows, args.dense_chunk))
        elif part == "nmi":
            path = _merge("nmi", nmi(wd, args.planted_small_seeds, args.planted_seeds, args.lunar_steps))
        else:
            runs = args.runs.split(",") if args.runs else [str(wd / r) for r in ("planted_small", "cartpole", "lunarlander")]
            path = _merge("accuracy", accuracy([r for r in runs if (Path(r) / "collect").exists()], args.rows, args.seeds))
        print(f"wrote {path} [{part}]", flush=True)


if __name__ == "__main__":
    main()
