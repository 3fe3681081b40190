"""Throughput and memory of stage 2: projected per-sample policy gradients.

For each policy variant and chunk size, a fresh process (so that peak RSS belongs to that one
configuration) builds the policy and N = n_tasks x per_task random transitions, then times

* ``projected_grads`` over all N rows (the stage-2 cost; P generated beforehand and cached,
  or regenerated per chunk with ``--no-cache``),
* the per-sample gradients alone (vmap(grad), no projection),
* one plain batched forward + backward of ``log_prob(x, a).sum()`` on the same N rows,

and reports transitions/s, the ratio to the plain forward+backward, and peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``).

Variants: ``default`` is the CartPole-suite policy ``ActorCritic(4 + 10, Discrete(2),
hidden=(64, 64, 64))`` (p = 9,410); ``wide`` is METHOD.md's reference
``ActorCritic(18, Discrete(4), hidden=(256, 256, 256))`` (p = 137,476).

    .venv/bin/python benchmarks/bench_features.py            # writes benchmarks/results/features.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

VARIANTS: dict[str, dict[str, Any]] = {
    "default": {"obs_dim": 4, "n_actions": 2, "hidden": (64, 64, 64), "input_from_tasks": True},
    "wide": {"obs_dim": 18, "n_actions": 4, "hidden": (256, 256, 256), "input_from_tasks": False},
}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _measure(cfg: dict[str, Any]) -> dict[str, Any]:
    """One configuration, run in its own process."""
    import gymnasium as gym
    import torch

    from policygradex.estimate import features
    from policygradex.estimate.projection import DEFAULT_CACHE_BYTES, GaussianProjector
    from policygradex.rl.networks import ActorCritic

    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    var = VARIANTS[cfg["variant"]]
    n_tasks, per_task = cfg["n_tasks"], cfg["per_task"]
    in_dim = var["obs_dim"] + (n_tasks if var["input_from_tasks"] else 0)
    actor = ActorCritic(in_dim, gym.spaces.Discrete(var["n_actions"]), hidden=var["hidden"]).actor
    n = n_tasks * per_task
    x = torch.randn(n, in_dim)
    if var["input_from_tasks"]:
        x[:, var["obs_dim"] :] = torch.nn.functional.one_hot(torch.arange(n) // per_task, n_tasks).float()
    a = torch.randint(0, var["n_actions"], (n,))
    p = features.flat_params(actor).numel()
    proj = GaussianProjector(p, d=cfg["d"], seed=0, cache_bytes=0 if cfg["no_cache"] else DEFAULT_CACHE_BYTES)
    rss_setup = _rss_mb()

    # warm-up: vmap tracing, allocator, and (when cached) generating P once
    t0 = time.perf_counter()
    proj.project(torch.zeros(1, p))
    t_generate = time.perf_counter() - t0
    features.projected_grads(actor, x[:64], a[:64], proj, chunk_size=cfg["chunk_size"])

    t0 = time.perf_counter()
    g = features.projected_grads(actor, x, a, proj, chunk_size=cfg["chunk_size"])
    t_proj = time.perf_counter() - t0
    assert g.shape == (n, cfg["d"]) and torch.isfinite(g).all()
    del g

    t0 = time.perf_counter()
    features._for_each_chunk(actor, x, a, cfg["chunk_size"], lambda start, stop, flat: None)
    t_grads = time.perf_counter() - t0

    fb = []
    for _ in range(5):
        actor.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        actor.log_prob(x, a).sum().backward()
        fb.append(time.perf_counter() - t0)
    t_fb = statistics.median(fb)

    flops = 2.0 * n * p * cfg["d"]
    return {
        **cfg,
        "p": p,
        "in_dim": in_dim,
        "n": n,
        "seconds": round(t_proj, 3),
        "transitions_per_s": round(n / t_proj, 1),
        "per_sample_grads_seconds": round(t_grads, 3),
        "projection_seconds_est": round(t_proj - t_grads, 3),
        "projection_gflops_per_s_est": round(flops / max(t_proj - t_grads, 1e-9) / 1e9, 1),
        "generate_P_seconds": round(t_generate, 3),
        "batched_fwd_bwd_seconds": round(t_fb, 4),
        "ratio_to_fwd_bwd": round(t_proj / t_fb, 1),
        "rss_after_setup_mb": round(rss_setup, 1),
        "peak_rss_mb": round(_rss_mb(), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", default="default,wide", help="comma-separated subset of: " + ", ".join(VARIANTS))
    ap.add_argument("--n-tasks", type=int, default=10, help="tasks (default policy: one-hot of this size in the input)")
    ap.add_argument("--per-task", type=int, default=2048, help="transitions per task")
    ap.add_argument("--d", type=int, default=400, help="projection dimension")
    ap.add_argument("--chunk-sizes", default="128,256,512,1024,2048", help="chunk sizes for the default policy")
    ap.add_argument("--wide-chunk-sizes", default="256,512,1024", help="chunk sizes for the wide policy")
    ap.add_argument("--no-cache-chunk", type=int, default=512, help="also run each variant with P regenerated per chunk at this chunk size (0: skip)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "features.json"))
    args = ap.parse_args()

    runs: list[dict[str, Any]] = []
    ctx = mp.get_context("spawn")
    for variant in args.variants.split(","):
        if variant not in VARIANTS:
            ap.error(f"--variants: unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
        sizes = args.chunk_sizes if variant == "default" else args.wide_chunk_sizes
        configs = [(int(c), False) for c in sizes.split(",")]
        if args.no_cache_chunk:
            configs.append((args.no_cache_chunk, True))
        for chunk, no_cache in configs:
            cfg = {
                "variant": variant,
                "n_tasks": args.n_tasks,
                "per_task": args.per_task,
                "d": args.d,
                "chunk_size": chunk,
                "no_cache": no_cache,
                "threads": args.threads,
            }
            with ctx.Pool(1) as pool:
                res = pool.apply(_measure, (cfg,))
            runs.append(res)
            print(
                f"{variant:8s} p={res['p']:7d} chunk={chunk:5d} cache={'no ' if no_cache else 'yes'} "
                f"{res['transitions_per_s']:9.1f} transitions/s  grads-only {res['per_sample_grads_seconds']:6.2f}s  "
                f"fwd+bwd {res['batched_fwd_bwd_seconds'] * 1e3:7.1f} ms  ratio {res['ratio_to_fwd_bwd']:7.1f}x  "
                f"peak RSS {res['peak_rss_mb']:7.1f} MB",
                flush=True,
            )

    from policygradex.artifacts import versions, write_json

    best = {}
    for variant in {r["variant"] for r in runs}:
        cached = [r for r in runs if r["variant"] == variant and not r["no_cache"]]
        if cached:
            top = max(cached, key=lambda r: r["transitions_per_s"])
            best[variant] = {"chunk_size": top["chunk_size"], "transitions_per_s": top["transitions_per_s"], "peak_rss_mb": top["peak_rss_mb"]}
    write_json(
        args.out,
        {
            "benchmark": "projected per-sample policy gradients (stage 2)",
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "nproc": os.cpu_count(),
            "versions": versions(),
            "targets": {"transitions_per_s_min": 1500, "peak_rss_mb_max": 2048},
            "best": best,
            "runs": runs,
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
