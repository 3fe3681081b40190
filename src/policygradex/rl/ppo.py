"""Multi-task PPO (CleanRL-style, read top to bottom).

One actor-critic for all tasks of a suite; the task's one-hot id is appended to the
observation.  Each update collects ``num_steps`` steps from ``envs_per_task`` environments
of every task, computes GAE with time-limit bootstrapping, optionally normalizes advantages
per task, and runs ``update_epochs`` epochs of clipped PPO over minibatches.  A checkpoint
(weights, optimizer, config, suite, per-task returns, RNG state) is written every
``checkpoint_every`` updates and at the end; training resumes from the latest checkpoint in
the output directory when the config and suite match.

Resuming is exact: a checkpoint also holds the global torch and numpy RNG states, the running
episode returns and the environments' state (how each current episode began and the actions
since, replayed on resume: ``MultiTaskEnv.state``/``restore``), so training that is killed and
rerun writes the same checkpoints, byte for byte, as training that never stopped (on the CPU).
A truncated or corrupted checkpoint is never resumed from: training restarts from the newest
checkpoint before it and rewrites the rest.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..artifacts import crash_point, write_json
from ..config import PPOConfig
from ..errors import UserError
from ..tasks import TaskSuite
from ..ui import console
from .checkpoint_io import list_checkpoints, load_model_state, read_checkpoint, same_training, save_checkpoint
from .collected import Collected
from .device import resolve_device
from .finite import Divergence, describe, first_nonfinite, max_abs, now, overflow_guard, reward_overflow
from .networks import ActorCritic, build_actor_critic
from .rollout import MultiTaskEnv, Rollout, RolloutCollector


@dataclass
class TrainResult:
    model: ActorCritic
    checkpoints: list[Path]
    history: list[dict]  # one entry per checkpoint: step, update, per-task mean return
    global_step: int
    steps_per_second: float


# (model, per-sample losses [B], task id of each sample [B]) -> None; fills the parameters' .grad
GradSurgery = Callable[[ActorCritic, torch.Tensor, torch.Tensor], None]


def build_model(suite: TaskSuite, cfg: PPOConfig) -> ActorCritic:
    """A fresh actor-critic for the suite: observation ++ the suite's task one-hot in, ``cfg.net``'s body."""
    in_dim = int(suite.observation_space.shape[0]) + suite.n
    return build_actor_critic(in_dim, suite.action_space, cfg.net, suite.n)


def normalize_advantages(adv: torch.Tensor, task_of: torch.Tensor, n_tasks: int) -> torch.Tensor:
    """Standardize advantages within each task (flat tensors)."""
    out = adv.clone()
    for i in range(n_tasks):
        m = task_of == i
        if m.sum() > 1:
            out[m] = (adv[m] - adv[m].mean()) / (adv[m].std() + 1e-8)
    return out


def clipped_surrogate(ratio: torch.Tensor, adv: torch.Tensor, clip: float) -> torch.Tensor:
    """PPO's clipped objective per sample, as a loss: max(-A r, -A clip(r, 1 - eps, 1 + eps))."""
    return torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip))


_F32_MAX = float(torch.finfo(torch.float32).max)


def _divergence(label: str, cfg: PPOConfig, name: str, value: float, ret: torch.Tensor, task_of: torch.Tensor,
                task_names: Sequence[str] | None) -> Divergence:
    """The one-line error for the first non-finite quantity of a PPO minibatch step."""
    lr = f"[ppo] learning_rate (now {now(cfg.learning_rate)})"
    err = reward_overflow(label, ret, task_of, task_names)  # returns too large for float32 losses (value loss, std)
    if err is not None:
        return err
    advice = {
        "the policy loss": f"lower {lr} or clip_coef (now {now(cfg.clip_coef)})",
        "the value loss": f"lower {lr}",
        "the entropy": f"lower {lr}",
        "the loss": f"lower [ppo] ent_coef (now {now(cfg.ent_coef)}) or vf_coef (now {now(cfg.vf_coef)}), or {lr}",
        "the gradient norm": f"lower {lr} or max_grad_norm (now {now(cfg.max_grad_norm)})",
    }.get(name, f"lower {lr}")
    return Divergence(f"{label}: {name} is {describe(value)}; {advice}")


def ppo_update(model: ActorCritic, optimizer: torch.optim.Optimizer, ro: Rollout, cfg: PPOConfig, n_tasks: int,
               clip: float, gen: torch.Generator, grad_surgery: GradSurgery | None = None, label: str = "PPO update",
               task_names: Sequence[str] | None = None) -> dict[str, float]:
    """``grad_surgery(model, per_sample_loss, task_of)``, when given, replaces ``loss.backward()``:
    it must fill the parameters' ``.grad`` from the minibatch's per-sample losses (whose mean is
    the PPO loss) and their task ids, e.g. PCGrad (``policygradex.compare.pcgrad``).

    Divergence is an error at the minibatch step where it appears (:mod:`policygradex.rl.finite`):
    returns that overflow float32 (the task's rewards are too large), and a non-finite loss,
    gradient norm or parameter raise :class:`~policygradex.rl.finite.Divergence` naming ``label``
    (e.g. ``"PPO update 3/8 of ..."``), the quantity and the options to change; ``task_names``
    (suite order) name the task whose rewards overflow."""
    adv, ret = ro.advantages(cfg.gamma, cfg.gae_lambda)
    T, E = ro.rewards.shape
    B = T * E
    x = ro.x.reshape(B, -1)
    a = ro.actions.reshape(B, *ro.actions.shape[2:])
    old_logp = ro.logprobs.reshape(B)
    adv, ret = adv.reshape(B), ret.reshape(B)
    task_of = ro.task_ids.repeat(T)
    if not 1.0 + clip < _F32_MAX:
        raise Divergence(f"{label}: [ppo] clip_coef (now {now(clip)}) overflows float32, the type of the probability ratio "
                         "it clips; use a clip_coef below 1e38 (usual values are 0.1 to 0.3; 10 already leaves the ratio "
                         "practically unclipped)")
    if not bool(torch.isfinite(adv).all() & torch.isfinite(ret).all()):  # GAE overflowed: rewards near float32's max
        raise (reward_overflow(label, torch.maximum(adv.abs(), ret.abs()), task_of, task_names, "returns")
               or Divergence(f"{label}: the advantages are not finite; scale the tasks' rewards down"))
    dev = next(model.parameters()).device  # rollouts are on the CPU; the update runs where the model is
    x, a, old_logp, adv, ret, task_of = (t.to(dev) for t in (x, a, old_logp, adv, ret, task_of))
    if cfg.norm_adv == "task":
        adv = normalize_advantages(adv, task_of, n_tasks)
    n_mb = max(1, B // cfg.minibatch_size)
    mb = B // n_mb
    params = [p for p in model.parameters()]
    stats: dict[str, list[float]] = {"policy_loss": [], "value_loss": [], "entropy": [], "approx_kl": [], "clipfrac": []}
    for _ in range(cfg.update_epochs):
        perm = torch.randperm(B, generator=gen)
        for k in range(n_mb):
            idx = perm[k * mb:(k + 1) * mb].to(dev)
            dist = model.actor.distribution(x[idx])
            logp = dist.log_prob(a[idx])
            logratio = logp - old_logp[idx]
            ratio = logratio.exp()
            a_mb = adv[idx]
            if cfg.norm_adv == "batch" and len(idx) > 1:
                a_mb = (a_mb - a_mb.mean()) / (a_mb.std() + 1e-8)
            pg_per_sample = clipped_surrogate(ratio, a_mb, clip)
            v_per_sample = 0.5 * (model.value(x[idx]) - ret[idx]).pow(2)
            ent_per_sample = dist.entropy()
            pg_loss, v_loss, entropy = pg_per_sample.mean(), v_per_sample.mean(), ent_per_sample.mean()
            loss = pg_loss - cfg.ent_coef * entropy + cfg.vf_coef * v_loss
            optimizer.zero_grad()
            if grad_surgery is None:
                loss.backward()
            else:
                per_sample = pg_per_sample - cfg.ent_coef * ent_per_sample + cfg.vf_coef * v_per_sample
                grad_surgery(model, per_sample, task_of[idx])
            grad_norm = nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            with overflow_guard(label, "the optimizer step", f"lower [ppo] learning_rate (now {now(cfg.learning_rate)})"):
                optimizer.step()
            # one sync for all checks; the diagnosis names the first non-finite quantity
            bad = first_nonfinite([("the policy loss", pg_loss), ("the value loss", v_loss), ("the entropy", entropy),
                                   ("the loss", loss), ("the gradient norm", grad_norm),
                                   ("the largest parameter after the optimizer step", max_abs(params))])
            if bad is not None:
                raise _divergence(label, cfg, *bad, ret[idx], task_of[idx], task_names)
            with torch.no_grad():
                approx_kl = ((ratio - 1) - logratio).mean().item()
            stats["policy_loss"].append(pg_loss.item())
            stats["value_loss"].append(v_loss.item())
            stats["entropy"].append(entropy.item())
            stats["approx_kl"].append(approx_kl)
            stats["clipfrac"].append(((ratio - 1).abs() > clip).float().mean().item())
        if cfg.target_kl is not None and np.mean(stats["approx_kl"][-n_mb:]) > cfg.target_kl:
            break
    return {k: float(np.mean(v)) for k, v in stats.items()}


def ppo_iteration(model: ActorCritic, optimizer: torch.optim.Optimizer, collector: RolloutCollector, cfg: PPOConfig,
                  n_tasks: int, lr: float, gen: torch.Generator,
                  grad_surgery: GradSurgery | None = None, label: str = "PPO update",
                  task_names: Sequence[str] | None = None) -> tuple[Rollout, dict[str, float]]:
    """One PPO iteration: collect ``cfg.num_steps`` steps from every env, then update
    (``label``, ``task_names``: see :func:`ppo_update`)."""
    for g in optimizer.param_groups:
        g["lr"] = lr
    model.eval()
    ro = collector.collect(model, cfg.num_steps, label=label,
                           advice=f"lower [ppo] learning_rate (now {now(cfg.learning_rate)})")
    model.train()
    stats = ppo_update(model, optimizer, ro, cfg, n_tasks, cfg.clip_coef, gen, grad_surgery, label, task_names)
    model.eval()
    return ro, stats


def task_list(suite: TaskSuite, tasks: Sequence[int] | None) -> str:
    """``tasks 'a', 'b'`` (every task of the suite: ``all N tasks of 'suite'``) for messages."""
    if suite.n == 1:
        return f"task {suite.names[0]!r}"
    if tasks is None or len(tasks) == suite.n:
        return f"all {suite.n} tasks of {suite.name!r}"
    names = [suite.names[int(t)] for t in tasks]
    shown = ", ".join(repr(n) for n in names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    return f"task{'s' if len(names) > 1 else ''} {shown}"


@dataclass
class FinetuneResult:
    model: ActorCritic
    snapshots: list[tuple[int, dict[str, torch.Tensor]]]  # (env steps, actor state) after each iteration
    env_steps: int
    wall_s: float


def finetune(model: ActorCritic, suite: TaskSuite, tasks: list[int], cfg: PPOConfig, total_steps: int, seed: int) -> FinetuneResult:
    """Continue PPO from ``model`` (copied, fresh optimizer) on the suite's ``tasks`` only.

    The one-hot width stays the suite's, so the result is comparable with theta*.  The
    learning rate is constant (``cfg.learning_rate``).  The actor's state after every
    iteration is kept, so callers can study the adaptation path.
    """
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    model = copy.deepcopy(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, eps=1e-5)
    gen = torch.Generator().manual_seed(seed)
    env = MultiTaskEnv(suite, cfg.envs_per_task, seed, tasks)
    collector = RolloutCollector(env, gen)
    batch = env.num_envs * cfg.num_steps
    iters = max(total_steps, batch) // batch
    what = f"of fine-tuning on {task_list(suite, tasks)} (seed {seed})"
    steps, snapshots = 0, []
    try:
        while steps + batch <= max(total_steps, batch):
            ppo_iteration(model, optimizer, collector, cfg, suite.n, cfg.learning_rate, gen,
                          label=f"PPO update {steps // batch + 1}/{iters} {what}", task_names=suite.names)
            steps += batch
            snapshots.append((steps, {k: v.detach().clone() for k, v in model.actor.state_dict().items()}))
    except Exception:
        env.close()
        raise
    env.close()
    return FinetuneResult(model, snapshots, steps, time.perf_counter() - t0)


def close_env_and_log(env: MultiTaskEnv, writer) -> None:
    """Release a training loop's environments and its TensorBoard writer (if any)."""
    env.close()
    if writer is not None:
        writer.close()


def _finite_state(state) -> bool:
    """Whether every floating tensor of a state dict is finite (a checkpoint to resume from)."""
    if not isinstance(state, dict):
        return False
    ts = [v for v in state.values() if isinstance(v, torch.Tensor) and v.is_floating_point()]
    return not ts or bool(torch.isfinite(max_abs(ts)))


def _vector_entry(ckpt: dict, suite: TaskSuite) -> dict:
    """A preference suite's history entry part: the mean vector returns of the checkpoint's last
    20 episodes per task (its resume state), as the training wrote them."""
    recent = ((ckpt.get("rng") or {}).get("resume") or {}).get("recent_vec")
    if not recent or not any(recent):
        return {}
    return {"vector_returns": {name: (np.mean(r, axis=0).tolist() if r else None) for name, r in zip(suite.names, recent)}}


def _resume_point(out_dir: Path, cfg: PPOConfig, suite: TaskSuite) -> tuple[dict | None, list[dict]]:
    """The newest checkpoint that every earlier checkpoint checks out up to (None: start afresh),
    and the training history rebuilt from those checkpoints.  A truncated or corrupted checkpoint
    and every later one are recomputed (training is deterministic, so they come back the same)."""
    good, history = None, []
    want_suite = suite.to_dict()
    for path in list_checkpoints(out_dir / "checkpoints"):
        try:
            ckpt = read_checkpoint(path)
        except UserError:
            break
        if not _finite_state(ckpt.get("model")):  # diverged weights (written before divergence was an error): redo
            break
        if not same_training(ckpt.get("config"), cfg) or ckpt.get("suite") != want_suite:
            raise UserError(f"--out {out_dir} holds checkpoints of a different config or suite; choose another --out or delete it")
        good = ckpt
        history.append({"step": ckpt["global_step"], "update": ckpt["update"], "checkpoint": str(path.relative_to(out_dir)),
                        "returns": ckpt["returns"], **_vector_entry(ckpt, suite)})
    return good, history


def train(suite: TaskSuite, cfg: PPOConfig, out_dir: str | Path, tensorboard: str | Path | None = None,
          on_update: Callable[[int, dict[str, float]], None] | None = None) -> TrainResult:
    """Train (or resume) a multi-task PPO policy on ``suite``; checkpoints go to out_dir/checkpoints."""
    # Longer than our usual function on purpose: like CleanRL's single-file PPO, set-up, resume,
    # the update loop and checkpointing read top to bottom in one place (the update itself is
    # ppo_iteration / ppo_update).
    out_dir = Path(out_dir)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)  # global RNGs too: environments may draw from them
    random.seed(cfg.seed)
    model = build_model(suite, cfg).to(resolve_device(cfg.device))  # initialized on the CPU, then moved
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, eps=1e-5)
    gen = torch.Generator().manual_seed(cfg.seed)
    num_updates = cfg.num_updates(suite.n)
    batch = cfg.batch_size(suite.n)
    start_update, global_step, history = 0, 0, []
    env = MultiTaskEnv(suite, cfg.envs_per_task, cfg.seed)
    ckpt, history = _resume_point(out_dir, cfg, suite)
    resume = None
    if ckpt is not None:  # weights that no longer fit the environment's spaces: one line naming both
        load_model_state(model, ckpt, out_dir / history[-1]["checkpoint"], suite)
        optimizer.load_state_dict(ckpt["optimizer"])
        gen.set_state(ckpt["rng"]["generator"])
        start_update, global_step = ckpt["update"], ckpt["global_step"]
        resume = ckpt["rng"].get("resume")
        if resume is None:  # a checkpoint from before exact resume: reseed the environments
            env.reset(seed=cfg.seed + start_update)
        else:
            torch.set_rng_state(resume["torch"])
            np.random.set_state(resume["numpy"])
            if "python" in resume:
                random.setstate(resume["python"])
            if not env.restore(resume["env"]):
                console.print("[yellow]warning:[/] the environments did not replay to their saved state (not deterministic "
                              "given seed and actions?); training resumes, but may differ from an uninterrupted run")
    collector = RolloutCollector(env, gen)
    if resume is not None:
        collector.ep_ret = np.array(resume["ep_ret"], dtype=np.float64)
        if resume.get("ep_vec") is not None:  # preference tasks' running vector returns (absent in older checkpoints)
            collector.ep_vec = np.array(resume["ep_vec"], dtype=np.float64)
    writer = None
    if tensorboard is not None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(tensorboard))
    recent = [deque(maxlen=20) for _ in range(suite.n)]
    recent_vec = [deque(maxlen=20) for _ in range(suite.n)]  # preference tasks: the last 20 episodes' vector returns
    if resume is not None:
        recent = [deque(r, maxlen=20) for r in resume["recent"]]
        recent_vec = [deque(r, maxlen=20) for r in resume.get("recent_vec", [[] for _ in range(suite.n)])]
    else:
        for h in history[-1:]:
            for i, name in enumerate(suite.names):
                if h["returns"].get(name) is not None:
                    recent[i].append(h["returns"][name])
    t0, steps0 = time.perf_counter(), global_step
    try:
        for update in range(start_update + 1, num_updates + 1):
            frac = 1.0 - (update - 1) / num_updates
            lr = cfg.learning_rate * frac if cfg.anneal_lr else cfg.learning_rate
            ro, stats = ppo_iteration(model, optimizer, collector, cfg, suite.n, lr, gen,
                                      label=f"PPO update {update}/{num_updates} of the meta-policy on {task_list(suite, None)}",
                                      task_names=suite.names)
            global_step += batch
            for i, rets in enumerate(ro.episode_returns):
                recent[i].extend(rets)
            for i, vecs in enumerate(ro.episode_vector_returns):
                recent_vec[i].extend(vecs)
            returns = {name: (float(np.mean(recent[i])) if recent[i] else None) for i, name in enumerate(suite.names)}
            vector_returns = ({name: (np.mean(recent_vec[i], axis=0).tolist() if recent_vec[i] else None)
                               for i, name in enumerate(suite.names)} if any(recent_vec) else None)
            sps = (global_step - steps0) / max(time.perf_counter() - t0, 1e-9)
            if writer is not None:
                finite = [r for r in returns.values() if r is not None]
                if finite:
                    writer.add_scalar("charts/episodic_return", float(np.mean(finite)), global_step)
                for name, r in returns.items():
                    if r is not None:
                        writer.add_scalar(f"charts/episodic_return/{name}", r, global_step)
                for name, v in (vector_returns or {}).items():
                    for j, x in enumerate(v or []):
                        writer.add_scalar(f"charts/vector_return/{name}/{j}", x, global_step)
                writer.add_scalar("charts/SPS", sps, global_step)
                writer.add_scalar("charts/learning_rate", lr, global_step)
                for k, v in stats.items():
                    writer.add_scalar(f"losses/{k}", v, global_step)
            if on_update is not None:
                on_update(batch, {**stats, "returns": returns, "sps": sps, "global_step": global_step})
            if update % cfg.checkpoint_every == 0 or update == num_updates:
                path = out_dir / "checkpoints" / f"step_{global_step:09d}.pt"
                state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(), "env": env.state(),
                         "ep_ret": collector.ep_ret.copy(), "recent": [list(d) for d in recent]}
                if collector.ep_vec is not None:
                    state.update(ep_vec=collector.ep_vec.copy(), recent_vec=[list(d) for d in recent_vec])
                save_checkpoint(path, model, optimizer, cfg, suite, global_step, update, returns,
                                {"generator": gen.get_state(), "resume": state})
                history.append({"step": global_step, "update": update, "checkpoint": str(path.relative_to(out_dir)), "returns": returns,
                                **({"vector_returns": vector_returns} if vector_returns is not None else {})})
                write_json(out_dir / "train_history.json", history)
            crash_point(f"train:update:{update}")
        write_json(out_dir / "train_history.json", history)  # also when resumed after the last checkpoint
    except Exception:  # a divergence, a misbehaving environment: release the environments and the log (not on Ctrl-C)
        close_env_and_log(env, writer)
        raise
    close_env_and_log(env, writer)
    elapsed = time.perf_counter() - t0
    model = model.cpu().eval()  # callers (evaluation, the pipeline) work on the CPU
    return TrainResult(model, list_checkpoints(out_dir / "checkpoints"), history, global_step,
                       (global_step - steps0) / elapsed if elapsed > 0 else 0.0)


# ---------------------------------------------------------------------------------------------
# collection of theta*'s transitions with GAE advantages (the features stage)


def collect(model: ActorCritic, suite: TaskSuite, cfg: PPOConfig, transitions_per_task: int, envs_per_task: int,
            heldout_frac: float, seed: int, on_step=None) -> Collected:
    """Roll out theta* (sampled actions) for ``transitions_per_task`` steps of every task over
    ``envs_per_task`` copies, GAE with theta*'s own critic (``cfg.gamma``, ``cfg.gae_lambda``),
    the last ``ceil(heldout_frac * envs_per_task)`` copies of each task held out; rows task-major
    (``policygradex.estimate.collect`` describes the collection)."""
    steps = math.ceil(transitions_per_task / envs_per_task)
    env = MultiTaskEnv(suite, envs_per_task, seed)
    gen = torch.Generator().manual_seed(seed)
    model.eval()
    ro = RolloutCollector(env, gen).collect(model, steps, on_step)
    env.close()
    adv, ret = ro.advantages(cfg.gamma, cfg.gae_lambda)
    T, E = adv.shape
    copy_ = torch.arange(E) % envs_per_task  # env e runs copy (e % envs_per_task) of task e // envs_per_task
    n_held = max(1, math.ceil(heldout_frac * envs_per_task)) if heldout_frac > 0 else 0
    held = (copy_ >= envs_per_task - n_held).unsqueeze(0).expand(T, E)
    # rows ordered task-major so each task's rows are contiguous
    order = torch.argsort(ro.task_ids, stable=True)

    def flat(t: torch.Tensor) -> torch.Tensor:
        t = t[:, order]
        return t.transpose(0, 1).reshape(T * E, *t.shape[2:])

    return Collected(flat(ro.x), flat(ro.actions), flat(adv), flat(ret), flat(ro.task_ids.unsqueeze(0).expand(T, E)),
                     flat(held), ro.episode_returns)


# ---------------------------------------------------------------------------------------------
# one policy per group of tasks under the per-task budget rule (compare; policygradex.compare.train)


@dataclass
class GroupResult:
    model: nn.Module
    tasks: list[int]
    env_steps: dict[int, int]        # task index -> environment steps consumed in training
    iterations: int
    wall_s: float
    train_returns: dict[int, float | None]  # mean of the last 20 finished training episodes per task
    checkpoint: Path | None = None           # SAC: the final checkpoint that its group training wrote


def group_ppo(cfg: PPOConfig, group_size: int, n_tasks: int, rule: str = "same_count") -> PPOConfig:
    """The PPO config of a policy for ``group_size`` of the ``n_tasks`` tasks.

    ``same_count``: the minibatch size is scaled with the policy's batch so that every policy
    makes (as nearly as integer sizes allow) the same number of minibatch steps per epoch as
    the policy on all tasks with the preset's size; ``preset_size``: the preset unchanged.
    """
    if rule == "preset_size" or group_size == n_tasks:
        return cfg
    per_task = cfg.envs_per_task * cfg.num_steps
    ref = max(1, (n_tasks * per_task) // cfg.minibatch_size)
    return cfg.model_copy(update={"minibatch_size": max(1, math.ceil(group_size * per_task / ref))})


def iterations_for(cfg: PPOConfig, steps_per_task: int) -> int:
    """PPO iterations that give every task at least ``steps_per_task`` steps (at least one)."""
    return max(1, math.ceil(steps_per_task / (cfg.envs_per_task * cfg.num_steps)))


def train_group(suite: TaskSuite, tasks: list[int], cfg: PPOConfig, steps_per_task: int, seed: int,
                init_state: dict | None = None, grad_surgery: GradSurgery | None = None,
                on_step: Callable[[int], None] | None = None, context: str | None = None) -> GroupResult:
    """Train one PPO policy on ``tasks`` (suite indices) for ``steps_per_task`` steps per task.

    ``init_state``: a state dict to start from (warm start from theta*), else a fresh network
    from ``cfg.net`` seeded by ``seed``.  ``grad_surgery``: see :func:`ppo_update`.
    ``on_step(n)`` is called with the environment steps of each iteration.  A divergence is a
    :class:`~policygradex.rl.finite.Divergence` naming the update and ``context`` (default: the
    group's tasks and the seed; e.g. the method's name).
    """
    t0 = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(seed)
    model = build_model(suite, cfg)
    if init_state is not None:
        model.load_state_dict(init_state)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, eps=1e-5)
    gen = torch.Generator().manual_seed(seed)
    env = MultiTaskEnv(suite, cfg.envs_per_task, seed, tasks)
    collector = RolloutCollector(env, gen)
    iters = iterations_for(cfg, steps_per_task)
    steps = {int(t): 0 for t in tasks}
    recent: dict[int, list[float]] = {int(t): [] for t in tasks}
    what = context or f"the policy for {task_list(suite, tasks)} (seed {seed})"
    try:
        for it in range(iters):
            lr = cfg.learning_rate * (1.0 - it / iters) if cfg.anneal_lr else cfg.learning_rate
            ro, _ = ppo_iteration(model, optimizer, collector, cfg, suite.n, lr, gen, grad_surgery,
                                  label=f"PPO update {it + 1}/{iters} of {what}", task_names=suite.names)
            T = ro.rewards.shape[0]
            ids, counts = np.unique(ro.task_ids.numpy(), return_counts=True)
            for t, c in zip(ids, counts):
                steps[int(t)] += int(T * c)
            for t in tasks:
                recent[int(t)] = (recent[int(t)] + list(ro.episode_returns[int(t)]))[-20:]
            if on_step is not None:
                on_step(int(T * ro.rewards.shape[1]))
    finally:
        env.close()
    model.eval()
    rets = {t: (float(np.mean(r)) if r else None) for t, r in recent.items()}
    return GroupResult(model, [int(t) for t in tasks], steps, iters, time.perf_counter() - t0, rets)


# ---------------------------------------------------------------------------------------------
# the learner (policygradex.rl.learners)


class PPOLearner:
    """Multi-task PPO as a :class:`policygradex.rl.learners.Learner` (registered as ``"ppo"``)."""

    name = "ppo"
    config_type = PPOConfig
    title = "PPO"

    def check_suite(self, suite: TaskSuite) -> None:
        """Nothing to check: PPO acts in every action space a suite may have (Discrete, 1-D Box)."""

    def progress_total(self, cfg: PPOConfig, n_tasks: int) -> int:
        return cfg.num_updates(n_tasks) * cfg.batch_size(n_tasks)


    def train(self, suite: TaskSuite, cfg: PPOConfig, out_dir: str | Path, tensorboard: str | Path | None = None,
              on_progress: Callable[[int, dict], None] | None = None) -> TrainResult:
        return train(suite, cfg, out_dir, tensorboard, on_progress)

    def build_model(self, suite: TaskSuite, cfg: PPOConfig) -> ActorCritic:
        return build_model(suite, cfg)

    def collect(self, model: ActorCritic, suite: TaskSuite, cfg: PPOConfig, transitions_per_task: int, envs_per_task: int,
                heldout_frac: float, seed: int, on_step=None) -> Collected:
        return collect(model, suite, cfg, transitions_per_task, envs_per_task, heldout_frac, seed, on_step)

    def iterations(self, cfg: PPOConfig, steps_per_task: int) -> int:
        return iterations_for(cfg, steps_per_task)

    def steps_per_iteration(self, cfg: PPOConfig) -> int:
        return cfg.envs_per_task * cfg.num_steps

    def group_config(self, cfg: PPOConfig, group_size: int, n_tasks: int, steps_per_task: int, seed: int,
                     rule: str = "same_count") -> PPOConfig:
        return group_ppo(cfg, group_size, n_tasks, rule).model_copy(update={"seed": seed})

    def group_batch_size(self, cfg: PPOConfig) -> int:
        return cfg.minibatch_size

    def train_group(self, suite: TaskSuite, tasks: list[int], cfg: PPOConfig, steps_per_task: int, seed: int, work_dir: Path,
                    init_state: dict | None = None, grad_surgery: GradSurgery | None = None,
                    on_step: Callable[[int], None] | None = None, context: str | None = None) -> GroupResult:
        return train_group(suite, tasks, cfg, steps_per_task, seed, init_state=init_state, grad_surgery=grad_surgery,
                           on_step=on_step, context=context)

    def save_group_policy(self, path: Path, result: GroupResult, cfg: PPOConfig, suite: TaskSuite,
                          returns: dict[str, float]) -> None:
        total = sum(result.env_steps.values())
        save_checkpoint(path, result.model, None, cfg.model_copy(update={"total_steps": total}), suite, total,
                        result.iterations, returns)


LEARNER = PPOLearner()
