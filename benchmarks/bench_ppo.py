"""PPO benchmarks for the foundation issue.

Parts (run one or all):
  cartpole     single-task CartPole-v1, 100k steps, 5 seeds: target mean return >= 475 on >= 4/5
  lunarlander  single-task LunarLander-v3, 1M steps, 3 seeds: target >= 200 on >= 2/3
  multitask    the default `cartpole` suite (n=10): one multi-task policy with 100k steps per task
               vs a policy per task trained alone with 100k steps: target ratio >= 0.9 on every task
  sb3          Stable-Baselines3 PPO with the same hyperparameters and budgets (cross-check)

Returns are evaluated after training with 10 greedy episodes (SB3: deterministic=True).
Usage: python benchmarks/bench_ppo.py cartpole [--seeds 5] [--steps 100000]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import save  # noqa: E402

from policygradex.config import PPOConfig  # noqa: E402
from policygradex.rl.evaluate import evaluate_policy  # noqa: E402
from policygradex.rl.ppo import train  # noqa: E402
from policygradex.tasks import TaskSuite, load_suite  # noqa: E402

torch.set_num_threads(1)


def run_ours(suite: TaskSuite, steps: int, seed: int, episodes: int = 10) -> dict:
    cfg = PPOConfig(**{**suite.ppo_preset, "total_steps": steps, "seed": seed, "checkpoint_every": 10_000})
    tmp = tempfile.mkdtemp(prefix="pgx-bench-")
    try:
        t0 = time.perf_counter()
        res = train(suite, cfg, tmp)
        wall = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ev = evaluate_policy(res.model, suite, episodes=episodes, seed=1000 + seed)
    return {"seed": seed, "env_steps": res.global_step, "wall_s": round(wall, 1), "steps_per_s": round(res.global_step / wall),
            "eval": {k: round(v["mean"], 1) for k, v in ev.items()}}


def single(env_id: str, steps: int, seeds: int, threshold: float, need: int) -> dict:
    suite = load_suite(f"env:{env_id}")
    runs = []
    for s in range(seeds):
        r = run_ours(suite, steps, s)
        print(env_id, r, flush=True)
        runs.append(r)
    finals = [r["eval"][env_id] for r in runs]
    ok = sum(f >= threshold for f in finals)
    return {"env_id": env_id, "budget_steps": steps, "hyperparameters": suite.ppo_preset, "runs": runs,
            "final_returns": finals, "threshold": threshold, "seeds_reaching": ok, "target": f">= {threshold} on >= {need} of {seeds}",
            "passed": ok >= need}


def multitask(steps_per_task: int, seed: int) -> dict:
    suite = load_suite("cartpole")
    multi = run_ours(suite, steps_per_task * suite.n, seed)
    print("multi", multi, flush=True)
    alone = {}
    for task in suite.tasks:
        one = TaskSuite(task.name, [task], ppo_preset=load_suite("env:CartPole-v1").ppo_preset)
        r = run_ours(one, steps_per_task, seed)
        print("alone", r, flush=True)
        alone[task.name] = r
    ratio = {t: round(multi["eval"][t] / max(alone[t]["eval"][t], 1e-9), 3) for t in suite.names}
    return {"suite": "cartpole", "n": suite.n, "steps_per_task": steps_per_task, "seed": seed,
            "multitask_hyperparameters": suite.ppo_preset, "multitask": multi,
            "single_task": {t: {"eval": alone[t]["eval"][t], "wall_s": alone[t]["wall_s"]} for t in suite.names},
            "ratio_multi_over_single": ratio, "min_ratio": min(ratio.values()), "target": "ratio >= 0.9 on every task",
            "passed": min(ratio.values()) >= 0.9}


def sb3(env_id: str, steps: int, seeds: int) -> dict:
    import gymnasium as gym
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy as sb3_eval

    p = load_suite(f"env:{env_id}").ppo_preset
    runs = []
    for s in range(seeds):
        env = make_vec_env(env_id, n_envs=p["envs_per_task"], seed=s)
        model = PPO("MlpPolicy", env, n_steps=p["num_steps"], batch_size=p["minibatch_size"], n_epochs=p["update_epochs"],
                    learning_rate=(lambda f, lr=p["learning_rate"]: f * lr), gamma=p["gamma"], gae_lambda=p["gae_lambda"],
                    ent_coef=p["ent_coef"], clip_range=p["clip_coef"], policy_kwargs=dict(net_arch=[64, 64, 64]), seed=s, device="cpu", verbose=0)
        t0 = time.perf_counter()
        model.learn(steps)
        wall = time.perf_counter() - t0
        mean, _ = sb3_eval(model, gym.make(env_id), n_eval_episodes=10, deterministic=True)
        runs.append({"seed": s, "eval": round(float(mean), 1), "wall_s": round(wall, 1), "steps_per_s": round(steps / wall)})
        print("sb3", env_id, runs[-1], flush=True)
    return {"env_id": env_id, "budget_steps": steps, "runs": runs, "final_returns": [r["eval"] for r in runs]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["cartpole", "lunarlander", "multitask", "sb3-cartpole", "sb3-lunarlander"])
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    a = ap.parse_args()
    if a.part == "cartpole":
        save("ppo_cartpole", single("CartPole-v1", a.steps or 100_000, a.seeds or 5, 475.0, 4))
    elif a.part == "lunarlander":
        save("ppo_lunarlander", single("LunarLander-v3", a.steps or 1_000_000, a.seeds or 3, 200.0, 2))
    elif a.part == "multitask":
        save("ppo_multitask_cartpole", multitask(a.steps or 100_000, 0))
    elif a.part == "sb3-cartpole":
        save("sb3_cartpole", sb3("CartPole-v1", a.steps or 100_000, a.seeds or 5))
    else:
        save("sb3_lunarlander", sb3("LunarLander-v3", a.steps or 1_000_000, a.seeds or 3))


if __name__ == "__main__":
    main()
