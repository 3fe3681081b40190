"""Meta-World MT10 end to end with MT-SAC: meta-policy, grouping, grouped policies, success rates.

The largest MT10 run this project has made; sized for one GPU machine within a fixed wall-time
budget (it also runs, smaller, on a CPU).  Three steps, each a CLI command:

1. ``policygradex run --suite metaworld-mt10 --algo sac --steps N`` (meta-training on all ten
   tasks, then collect / features / surrogate / groups);
2. the meta-policy theta* evaluated (``policygradex evaluate``, deterministic actions,
   ``--episodes`` per task: Meta-World's success = ``info["success"]`` at any step);
3. ``policygradex compare --algo sac --methods multitask,policygradex`` with the same number
   of environment steps per task for every method (SAC budget rule: docs/compare.md).  The
   per-task budget of step 3 is chosen from the throughput measured in step 1 so that the
   whole job ends within ``--time-budget`` seconds (a policygradex unit trains its k groups one
   after the other, so it needs about k times the updates of the multitask unit; both units run
   at once with ``--workers 2``).

Usage:
  python benchmarks/bench_mt10.py [--meta-steps-per-task 20000] [--max-compare-steps-per-task 40000]
                                  [--time-budget 480] [--episodes 10] [--copy-to DIR]
Result: benchmarks/results/mt10_sac_<device>.json (device = cuda or cpu).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import policygradex, save  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, timeout: float | None = None) -> tuple[float, subprocess.CompletedProcess]:
    wall, proc = policygradex(*args, check=False, capture_output=True, text=True, timeout=timeout)
    print(f"$ policygradex {' '.join(args)}  [{wall:.0f} s, exit {proc.returncode}]", flush=True)
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n", flush=True)
    return wall, proc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--meta-steps-per-task", type=int, default=20_000)
    ap.add_argument("--max-compare-steps-per-task", type=int, default=40_000)
    ap.add_argument("--min-compare-steps-per-task", type=int, default=2_000)
    ap.add_argument("--time-budget", type=float, default=480.0, help="seconds for the whole job")
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=1280, help="[sac] batch_size (rows per update, all tasks)")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_mt10")
    ap.add_argument("--copy-to", type=Path, default=None, help="copy the main artifacts here as they are made")
    ap.add_argument("--reuse-run", type=Path, default=None,
                    help="an existing `policygradex run --suite metaworld-mt10 --algo sac` directory made with the default options "
                         "(e.g. runs/bench_sac_mt10 of bench_sac.py --run): skip step 1 and compare on it")
    ap.add_argument("--compare-steps-per-task", type=int, default=None, help="fix step 3's budget instead of sizing it by time")
    ap.add_argument("--seeds", type=int, default=1, help="compare's training seeds per method")
    ap.add_argument("--keep-work", action="store_true",
                    help="keep --work from an earlier call: compare resumes from its finished (method, seed) units")
    args = ap.parse_args()

    import torch

    t_start = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out: dict = {"device": device, "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
                 "torch": torch.__version__, "cpu_count": os.cpu_count(),
                 "async_envs": os.environ.get("POLICYGRADEX_ASYNC_ENVS", "0")}
    if args.work.exists() and not args.keep_work:
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True, exist_ok=True)
    run_dir, cmp_dir = (args.reuse_run or args.work / "run"), args.work / "compare"
    cfg = args.work / "sac.toml"
    cfg.write_text(f"[sac]\nbatch_size = {args.batch_size}\n")
    n = 10

    def keep(name: str, src: Path) -> None:
        if args.copy_to is not None and src.is_file():
            args.copy_to.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, args.copy_to / name)

    def checkpoint_result() -> None:
        out["elapsed_s"] = time.perf_counter() - t_start
        path = save(f"mt10_sac_{device}", out)
        keep(path.name, path)

    # 1. the PolicyGradEx run with an MT-SAC meta-policy
    meta_steps = args.meta_steps_per_task * n
    run_args = ["--suite", "metaworld-mt10", "--algo", "sac", "--replicates", "1", "--theta-window", "1", "--steps", str(meta_steps), "--config", str(cfg),
                "--out", str(run_dir)]
    if args.reuse_run is not None:  # the run's own options: the defaults of the quick profile
        from policygradex.config import RunConfig

        conf = json.loads((run_dir / "config.json").read_text())
        meta_steps = RunConfig.model_validate(conf["config"]).sac.total_steps
        run_args = ["--suite", "metaworld-mt10", "--algo", "sac", "--replicates", "1", "--theta-window", "1", "--out", str(run_dir)]
    wall, proc = cli("run", *run_args, timeout=args.time_budget)
    if proc.returncode != 0:
        out["run"] = {"error": proc.stderr[-2000:]}
        checkpoint_result()
        raise SystemExit(1)
    from policygradex.stage import stage_seconds

    groups = json.loads((run_dir / "groups.json").read_text())
    st = stage_seconds(run_dir)
    train_rate = meta_steps / st["train"]
    out["run"] = {"command": "policygradex run " + " ".join(run_args), "wall_s": wall, "stage_s": st,
                  "meta_steps_per_task": args.meta_steps_per_task, "train_env_steps_per_s": train_rate,
                  "groups": groups["groups"], "k": groups["k"], "null_p": groups["null_p"],
                  "signal_collapsed": groups.get("signal_collapsed"), "meta_policy": groups.get("meta_policy"),
                  "approx_error_at_delta": groups.get("approx_error_at_delta"), "delta": groups.get("delta")}
    keep("groups.json", run_dir / "groups.json")
    keep("report.md", run_dir / "report.md")
    checkpoint_result()

    # 2. theta* evaluated: mean return and success rate per task
    from policygradex.rl.checkpoint import list_checkpoints

    ckpts = list_checkpoints(run_dir / "train" / "checkpoints")
    name = (groups.get("meta_policy") or {}).get("checkpoint")
    ckpt = next((c for c in ckpts if c.name == name), ckpts[-1])
    wall, proc = cli("evaluate", str(ckpt), "--episodes", str(args.episodes), "--json")
    if proc.returncode == 0:
        ev = json.loads(proc.stdout)
        out["meta_policy"] = {"checkpoint": str(ckpt.relative_to(run_dir)), "per_task": ev, "wall_s": wall}
        rates = [v.get("success_rate") for v in ev.values() if isinstance(v, dict) and v.get("success_rate") is not None]
        out["meta_policy"]["mean_success_rate"] = sum(rates) / len(rates) if rates else None
    checkpoint_result()

    # 3. grouped policies against the multi-task policy, same env steps per task
    left = args.time_budget - (time.perf_counter() - t_start) - 30.0
    k = max(1, int(groups["k"]))
    # the policygradex unit makes ~k times the updates of the multitask unit; updates dominate on
    # both devices, so its time is about k * steps_per_task * n / train_rate
    steps_pt = int(min(args.max_compare_steps_per_task, max(0.0, left) * train_rate / (k * n)))
    steps_pt = (steps_pt // 100) * 100
    if args.compare_steps_per_task is not None:
        steps_pt = args.compare_steps_per_task
    out["compare_budget"] = {"seconds_left": left, "k": k, "steps_per_task": steps_pt}
    if steps_pt < args.min_compare_steps_per_task:
        out["compare"] = {"skipped": f"{left:.0f} s left: under {args.min_compare_steps_per_task} steps per task"}
        checkpoint_result()
        return
    cmp_args = ["--suite", "metaworld-mt10", "--algo", "sac", *(["--config", str(cfg), "--steps", str(meta_steps)] if args.reuse_run is None else []),
                "--methods", "multitask,policygradex", "--seeds", str(args.seeds), "--steps-per-task", str(steps_pt),
                "--episodes", str(args.episodes), "--run-dir", str(run_dir), "--workers", "2", "--out", str(cmp_dir)]
    wall, proc = cli("compare", *cmp_args, timeout=max(60.0, args.time_budget - (time.perf_counter() - t_start)))
    if proc.returncode == 0:
        comp = json.loads((cmp_dir / "comparison.json").read_text())
        out["compare"] = {"command": "policygradex compare " + " ".join(cmp_args), "wall_s": wall, "comparison": comp}
        keep("comparison.json", cmp_dir / "comparison.json")
        keep("comparison.png", cmp_dir / "comparison.png")
    else:
        out["compare"] = {"error": proc.stderr[-2000:], "wall_s": wall}
    checkpoint_result()


if __name__ == "__main__":
    main()
