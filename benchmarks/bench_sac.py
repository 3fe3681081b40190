"""MT-SAC meta-policy on Meta-World MT10: success rate at a budget that fits a short CPU run.

Trains ``rl.sac`` on ``metaworld-mt10`` (one environment per task, one update of
``batch_per_task x 10`` rows per vector step, 256-256 ReLU networks, the defaults of
``SACConfig`` otherwise), then evaluates the final policy: deterministic actions (tanh of the
mean), ``--episodes`` episodes per task, Meta-World's success rule (``info["success"]`` at any
step).  Records wall and CPU time, training throughput, each checkpoint's per-task training
returns, training success rates and temperatures, and the machine's load average.

Part ``run`` (``--run``): ``policygradex run --suite metaworld-mt10 --algo sac`` at the quick
profile (2,000 SAC steps per task): groups, null p, theta*, signal health, stage times.

Part ``approx`` (``--approx``, needs the run): the first-order approximation error of log pi
along real SAC adaptation paths from the run's theta*.  ``policygradex validate`` fine-tunes
with PPO and does not take SAC meta-policies, so this script does the SAC analogue: fill a
replay buffer with theta*'s own transitions (one 500-step episode per task), continue SAC
(fresh Adam, the run's SACConfig) for ``--approx-updates`` updates on all tasks and on 3 random
5-task subsets (only their rows), snapshot the actor after 1, 2, 4, ... updates, and at every
snapshot and at the points theta* + t (theta_k - theta*) scaled to the target distances
(0.1%, 0.5%, 1%, 5%) compare, on the run's held-out transitions of the path's tasks,
log pi_theta - log pi_theta* with g^T (theta - theta*) (``validate.logprob_change``,
``validate.relative_error``: ||Delta_true - Delta_lin|| / ||Delta_true||).

Usage: python benchmarks/bench_sac.py [--steps-per-task 4000] [--episodes 5] [--seed 0] [--skip-train] [--run] [--approx]
Result: benchmarks/results/sac_mt10.json (a part run alone replaces only its entries)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import resource
import sys
import tempfile
import time

from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import policygradex, save  # noqa: E402

from policygradex.config import NetConfig, SACConfig  # noqa: E402
from policygradex.rl import sac  # noqa: E402
from policygradex.rl.evaluate import evaluate_policy  # noqa: E402
from policygradex.tasks import load_suite  # noqa: E402


RUN_DIR = Path(__file__).resolve().parents[1] / "runs" / "bench_sac_mt10"
TARGETS = (0.001, 0.005, 0.01, 0.05)


def part_run() -> dict:
    if RUN_DIR.exists():
        shutil.rmtree(RUN_DIR)
    load0 = os.getloadavg()
    wall, proc = policygradex("run", "--suite", "metaworld-mt10", "--algo", "sac", "--replicates", "1", "--theta-window", "1", "--out", str(RUN_DIR),
                              check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    from policygradex.stage import stage_seconds

    g = json.loads((RUN_DIR / "groups.json").read_text())
    meta = json.loads((RUN_DIR / "collect" / "meta_policy.json").read_text())
    return {"command": "policygradex run --suite metaworld-mt10 --algo sac (quick profile)", "wall_s": wall,
            "stage_s": stage_seconds(RUN_DIR), "groups": g["groups"], "k": g["k"], "null_p": g["null_p"],
            "signal_collapsed": g["signal_collapsed"], "meta_policy": g["meta_policy"],
            "per_task_return": meta["per_task_return"],
            "signal": {k: {f: v[f] for f in ("adv_scale", "frac_positive", "collapsed")} for k, v in meta["signal"].items()},
            "approx_error_at_surrogate_delta": g["approx_error_at_delta"], "delta": g["delta"],
            "load_average": {"start": load0, "end": os.getloadavg()}}


def part_approx(updates: int) -> dict:
    import copy

    from policygradex.estimate.collect import load_rollouts
    from policygradex.estimate.features import flat_params
    from policygradex.rl.checkpoint import load_checkpoint
    from policygradex.rl.rollout import MultiTaskEnv, policy_input
    from policygradex.validate import logprob_change, relative_error

    meta = json.loads((RUN_DIR / "collect" / "meta_policy.json").read_text())
    model, suite, cfg, _ = load_checkpoint(RUN_DIR / "train" / "checkpoints" / meta["checkpoint"])
    n = suite.n
    # theta*'s own transitions, stored as training stores them (final_obs, truncation not terminal)
    env = MultiTaskEnv(suite, 1, 777)
    obs = env.reset()
    buf = sac.ReplayBuffer(500 * n, obs.shape[1], model.actor.act_dim)
    gen = torch.Generator().manual_seed(777)
    space = suite.action_space
    for _ in range(500):
        a, _ = model.act(policy_input(obs, env.task_ids, n), generator=gen)
        a = np.clip(a.numpy(), space.low, space.high)
        nxt, r, term, trunc, info = env.step(a.astype(space.dtype))
        real = np.array(nxt, dtype=np.float32, copy=True)
        for e in np.flatnonzero(np.logical_or(term, trunc)):
            real[e] = info["final_obs"][e]
        buf.add(obs, a, r, real, term, env.task_ids)
        obs = nxt
    env.close()
    c = load_rollouts(RUN_DIR)
    theta = flat_params(model.actor).double()
    norm = float(theta.norm())
    rng = np.random.default_rng(0)
    subsets = [list(range(n))] + [sorted(rng.choice(n, max(1, min(5, n // 2)), replace=False).tolist()) for _ in range(3)]
    h = sac.target_entropy(cfg, model.actor.act_dim)
    points = []
    t0 = time.perf_counter()
    for si, tasks in enumerate(subsets):
        m = copy.deepcopy(model).train()
        opts = sac.make_optimizers(m, cfg)
        keep = np.isin(buf.task[: buf.size], tasks)
        sub = sac.ReplayBuffer(int(keep.sum()), buf.obs.shape[1], buf.actions.shape[1])
        sub.add(buf.obs[: buf.size][keep], buf.actions[: buf.size][keep], buf.rewards[: buf.size][keep],
                buf.next_obs[: buf.size][keep], buf.terminated[: buf.size][keep], buf.task[: buf.size][keep])
        ugen = torch.Generator().manual_seed(si)
        urng = np.random.default_rng(si)
        path = []
        for k in range(1, updates + 1):
            sac.sac_update(m, opts, sub.sample(cfg.batch_size, urng, n, torch.device("cpu")), cfg, h, ugen)
            if k & (k - 1) == 0 or k == updates:
                path.append((k, flat_params(m.actor).double()))
        rows = c.heldout & torch.isin(c.task, torch.as_tensor(tasks))
        x, acts = c.x[rows], c.actions[rows]
        deltas = [float((p - theta).norm()) / norm for _, p in path]
        cands = [("real", k, p) for k, p in path]
        for target in TARGETS:
            j = next((i for i, d in enumerate(deltas) if d >= target), len(deltas) - 1)
            if deltas[j] > 0:
                cands.append(("scaled", path[j][0], theta + (target / deltas[j]) * (path[j][1] - theta)))
        for kind, k, p in cands:
            d_true, d_lin = logprob_change(model.actor, theta, p, x, acts)
            points.append({"subset": tasks, "kind": kind, "updates": k, "delta": float((p - theta).norm()) / norm,
                           "error": relative_error(d_true, d_lin)})
    table = {}
    for target in TARGETS:
        near = [p["error"] for p in points if target / math.sqrt(2) <= p["delta"] < target * math.sqrt(2) and math.isfinite(p["error"])]
        table[f"{100 * target:g}%"] = {"n": len(near), "median": float(np.median(near)) if near else None,
                                      "max": float(np.max(near)) if near else None}
    return {"theta_star": meta["checkpoint"], "updates_per_path": updates, "paths": len(subsets), "subsets": subsets,
            "buffer_transitions": int(buf.size), "approx_error": table, "points": points, "wall_s": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps-per-task", type=int, default=4000)
    ap.add_argument("--learning-starts-per-task", type=int, default=500)
    ap.add_argument("--batch-per-task", type=int, default=64)
    ap.add_argument("--episodes", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-train", action="store_true", help="skip the MT10 training/evaluation part")
    ap.add_argument("--run", action="store_true", help="the policygradex run part")
    ap.add_argument("--approx", action="store_true", help="the first-order error part (needs the run part's directory)")
    ap.add_argument("--approx-updates", type=int, default=256)
    args = ap.parse_args()
    os.environ.setdefault("POLICYGRADEX_QUIET", "1")
    torch.set_num_threads(1)
    from common import RESULTS

    def merged(update: dict) -> dict:
        """The results file's other parts (read now: another part may have run meanwhile) with ``update``."""
        old = RESULTS / "sac_mt10.json"
        prev = {k: v for k, v in json.loads(old.read_text()).items() if k != "provenance"} if old.exists() else {}
        return {**prev, **update}

    prev: dict = {}
    if args.run:
        prev["run_quick"] = part_run()
        print("run:", prev["run_quick"]["groups"], "null p", prev["run_quick"]["null_p"], f"{prev['run_quick']['wall_s']:.0f} s")
    if args.approx:
        prev["approx_error_sac_paths"] = part_approx(args.approx_updates)
        print("first-order error:", json.dumps(prev["approx_error_sac_paths"]["approx_error"]))
    if args.skip_train:
        save("sac_mt10", merged(prev))
        return
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    suite = load_suite("metaworld-mt10")
    build_s = time.perf_counter() - t0
    n = suite.n
    cfg = SACConfig(total_steps=args.steps_per_task * n, envs_per_task=1, learning_starts=args.learning_starts_per_task * n,
                    batch_size=args.batch_per_task * n, checkpoint_every=max(1, args.steps_per_task * n // 4), seed=args.seed,
                    device="cpu", net=NetConfig(hidden=(256, 256), activation="relu"))
    c0 = time.process_time()
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        res = sac.train(suite, cfg, tmp)
    train_wall, train_cpu = time.perf_counter() - t1, time.process_time() - c0
    t2 = time.perf_counter()
    ev = evaluate_policy(res.model, suite, episodes=args.episodes, deterministic=True, seed=12345)
    eval_wall = time.perf_counter() - t2
    per_task = {k: {"mean_return": v["mean"], "std_return": v["std"], "success_rate": v["success_rate"]} for k, v in ev.items()}
    mean_success = float(np.mean([v["success_rate"] for v in ev.values()]))
    out = {
        "suite": "metaworld-mt10", "suite_metadata": suite.metadata,
        "config": cfg.model_dump(mode="json"),
        "steps_per_task": args.steps_per_task, "total_steps": res.global_step, "episodes_per_task": args.episodes,
        "mean_success_rate": mean_success,
        "mean_return": float(np.mean([v["mean"] for v in ev.values()])),
        "per_task": per_task,
        "history": res.history,
        "timing": {"suite_build_s": build_s, "train_wall_s": train_wall, "train_cpu_s": train_cpu,
                   "train_steps_per_wall_s": res.global_step / train_wall, "eval_wall_s": eval_wall,
                   "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024},
        "load_average": {"start": load0, "end": os.getloadavg()},
    }
    path = save("sac_mt10", merged({**prev, **out}))
    print(f"MT10 SAC, {res.global_step:,} steps ({args.steps_per_task:,}/task): mean success {mean_success:.1%}, "
          f"train {train_wall:.0f} s wall; {path}")
    for k, v in per_task.items():
        print(f"  {k:24s} return {v['mean_return']:8.1f}  success {v['success_rate']:.0%}")


if __name__ == "__main__":
    main()
