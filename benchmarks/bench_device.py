"""The CUDA path against the CPU path, on a machine with a GPU (skips the CUDA parts without one).

1. ``run``: the same small PolicyGradEx run (cartpole, 4 tasks) with ``[ppo] device = "cpu"``
   and ``device = "cuda"``: groups, affinity, theta*'s step and return.  GPU arithmetic is not
   bit-identical to the CPU's, so this checks that the results agree, not that they are equal.
2. Per-sample gradient features of an MT-SAC actor (squashed Gaussian, vmap over rows) on CUDA
   against the CPU: maximum relative difference.
3. Where the time of an MT-SAC vector step goes on MT10: one SAC update (batch 1280, 256-256)
   on each device, and one step of the ten MT10 environments (sync and async vector envs).

Usage: python benchmarks/bench_device.py [--copy-to DIR]
Result: benchmarks/results/device_<cuda|cpu>.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import policygradex, save  # noqa: E402


def run_pair(tmp: Path, devices: list[str]) -> dict:
    out = {}
    for dev in devices:
        cfg = tmp / f"{dev}.toml"
        cfg.write_text(f'[ppo]\ndevice = "{dev}"\n')
        d = tmp / f"run_{dev}"
        wall, proc = policygradex("run", "--suite", "cartpole", "--tasks", "4", "--replicates", "1", "--theta-window", "1", "--steps", "20000", "--transitions", "1024",
                                  "--null-permutations", "50", "--config", str(cfg), "--out", str(d),
                                  check=False, capture_output=True, text=True)
        if proc.returncode != 0:
            out[dev] = {"error": proc.stderr[-1500:]}
            continue
        g = json.loads((d / "groups.json").read_text())
        U = np.genfromtxt(d / "affinity.csv", delimiter=",", skip_header=1)[:, 1:]
        out[dev] = {"wall_s": wall, "groups": g["groups"], "null_p": g["null_p"], "meta_policy": g["meta_policy"],
                    "affinity": U.tolist()}
    if all("affinity" in out.get(d, {}) for d in devices) and len(devices) == 2:
        a, b = (np.array(out[d]["affinity"]) for d in devices)
        iu = np.triu_indices(a.shape[0], 1)
        out["agreement"] = {"same_groups": out[devices[0]]["groups"] == out[devices[1]]["groups"],
                            "same_theta_star_step": out[devices[0]]["meta_policy"]["step"] == out[devices[1]]["meta_policy"]["step"],
                            "affinity_max_abs_diff": float(np.abs(a - b).max()),
                            "affinity_corr": float(np.corrcoef(a[iu], b[iu])[0, 1]) if a.shape[0] > 2 else None}
    return out


def sac_features(devices: list[str]) -> dict:
    from policygradex.config import NetConfig, SACConfig
    from policygradex.estimate.features import exact_grads
    from policygradex.rl import sac
    from policygradex.tasks import load_suite

    suite = load_suite("metaworld:reach-v3,push-v3", None, 0)
    cfg = SACConfig(net=NetConfig(hidden=(256, 256), activation="relu"), device="cpu")
    torch.manual_seed(0)
    model = sac.build_model(suite, cfg)
    x = torch.randn(512, 39 + suite.n)
    a = torch.rand(512, 4) * 1.8 - 0.9
    ref = exact_grads(model.actor, x, a)
    out = {}
    for dev in devices:
        if dev == "cpu":
            continue
        actor = model.actor.to(dev)
        t0 = time.perf_counter()
        g = exact_grads(actor, x.to(dev), a.to(dev)).cpu()
        torch.cuda.synchronize()
        out[dev] = {"max_rel_diff": float((g - ref).norm(dim=1).max() / ref.norm(dim=1).max()), "seconds": time.perf_counter() - t0}
        model.actor.to("cpu")
    return out


def sac_step_costs(devices: list[str]) -> dict:
    from policygradex.config import NetConfig, SACConfig
    from policygradex.rl import sac
    from policygradex.rl.rollout import MultiTaskEnv
    from policygradex.tasks import load_suite

    suite = load_suite("metaworld-mt10", None, 0)
    out: dict = {"updates": {}, "env_step": {}}
    for dev in devices:
        cfg = SACConfig(net=NetConfig(hidden=(256, 256), activation="relu"), device=dev, batch_size=1280)
        torch.manual_seed(0)
        model = sac.build_model(suite, cfg).to(dev)
        opts = sac.make_optimizers(model, cfg)
        buf = sac.ReplayBuffer(20_000, 39, 4)
        rng = np.random.default_rng(0)
        for _ in range(10):
            obs = rng.standard_normal((1000, 39)).astype(np.float32)
            buf.add(obs, rng.uniform(-1, 1, (1000, 4)).astype(np.float32), rng.standard_normal(1000).astype(np.float32), obs,
                    np.zeros(1000, bool), rng.integers(0, 10, 1000))
        gen = torch.Generator().manual_seed(0)
        h = sac.target_entropy(cfg, 4)
        for i in range(220):
            if i == 20:
                if dev == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
            sac.sac_update(model, opts, buf.sample(cfg.batch_size, rng, suite.n, torch.device(dev)), cfg, h, gen)
        if dev == "cuda":
            torch.cuda.synchronize()
        out["updates"][dev] = {"ms_per_update": (time.perf_counter() - t0) / 200 * 1e3}
    for asynchronous in (False, True):
        env = MultiTaskEnv(suite, 1, 0, asynchronous=asynchronous)
        env.reset()
        a = np.zeros((env.num_envs, 4), np.float32)
        env.step(a)
        t0 = time.perf_counter()
        for _ in range(100):
            env.step(a)
        out["env_step"]["async" if asynchronous else "sync"] = {"ms_per_vector_step": (time.perf_counter() - t0) / 100 * 1e3}
        env.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copy-to", type=Path, default=None)
    args = ap.parse_args()
    devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    res: dict = {"devices": devices, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    for name, fn in (("sac_step_costs", lambda: sac_step_costs(devices)), ("sac_features", lambda: sac_features(devices))):
        t0 = time.perf_counter()
        try:
            res[name] = fn()
        except Exception as e:  # noqa: BLE001 - record and go on: one call on a lent machine
            res[name] = {"error": repr(e)}
        res[name + "_s"] = time.perf_counter() - t0
        print(name, json.dumps(res[name])[:600], flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        res["run_cpu_vs_cuda"] = run_pair(Path(tmp), devices)
    print("run", json.dumps({k: v for k, v in res["run_cpu_vs_cuda"].items() if k == "agreement"}), flush=True)
    path = save(f"device_{devices[-1]}", res)
    if args.copy_to is not None:
        args.copy_to.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, args.copy_to / path.name)


if __name__ == "__main__":
    main()
