"""Meta-RL on held-out tasks: first-order MAML per group, group selection by probing, adaptation.

The task families ``cartpole``, ``cartpole-planted`` and ``lunarlander`` draw their tasks from
continuous parameter ranges.  The n training tasks are the suite; ``n_test`` held-out tasks
are drawn from the same ranges with a separate seed stream (:func:`tasks.builtin.heldout`).

**Policies are task-blind.**  A held-out task has no id, so every meta policy sees the
observation and one constant input (the one-hot of a one-task suite, always 1) -- during
meta-training, probing and adaptation alike.  The task is identified only through the
adaptation (as in MAML).

**Rollouts and the adaptation step.**  A rollout is ``meta_envs`` environments of one task
for ``meta_rollout_steps`` steps.  One adaptation step on a rollout: GAE advantages
(``gamma``, ``gae_lambda`` of the suite's PPO preset) standardized over the rollout, the loss
``L = -mean(A log pi(a|s)) - ent_coef H + vf_coef * 0.5 mean((V - R)^2)`` (vanilla policy
gradient + value regression), the actor's and the critic's gradients each clipped to
``max_grad_norm``, and one SGD step of size ``inner_lr``.

**First-order MAML** (:func:`fomaml`), on a group of tasks, per meta-iteration, for *every*
task i of the group (the meta-batch is the whole group, so every task gets the same steps):
``theta_i = theta``; ``inner_steps`` adaptation steps, each on a fresh rollout of task i with
``theta_i``; then the gradient ``g_i`` of ``L`` on a fresh rollout of the adapted
``theta_i``, taken at ``theta_i`` (first-order: no second derivatives).  The initialization
moves by one Adam step (``meta_lr``) along ``mean_i g_i``.

**Budget.**  Every training task consumes ``(inner_steps + 1) x R`` environment steps per
meta-iteration (R = one rollout); the meta-iterations are ``ceil(steps_per_task / ((inner_steps
+ 1) R))``, the same for every group and method, so every training task gets the same steps
under ``meta-maml`` (one group), ``meta-policygradex`` (k groups) and ``meta-multitask``, which
runs task-blind multi-task PPO (the project's PPO update) with one rollout of every task per
iteration for ``meta_iterations x (inner_steps + 1)`` iterations.

**Test time** (:func:`adapt_heldout`).  For every held-out task: each group's initialization
plays ``probe_episodes`` episodes (sampled actions, seed ``eval_seed + 1``); the group with
the highest mean probe return is chosen (ties: the lowest group index) -- :func:`select_group`.
The chosen initialization is adapted with ``adapt_steps`` adaptation steps (fresh rollouts of
the task, ``inner_lr``), then evaluated for ``episodes`` episodes (``eval_seed``, common random
numbers across methods).  Probe episodes are counted (``probe_episodes`` per task) and are not part
of the adaptation budget; with one group (``meta-maml``, ``meta-multitask``) there is nothing to
probe and none are run.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import CompareConfig, PPOConfig
from ..errors import UserError
from ..rl.checkpoint import build_model, save_checkpoint
from ..rl.evaluate import evaluate_policy
from ..rl.finite import Divergence, describe, first_nonfinite, max_abs, now, overflow_guard, reward_overflow
from ..rl.networks import ActorCritic
from ..rl.ppo import ppo_update
from ..rl.rollout import MultiTaskEnv, Rollout, RolloutCollector
from ..tasks import Task, TaskSuite
from ..tasks.builtin import heldout

__all__ = ["heldout_suite", "blind_suite", "meta_iterations", "adapt_step", "adapt", "fomaml", "multitask_init",
           "select_group", "adapt_heldout", "run_meta_unit"]


# ----------------------------------------------------------------------------- tasks


def heldout_suite(suite: TaskSuite, n_test: int) -> TaskSuite:
    """The ``n_test`` held-out tasks of a built-in family suite.  The family and the suite seed
    are read from ``suite.source`` (set by ``load_suite``); a suite made without it counts as
    the family of its name with suite seed 0."""

    src = getattr(suite, "source", None) or {}
    family = src.get("suite", suite.name)
    return heldout(family, n_test, int(src.get("suite_seed", 0) or 0))


def blind_suite(task: Task) -> TaskSuite:
    """A one-task suite: its policies see the observation and a constant 1 (no task id)."""
    return TaskSuite(f"blind-{task.name}", [task])


def meta_iterations(cfg: CompareConfig) -> int:
    """Meta-iterations that give every training task at least ``steps_per_task`` steps."""
    return max(1, math.ceil(cfg.steps_per_task / ((cfg.inner_steps + 1) * cfg.meta_envs * cfg.meta_rollout_steps)))


class _TaskStream:
    """Fresh rollouts of one task (its environments keep running between rollouts)."""

    def __init__(self, task: Task, envs: int, seed: int):
        self.suite = blind_suite(task)
        self.env = MultiTaskEnv(self.suite, envs, seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.collector = RolloutCollector(self.env, self.gen)
        self.steps = 0

    def rollout(self, model: ActorCritic, num_steps: int) -> Rollout:
        model.eval()
        ro = self.collector.collect(model, num_steps)
        self.steps += int(ro.rewards.numel())
        return ro

    def close(self) -> None:
        self.env.close()


# ----------------------------------------------------------------------------- the adaptation step


def pg_loss(model: ActorCritic, ro: Rollout, ppo: PPOConfig) -> torch.Tensor:
    """Vanilla policy-gradient loss with standardized GAE advantages, entropy bonus and value loss."""
    adv, ret = ro.advantages(ppo.gamma, ppo.gae_lambda)
    T, E = ro.rewards.shape
    x = ro.x.reshape(T * E, -1)
    a = ro.actions.reshape(T * E, *ro.actions.shape[2:])
    adv, ret = adv.reshape(-1), ret.reshape(-1)
    if adv.numel() > 1:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    dist = model.actor.distribution(x)
    pg = -(adv * dist.log_prob(a)).mean()
    v = 0.5 * (model.value(x) - ret).pow(2).mean()
    return pg - ppo.ent_coef * dist.entropy().mean() + ppo.vf_coef * v


def _check(label: str, named: list, ro: Rollout, names: list[str] | None, advice: str) -> None:
    """A :class:`Divergence` for the first non-finite quantity of ``named`` (rewards too large
    for float32 are named as such, with their task)."""
    bad = first_nonfinite(named)
    if bad is None:
        return
    err = reward_overflow(label, ro.rewards.reshape(-1), ro.task_ids.repeat(ro.rewards.shape[0]), names, "rewards")
    raise err if err is not None else Divergence(f"{label}: {bad[0]} is {describe(bad[1])}; {advice}")


def _grads(model: ActorCritic, ro: Rollout, ppo: PPOConfig, label: str = "adaptation step", names: list[str] | None = None,
           advice: str = "") -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    model.train()
    loss = pg_loss(model, ro, ppo)
    loss.backward()
    model.eval()
    norms = [nn.utils.clip_grad_norm_(part.parameters(), ppo.max_grad_norm) for part in (model.actor, model.critic)]
    _check(label, [("the loss", loss), ("the actor's gradient norm", norms[0]), ("the critic's gradient norm", norms[1])],
           ro, names, advice or f"lower --inner-lr or [ppo] max_grad_norm (now {now(ppo.max_grad_norm)})")
    return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


def adapt_step(model: ActorCritic, ro: Rollout, ppo: PPOConfig, lr: float, label: str = "adaptation step",
               names: list[str] | None = None) -> None:
    """One SGD step of size ``lr`` on :func:`pg_loss` (actor and critic gradients clipped apart);
    a non-finite loss, gradient or parameter is a :class:`Divergence` naming ``label``."""
    advice = f"lower --inner-lr (now {now(lr)})"
    g = _grads(model, ro, ppo, label, names, advice)
    with torch.no_grad():
        for p, gi in zip(model.parameters(), g):
            p.sub_(lr * gi)
    _check(label, [("the largest parameter after the step", max_abs(model.parameters()))], ro, names, advice)


def adapt(model: ActorCritic, stream: _TaskStream, ppo: PPOConfig, cfg: CompareConfig, steps: int,
          label: str = "adaptation") -> ActorCritic:
    """A copy of ``model`` after ``steps`` adaptation steps on fresh rollouts of ``stream``'s task."""
    m = copy.deepcopy(model)
    for i in range(steps):
        adapt_step(m, stream.rollout(m, cfg.meta_rollout_steps), ppo, cfg.inner_lr,
                   f"{label} step {i + 1}/{steps} on task {stream.suite.names[0]!r}", stream.suite.names)
    return m


# ----------------------------------------------------------------------------- meta-training


def fomaml(tasks: list[Task], ppo: PPOConfig, cfg: CompareConfig, seed: int, init: ActorCritic | None = None,
           on_step=None) -> tuple[ActorCritic, dict[str, int]]:
    """First-order MAML on ``tasks`` (see the module docstring); returns the initialization and
    the environment steps each task consumed."""
    torch.manual_seed(seed)
    model = init if init is not None else build_model(blind_suite(tasks[0]), ppo)
    model.eval()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.meta_lr, eps=1e-5)
    streams = [_TaskStream(t, cfg.meta_envs, seed * 1009 + i) for i, t in enumerate(tasks)]
    iters = meta_iterations(cfg)
    try:
        for it in range(iters):
            label = f"FOMAML meta-iteration {it + 1}/{iters} (seed {seed})"
            total = [torch.zeros_like(p) for p in model.parameters()]
            for s in streams:
                before = s.steps
                adapted = adapt(model, s, ppo, cfg, cfg.inner_steps, f"{label}: inner")
                ro = s.rollout(adapted, cfg.meta_rollout_steps)
                g = _grads(adapted, ro, ppo, f"{label}: meta-gradient on task {s.suite.names[0]!r}", s.suite.names,
                           f"lower --inner-lr (now {now(cfg.inner_lr)})")
                for acc, gi in zip(total, g):
                    acc.add_(gi / len(streams))
                if on_step is not None:
                    on_step(s.steps - before)
            opt.zero_grad(set_to_none=True)
            for p, gi in zip(model.parameters(), total):
                p.grad = gi
            with overflow_guard(label, "the outer Adam step", f"lower meta_lr (now {now(cfg.meta_lr)})"):
                opt.step()
            _check(label, [("the largest parameter after the outer step", max_abs(model.parameters()))], ro, None,
                   f"lower meta_lr (now {now(cfg.meta_lr)})")
    finally:
        for s in streams:
            s.close()
    return model, {t.name: s.steps for t, s in zip(tasks, streams)}


def multitask_init(tasks: list[Task], ppo: PPOConfig, cfg: CompareConfig, seed: int, on_step=None) -> tuple[ActorCritic, dict[str, int]]:
    """Task-blind multi-task PPO on ``tasks``: per iteration one rollout of every task, joined,
    then the project's PPO update; ``meta_iterations x (inner_steps + 1)`` iterations, so every
    task gets the steps it gets under :func:`fomaml`."""
    torch.manual_seed(seed)
    model = build_model(blind_suite(tasks[0]), ppo)
    model.eval()
    opt = torch.optim.Adam(model.parameters(), lr=ppo.learning_rate, eps=1e-5)
    gen = torch.Generator().manual_seed(seed)
    streams = [_TaskStream(t, cfg.meta_envs, seed * 1009 + i) for i, t in enumerate(tasks)]
    iters = meta_iterations(cfg) * (cfg.inner_steps + 1)
    try:
        for it in range(iters):
            ros = [s.rollout(model, cfg.meta_rollout_steps) for s in streams]
            ro = _join(ros)
            # task i's rows carry id i, so that an overflow names its task (n_tasks = 1 and batch normalization ignore ids)
            ro.task_ids = torch.cat([torch.full_like(r.task_ids, i) for i, r in enumerate(ros)])
            for g in opt.param_groups:
                g["lr"] = ppo.learning_rate * (1.0 - it / iters) if ppo.anneal_lr else ppo.learning_rate
            model.train()
            ppo_update(model, opt, ro, ppo.model_copy(update={"norm_adv": "batch"}), 1, ppo.clip_coef, gen,
                       label=f"PPO update {it + 1}/{iters} of meta-multitask (seed {seed})", task_names=[t.name for t in tasks])
            model.eval()
            if on_step is not None:
                on_step(sum(int(r.rewards.numel()) for r in ros))
    finally:
        for s in streams:
            s.close()
    return model, {t.name: s.steps for t, s in zip(tasks, streams)}


def _join(ros: list[Rollout]) -> Rollout:
    cat = lambda f: torch.cat([getattr(r, f) for r in ros], dim=1)  # noqa: E731
    return Rollout(cat("x"), cat("actions"), cat("logprobs"), cat("values"), cat("rewards"), cat("next_values"),
                   cat("terminated"), cat("dones"), torch.cat([r.task_ids for r in ros]),
                   [[x for r in ros for x in r.episode_returns[0]]])


# ----------------------------------------------------------------------------- test time


def select_group(probe_returns: list[float]) -> int:
    """The group whose initialization had the highest mean probe return (ties: lowest index)."""
    if not probe_returns:
        raise ValueError("select_group needs at least one group")
    return int(np.argmax(np.asarray(probe_returns, dtype=float)))


def adapt_heldout(inits: list[ActorCritic], test: TaskSuite, ppo: PPOConfig, cfg: CompareConfig, seed: int,
                  on_step=None) -> dict:
    """Probe, select, adapt and evaluate every held-out task; per-task results."""
    out = {}
    for j, task in enumerate(test.tasks):
        suite = blind_suite(task)
        probe = []
        if len(inits) > 1:
            for m in inits:
                ev = evaluate_policy(m, suite, episodes=cfg.probe_episodes, deterministic=False, seed=cfg.eval_seed + 1)
                probe.append(ev[suite.names[0]])
        g = select_group([p["mean"] for p in probe]) if probe else 0
        stream = _TaskStream(task, cfg.meta_envs, 7_000_003 + seed * 10_007 + j)
        before = evaluate_policy(inits[g], suite, episodes=cfg.episodes, deterministic=cfg.deterministic, seed=cfg.eval_seed)
        adapted = adapt(inits[g], stream, ppo, cfg, cfg.adapt_steps, "test-time adaptation")
        stream.close()
        after = evaluate_policy(adapted, suite, episodes=cfg.episodes, deterministic=cfg.deterministic, seed=cfg.eval_seed)
        b, a = before[suite.names[0]], after[suite.names[0]]
        out[task.name] = {"mean": a["mean"], "std": a["std"], "returns": a["returns"], "before_adaptation": b["mean"],
                          "group": g, "probe_means": [p["mean"] for p in probe],
                          "probe_episodes": len(probe) * cfg.probe_episodes,
                          "adapt_env_steps": stream.steps}
        if on_step is not None:
            on_step(stream.steps)
    return out


# ----------------------------------------------------------------------------- compare units


def key_parts(ctx) -> list:
    c = ctx.cfg
    return ["meta-v1", c.n_test, c.adapt_steps, c.probe_episodes, c.inner_steps, c.inner_lr, c.meta_lr, c.meta_envs,
            c.meta_rollout_steps, heldout_suite(ctx.suite, c.n_test).to_dict()]


def run_meta_unit(ctx, method, seed: int, groups: list[list[int]], info: dict, ppo: PPOConfig, warm: bool, unit_dir: Path,
                  bar) -> tuple[dict, list[Path]]:
    """A compare unit of ``meta-maml`` / ``meta-policygradex`` (FOMAML per group) or
    ``meta-multitask`` (task-blind multi-task PPO as the initialization)."""
    suite, c = ctx.suite, ctx.cfg
    if ppo.net.arch != "mlp":
        raise UserError(f"--methods {method.name}: meta-RL methods use the MLP network, not --arch {ppo.net.arch}")
    test = heldout_suite(suite, c.n_test)
    t0 = time.perf_counter()
    advance = lambda k: bar.advance(k, f"{method.name} seed {seed}")  # noqa: E731
    inits, steps, files = [], {}, []
    for g, tasks in enumerate(groups):
        gtasks = [suite.tasks[t] for t in tasks]
        if method.name == "meta-multitask":
            model, st = multitask_init(gtasks, ppo, c, seed * 1000 + g, advance)
        else:
            model, st = fomaml(gtasks, ppo, c, seed * 1000 + g, on_step=advance)
        steps.update(st)
        inits.append(model)
        path = unit_dir / f"init_{g}.pt"
        total = sum(st.values())
        save_checkpoint(path, model, None, ppo.model_copy(update={"total_steps": total}), blind_suite(gtasks[0]), total,
                        meta_iterations(c), {})
        files.append(path)
    t_train = time.perf_counter() - t0
    per_task = adapt_heldout(inits, test, ppo, c, seed, advance)
    names = list(per_task)
    chosen = [per_task[n]["group"] for n in names]
    result = {
        "method": method.name, "seed": seed, "kind": method.kind,
        "per_task": per_task,
        "mean": float(np.mean([per_task[n]["mean"] for n in names])),
        "mean_before_adaptation": float(np.mean([per_task[n]["before_adaptation"] for n in names])),
        "env_steps_per_task": {name: steps[name] for name in suite.names},
        "env_steps": int(sum(steps.values())),
        "meta_iterations": meta_iterations(c),
        "wall_s": time.perf_counter() - t0, "train_wall_s": t_train,
        "groups": [[suite.names[t] for t in grp] for grp in groups],
        "grouping": info, "arch": ppo.net.arch, "init": "scratch",
        "test": {"n_test": c.n_test, "tasks": names, "params": test.params, "adapt_steps": c.adapt_steps,
                 "adapt_env_steps_per_task": per_task[names[0]]["adapt_env_steps"],
                 "probe_episodes": c.probe_episodes if len(groups) > 1 else 0,
                 "chosen_group_counts": [chosen.count(g) for g in range(len(groups))],
                 "selection_rule": "highest mean return over probe_episodes sampled-action episodes; ties: lowest group index"},
        "policies": [f"init_{g}.pt" for g in range(len(groups))],
    }
    return result, files
