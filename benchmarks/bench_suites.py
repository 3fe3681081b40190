"""Throughput of the highway and Meta-World suites, and a short `policygradex run` on each.

Parts (run one or all; results go to benchmarks/results/suites.json):
  steps   environment steps per second with random actions, through MultiTaskEnv (the vector env
          training uses): every task alone (one environment) and all tasks together (one
          environment per task, steps counted over all of them).  For highway also the same
          configurations on highway-env's own highway-fast-v0 (pandas Kinematics observation),
          to show what tasks/highway.py's NumPy observation saves.  `--async` adds the
          aggregate with every environment in its own subprocess (POLICYGRADEX_ASYNC_ENVS=1).
  run     `policygradex run --suite S --out DIR` at the quick profile (all defaults) for
          highway and metaworld-mt10: wall time, the groups found, null p, theta*'s return and
          advantage-signal health, the stage times.

Usage: python benchmarks/bench_suites.py [steps] [run] [--suites highway metaworld-mt10] [--seconds 5] [--async]
(a part run for some suites replaces only their entries in the results file)
The machine's load average is recorded with the results: other processes slow the steps down.
Every rate is given per wall-clock second and per CPU second of this process (``*_cpu``; for
the CLI runs, the CPU time of the child process), the latter being what an idle core would give.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import RESULTS, save  # noqa: E402

from policygradex.stage import stage_seconds  # noqa: E402
from policygradex.rl.rollout import MultiTaskEnv  # noqa: E402
from policygradex.tasks import TaskSuite, load_suite  # noqa: E402

SUITES = ("highway", "metaworld-mt10")


def random_actions(space: gym.Space, n: int, rng: np.random.Generator) -> np.ndarray:
    if isinstance(space, gym.spaces.Discrete):
        return rng.integers(space.n, size=n)
    return rng.uniform(space.low, space.high, size=(n, *space.shape)).astype(space.dtype)


def vector_rate(suite: TaskSuite, tasks: list[int] | None, seconds: float, asynchronous: bool = False) -> dict:
    """Environment steps per second (over all environments) with random actions."""
    env = MultiTaskEnv(suite, 1, seed=0, tasks=tasks, asynchronous=asynchronous)
    env.reset()
    rng = np.random.default_rng(0)
    space = env.envs.single_action_space
    steps, episodes = 0, 0
    t0, c0 = time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        _, _, term, trunc, _ = env.step(random_actions(space, env.num_envs, rng))
        steps += env.num_envs
        episodes += int(np.logical_or(term, trunc).sum())
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    env.close()
    out = {"steps_per_s": round(steps / wall, 1), "steps": steps, "episodes": episodes, "envs": env.num_envs}
    if not asynchronous:  # the CPU time of subprocess workers is not this process's
        out["steps_per_s_cpu"] = round(steps / max(cpu, 1e-9), 1)
    return out


def upstream_highway_rate(config: dict, seconds: float) -> float:
    """highway-env's own highway-fast-v0 (pandas observation) with the same config."""
    import highway_env  # noqa: F401  (registers highway-fast-v0)

    env = gym.wrappers.FlattenObservation(gym.make("highway-fast-v0", config=config))
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    steps, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        _, _, term, trunc, _ = env.step(int(rng.integers(5)))
        steps += 1
        if term or trunc:
            env.reset()
    env.close()
    return {"steps_per_s": round(steps / (time.perf_counter() - t0), 1),
            "steps_per_s_cpu": round(steps / max(time.process_time() - c0, 1e-9), 1)}


def steps_part(suites: list[str], seconds: float, with_async: bool) -> dict:
    out = {}
    for name in suites:
        t0 = time.perf_counter()
        suite = load_suite(name)
        build_s = time.perf_counter() - t0
        per_task = {}
        for i, task in enumerate(suite.tasks):
            r = vector_rate(suite, [i], seconds)
            if name == "highway":
                r["upstream_highway_env"] = upstream_highway_rate(task.kwargs["config"], seconds)
                r["params"] = suite.params[i]
            per_task[task.name] = r
            print(name, task.name, r, flush=True)
        agg = vector_rate(suite, None, 2 * seconds)
        print(name, "aggregate", agg, flush=True)
        entry = {"suite_build_s": round(build_s, 1), "per_task": per_task, "aggregate_sync": agg,
                 "per_task_mean_steps_per_s": round(float(np.mean([r["steps_per_s"] for r in per_task.values()])), 1),
                 "per_task_mean_steps_per_s_cpu": round(float(np.mean([r["steps_per_s_cpu"] for r in per_task.values()])), 1)}
        if name == "highway":
            entry["upstream_mean_steps_per_s_cpu"] = round(float(np.mean(
                [r["upstream_highway_env"]["steps_per_s_cpu"] for r in per_task.values()])), 1)
        if with_async:
            entry["aggregate_async"] = vector_rate(suite, None, 2 * seconds, asynchronous=True)
            print(name, "aggregate async", entry["aggregate_async"], flush=True)
        out[name] = entry
    return out


def run_part(suites: list[str]) -> dict:
    out = {}
    for name in suites:
        tmp = Path(tempfile.mkdtemp(prefix="pgx-bench-suites-"))
        cmd = [str(Path(sys.executable).with_name("policygradex")), "run", "--suite", name, "--profile", "quick", "--replicates", "1", "--theta-window", "1", "--out", str(tmp)]
        t0, ru0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "POLICYGRADEX_QUIET": "1"})
        wall, ru1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
        g = json.loads((tmp / "groups.json").read_text())
        meta = json.loads((tmp / "collect" / "meta_policy.json").read_text())
        cfg = json.loads((tmp / "config.json").read_text())["config"]
        out[name] = {
            "command": "policygradex " + " ".join(cmd[1:-2]) + " --out DIR",
            "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "stage_wall_s": {k: round(v, 1) for k, v in stage_seconds(tmp).items()},
            "groups": g["groups"], "k": g["k"], "null_p": g["null_p"],
            "distinguishable_from_noise": g["distinguishable_from_noise"], "signal_collapsed": g["signal_collapsed"],
            "meta_policy": g["meta_policy"], "per_task_return": meta["per_task_return"],
            "signal": {t: {k: v[k] for k in ("adv_scale", "frac_positive", "collapsed")} for t, v in meta["signal"].items()},
            "budget": {"total_steps": cfg["ppo"]["total_steps"], "transitions_per_task": cfg["estimate"]["transitions_per_task"],
                       "null_permutations": cfg["group"]["null_permutations"]},
        }
        print(name, json.dumps(out[name])[:400], flush=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("parts", nargs="*", default=["steps", "run"], choices=["steps", "run"])
    ap.add_argument("--suites", nargs="+", default=list(SUITES), choices=SUITES)
    ap.add_argument("--seconds", type=float, default=5.0, help="seconds of stepping per measurement")
    ap.add_argument("--async", dest="with_async", action="store_true", help="also measure AsyncVectorEnv stepping")
    args = ap.parse_args()
    path = RESULTS / "suites.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results.pop("provenance", None)
    start = list(os.getloadavg())
    if "steps" in args.parts:
        results["env_steps_per_s"] = {**results.get("env_steps_per_s", {}), **steps_part(args.suites, args.seconds, args.with_async)}
    if "run" in args.parts:
        results["quick_run"] = {**results.get("quick_run", {}), **run_part(args.suites)}
    # 1, 5, 15 min load averages at the start and end of the invocation that last measured each entry
    load = results.setdefault("load_average", {})
    for part in args.parts:
        for name in args.suites:
            load[f"{part}/{name}"] = {"start": start, "end": list(os.getloadavg())}
    results.pop("load_average_at_start", None)
    results.pop("load_average_at_end", None)
    print("saved", save("suites", results))


if __name__ == "__main__":
    main()
