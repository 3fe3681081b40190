"""Execution backends: `validate` wall time local-serial vs Ray, and how the work scales with n.

  python benchmarks/bench_backend.py validate [--steps 20000] [--workers 2] [--seeds 1]
      one `policygradex run` on cartpole-planted (validate: 19 subsets x --seeds seeds of 8,192
      fine-tuning steps = 19 units + theta* by default), copied three times and validated with
      --backend local (serial), --backend ray (a local Ray instance, all cores) and
      --backend local --workers N, in this order, in one session; wall time, the fine-tuning
      stage's time, the load average before and after each, and whether the three give the same
      numbers; saves benchmarks/results/backend.json.
  python benchmarks/bench_backend.py scaling [--n 50 100] [--run50 DIR]
      for n tasks of the cartpole suite: the subsets the run samples (default options), the
      fine-tuning units of `validate` (subsets x seeds + theta*), and the measured cost of
      three units (theta*'s evaluation, two fine-tunings) with theta* from a 200k-step
      meta-training; with --run50 DIR, also the stage times of a finished
      `policygradex run --suite cartpole --tasks 50` in DIR; saves benchmarks/results/scaling.json
      (merged with what is there).
  python benchmarks/bench_backend.py record-run50 DIR LOG
      the same for a run made by a shell script under `/usr/bin/time -v` with load samples.
  python benchmarks/bench_backend.py run50 [--backend ray] [--out DIR]
      `policygradex run --suite cartpole --tasks 50` end to end: wall time, stage breakdown,
      load averages sampled every 30 s; merged into benchmarks/results/scaling.json.

The machine has 2 cores and is shared: every timing is stored next to the load average
(`/proc/loadavg`: 1, 5, 15 min) at its start and end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, policygradex, save  # noqa: E402
from policygradex.stage import stage_seconds as run_stage_seconds  # noqa: E402



def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def cli(*args: str) -> float:
    return policygradex(*args)[0]


def manifest(d: Path, stage: str) -> dict:
    return json.loads((d / f"{stage}.manifest.json").read_text())


def stage_seconds(d: Path) -> dict:
    return {s: round(v, 1) for s, v in run_stage_seconds(d).items()}


# ---------------------------------------------------------------------------- validate


def bench_validate(steps: int, workers: int, seeds: int) -> dict:
    run_opts = ["--suite", "cartpole-planted", "--seed", "0", "--replicates", "1", "--theta-window", "1", "--steps", str(steps)]
    val_opts = ["--finetune-seeds", str(seeds)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "run"
        load0 = loadavg()
        t_run = cli("run", *run_opts, "--out", str(base))
        print(f"run: {t_run:.0f} s, load {load0} -> {loadavg()}", flush=True)
        variants = [("local-serial", ["--backend", "local"]), ("ray", ["--backend", "ray"]),
                    (f"local-workers{workers}", ["--backend", "local", "--workers", str(workers)])]
        for name, opts in variants:
            d = Path(tmp) / name
            shutil.copytree(base, d)
            before = loadavg()
            wall = cli("validate", *run_opts, *val_opts, *opts, "--out", str(d))
            after = loadavg()
            r = json.loads((d / "validation.json").read_text())
            ft = manifest(d, "validate_finetune")["extra"]
            rows.append({"variant": name, "options": opts, "wall_s": round(wall, 1),
                         "finetune_stage_s": round(ft["seconds"], 1), "execution": ft["execution"],
                         "analysis_s": round(r["timings_s"]["analysis_total"], 1),
                         "real_route_sum_of_units_s": round(r["speedup_breakdown"]["real_s"]["total"], 1),
                         "loadavg_before": before, "loadavg_after": after,
                         "nmi": r["nmi"], "ground_truth_groups": r["ground_truth"]["groups"],
                         "f_true_csv": (d / "validate" / "f_true.csv").read_text()})
            print({k: v for k, v in rows[-1].items() if k not in ("f_true_csv", "ground_truth_groups")}, flush=True)
    ref_csv, ref_groups = rows[0]["f_true_csv"], rows[0]["ground_truth_groups"]
    for row in rows:
        row["same_f_true_as_serial"] = row.pop("f_true_csv") == ref_csv
        row["same_ground_truth_as_serial"] = row["ground_truth_groups"] == ref_groups
    serial = rows[0]
    for row in rows:
        row["finetune_speedup_vs_serial"] = round(serial["finetune_stage_s"] / row["finetune_stage_s"], 2)
        row["wall_speedup_vs_serial"] = round(serial["wall_s"] / row["wall_s"], 2)
    return {"suite": "cartpole-planted", "run_options": run_opts, "run_s": round(t_run, 1), "nproc": os.cpu_count(),
            "validate_options": val_opts + ["(defaults otherwise: --finetune-steps 8192 --episodes 16)"], "rows": rows}


# ---------------------------------------------------------------------------- scaling


def unit_costs(n: int, steps: int, tmp: Path) -> dict:
    import numpy as np
    import torch

    from policygradex.config import PPOConfig, ValidateConfig
    from policygradex.estimate.subsets import default_subset_size, sample_subsets
    from policygradex.stages import train_meta_policy
    from policygradex.tasks import load_suite
    from policygradex.validate import _finetune_setup, _finetune_unit, finetune_units

    torch.set_num_threads(1)
    suite = load_suite("cartpole", n, 0)
    ppo = PPOConfig.model_validate({**suite.ppo_preset, "total_steps": steps})
    size = default_subset_size(n)
    members = sample_subsets(n, size, 3, None, 0)
    vcfg = ValidateConfig()
    units, _ = finetune_units(suite.names, members, ppo, vcfg)
    load0 = loadavg()
    t0 = time.perf_counter()
    res = train_meta_policy(suite, ppo, tmp / f"train{n}")
    t_train = time.perf_counter() - t0
    ctx = _finetune_setup({"model": res.model.state_dict(), "suite": suite.to_dict(), "ppo": ppo.model_dump(mode="json"),
                           "finetune_steps": vcfg.finetune_steps, "episodes": vcfg.episodes, "eval_seed": vcfg.eval_seed})
    measured = []
    ft_units = [u for u in units if u.payload[0] == "finetune"]
    for u in [units[0], ft_units[0], ft_units[min(len(ft_units) - 1, vcfg.finetune_seeds + 1)]]:
        before = loadavg()
        t = time.perf_counter()
        out = _finetune_unit(ctx, u.payload)
        wall = time.perf_counter() - t
        row = {"unit": u.label, "tasks": len(u.tasks), "wall_s": round(wall, 2), "loadavg_before": before, "loadavg_after": loadavg()}
        if "finetune_s" in out:
            row.update(finetune_s=round(out["finetune_s"], 2), eval_s=round(out["eval_s"], 2), env_steps=out["env_steps"],
                       keeps_path=bool(u.payload[3]), f_mean=round(float(np.mean(out["f"])), 1))
        measured.append(row)
        print(n, row, flush=True)
    ft_mean = float(np.mean([r["wall_s"] for r in measured[1:]]))
    n_ft = len(ft_units)
    serial = measured[0]["wall_s"] + n_ft * ft_mean
    return {
        "n": n, "subset_size": size, "subsets": int(members.shape[0]), "min_pair_coverage": 3,
        "finetune_seeds": vcfg.finetune_seeds, "units": len(units), "finetune_units": n_ft,
        "steps_per_finetune_unit": int(ft_units[0].cost),
        "theta_star": {"meta_training_steps": steps, "train_s": round(t_train, 1), "loadavg_before": load0,
                       "mean_return": float(np.mean([r for r in res.history[-1]["returns"].values() if r is not None]))},
        "measured_units": measured,
        "finetune_unit_mean_s": round(ft_mean, 2),
        "estimated_real_route_s": {"1 core": round(serial, 0), "2 cores": round(serial / 2, 0), "16 cores": round(serial / 16, 0),
                                   f"{n_ft} cores (one unit each)": round(measured[0]["wall_s"] + ft_mean, 0)},
    }


def merge_scaling(update: dict) -> Path:
    path = RESULTS / "scaling.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    old.pop("provenance", None)
    old.update(update)
    return save("scaling", old)


# ---------------------------------------------------------------------------- run n = 50


def run50(backend: str, out: Path | None) -> dict:
    samples: list[tuple[float, list[float]]] = []
    stop = threading.Event()

    def sample():
        t0 = time.perf_counter()
        while not stop.is_set():
            samples.append((round(time.perf_counter() - t0), loadavg()))
            stop.wait(30)

    with tempfile.TemporaryDirectory() as tmp:
        d = out or Path(tmp) / "cartpole50"
        th = threading.Thread(target=sample, daemon=True)
        th.start()
        args = ["run", "--suite", "cartpole", "--tasks", "50", "--replicates", "1", "--theta-window", "1", "--backend", backend, "--out", str(d)]
        wall = cli(*args)
        stop.set()
        th.join()
        g = json.loads((d / "groups.json").read_text())
        feat = manifest(d, "features")
    return {"command": "policygradex " + " ".join(args[:-1] + ["DIR"]),
            "backend": backend, "wall_s": round(wall, 1), "target_s": 1800, "stages_s": stage_seconds(d),
            "k": g["k"], "null_p": g["null_p"], "subsets": g["subsets"], "features_files": len(feat["files"]),
            "loadavg_samples_every_30s": samples}


def record_run50(d: Path, log: Path, command: str) -> dict:
    """A finished n = 50 run (stage times from its manifests; wall time and load from its log)."""
    text = log.read_text().splitlines()
    wall = next(line.split("):")[-1].strip() for line in text if "Elapsed (wall clock)" in line)
    parts = [float(x) for x in wall.split(":")]
    wall_s = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    loads = [line.split()[1:5] for line in text if line.startswith("load ")]
    t0 = int(loads[0][0]) if loads else 0
    g = json.loads((d / "groups.json").read_text())
    return {"command": command, "backend": "local (serial)", "wall_s": round(wall_s, 1), "target_s": 1800,
            "stages_s": stage_seconds(d), "k": g["k"], "null_p": g["null_p"], "subsets": g["subsets"],
            "loadavg_samples_every_30s": [(int(x[0]) - t0, [float(v) for v in x[1:4]]) for x in loads]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="part", required=True)
    v = sub.add_parser("validate")
    v.add_argument("--steps", type=int, default=20000, help="meta-training steps of the run (theta* is an early checkpoint anyway)")
    v.add_argument("--workers", type=int, default=2)
    v.add_argument("--seeds", type=int, default=1, help="--finetune-seeds of the validations (19 subsets x seeds units)")
    s = sub.add_parser("scaling")
    s.add_argument("--n", type=int, nargs="+", default=[50, 100])
    s.add_argument("--steps", type=int, default=200_000)
    s.add_argument("--run50", type=Path, default=None, help="a finished `run --suite cartpole --tasks 50` directory")
    rec = sub.add_parser("record-run50", help="merge a finished n = 50 run made by a shell script (its DIR and its log)")
    rec.add_argument("dir", type=Path)
    rec.add_argument("log", type=Path, help="log with `/usr/bin/time -v` output and `load <t> <loadavg>` lines every 30 s")
    rec.add_argument("--command", default="policygradex run --suite cartpole --tasks 50 --out DIR")
    r = sub.add_parser("run50")
    r.add_argument("--backend", default="ray")
    r.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    if a.part == "validate":
        print(save("backend", bench_validate(a.steps, a.workers, a.seeds)))
    elif a.part == "scaling":
        with tempfile.TemporaryDirectory() as tmp:
            rows = [unit_costs(n, a.steps, Path(tmp)) for n in a.n]
        update = {"units_by_n": rows}
        if a.run50 is not None:
            update["run_n50_existing"] = {"dir": str(a.run50), "stages_s": stage_seconds(a.run50),
                                          "groups": {k: json.loads((a.run50 / "groups.json").read_text())[k] for k in ("k", "null_p", "subsets")}}
        print(merge_scaling(update))
    elif a.part == "record-run50":
        print(merge_scaling({"run_n50_local": record_run50(a.dir, a.log, a.command)}))
    else:
        res = run50(a.backend, a.out)
        print(merge_scaling({f"run_n50_{a.backend}": res}))


if __name__ == "__main__":
    main()
