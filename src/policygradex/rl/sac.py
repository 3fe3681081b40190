"""Multi-task SAC (MT-SAC) with a per-task entropy temperature: an alternative meta-trainer to
PPO for continuous-control suites (Meta-World).  docs/sac.md states it in METHOD terms.

* **Actor** (:class:`SquashedGaussianActor`): ``u ~ N(mu(x), sigma(x))``, ``a = b + s tanh(u)``
  with ``s, b`` the half-range and centre of the action Box (Meta-World: ``s = 1, b = 0``), so

      log pi(a|x) = log N(u; mu, sigma) - sum_j log(s_j (1 - tanh(u_j)^2)),   u = atanh((a - b) / s).

  ``log_prob(x, a)`` works on one unbatched sample as on a batch (``vmap(grad)`` per-sample
  gradients, as for PPO's actor); ``mode`` is ``b + s tanh(mu)`` (deterministic evaluation) and
  ``sample_with_noise`` the sampled action for given standard-normal noise (common random
  numbers in ``rl.evaluate``).
* **Critics**: twin Q networks ``Q_1, Q_2`` on ``[s, a, one-hot]`` with Polyak-averaged target
  copies; the soft target is ``y = r + gamma (1 - terminated) (min_k Q'_k(s', a') - alpha_i log pi(a'|s'))``.
  A time-limit truncation is *not* terminal: Meta-World's 500-step truncation bootstraps (its
  ``terminated`` is always False), and the replay buffer stores the episode's true last
  observation (``info["final_obs"]``), not the next episode's first.
* **Temperature**: one learned ``log alpha_i`` per task, loss ``-log alpha_i (log pi + H_target)``
  averaged over task i's rows of the batch, ``H_target = -|A|`` by default.
* **Vectorized over tasks**: one replay buffer holding the task id of every transition; each
  update samples one batch uniformly from it (tasks mixed in proportion to their data, equal by
  construction) and the networks see the task's one-hot in their input.
* **Checkpoints**: the PPO checkpoint format and place (``DIR/checkpoints/step_*.pt``, the same
  digest), with ``algo = "sac"`` so that ``rl.checkpoint.load_checkpoint`` rebuilds a
  :class:`SACModel` (through :class:`SACLearner`, the learner registered as ``"sac"`` in
  :mod:`policygradex.rl.learners`; the networks are in :mod:`policygradex.rl.sac_model`); the
  pipeline's choice of theta* loads them unchanged.  The replay buffer is not checkpointed: an
  interrupted SAC training restarts from the beginning (deterministically, rewriting the same
  checkpoints).
* **Gradient features**: :func:`collect` rolls theta* out with sampled actions and computes
  ``A = Q(s, a) - alpha_i log pi(a|s) - V(s)`` with
  ``V(s) = E_{a'~pi}[min_k Q_k(s, a') - alpha_i log pi(a'|s)]`` (``advantage_samples`` samples):
  the score-function form of the SAC actor's objective ``E_pi[Q - alpha log pi]``, whose
  gradient is ``E[grad log pi(a|s) (Q(s,a) - alpha log pi(a|s) - b(s))]``; it has mean 0 under
  pi.  ``advantage = "q_minus_v"`` drops the taken action's ``- alpha log pi(a|s)``: that
  ``Q - V`` has mean ``-alpha H(pi)`` and gives one-sided labels while Q is still flat
  (measured on MT10: 100% negative).  The features stage takes ``grad log pi(a|s)`` of the
  squashed Gaussian (with its tanh correction) like any actor.
* No checkpoint is written before the first update (a policy that has not learned is no
  theta* candidate), except at the end of a run too short to update.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections import deque
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..artifacts import crash_point, write_bytes, write_json
from ..config import SACConfig
from ..errors import UserError
from ..tasks import TaskSuite
from ..ui import console
from .checkpoint_io import list_checkpoints, read_checkpoint, same_training, write_checkpoint
from .collected import Collected
from .device import resolve_device
from .evaluate import step_flags
from .finite import Divergence, describe, first_nonfinite, max_abs, now, overflow_guard, reward_overflow
from .ppo import GradSurgery, GroupResult, TrainResult, close_env_and_log, task_list
from .rollout import MultiTaskEnv, policy_input
from .sac_model import LOG_STD_MAX, LOG_STD_MIN, QNet, SACModel, SquashedGaussianActor, build_model, check_action_space

__all__ = ["LOG_STD_MIN", "LOG_STD_MAX", "SquashedGaussianActor", "QNet", "SACModel", "build_model", "check_action_space",
           "PROFILES", "preset", "target_entropy", "ReplayBuffer", "sac_update", "make_optimizers", "save_checkpoint", "train",
           "collect", "group_sac", "train_group_sac", "SACLearner", "LEARNER", "policy_input"]

#: SAC budgets of the suites with profiles (``--profile quick|paper``: Meta-World, highway), per
#: task; ``preset`` turns them into SACConfig fields for n tasks.  quick: a smoke run (four
#: 500-step episodes per task, the first half episode with random actions); paper: 2M steps per task
#: as in the MT-SAC baselines of Meta-World, a batch of 128 rows per task.
PROFILES = {
    "quick": dict(steps_per_task=2_000, learning_starts_per_task=250, batch_per_task=64, checkpoint_every_per_task=500),
    "paper": dict(steps_per_task=2_000_000, learning_starts_per_task=1_500, batch_per_task=128, checkpoint_every_per_task=100_000),
}


def preset(suite: TaskSuite) -> dict:
    """SACConfig fields of the suite's profile ({} for suites without profiles)."""
    p = PROFILES.get(getattr(suite, "profile", None) or "")
    if p is None:
        return {}
    n = suite.n
    return {"total_steps": p["steps_per_task"] * n, "learning_starts": p["learning_starts_per_task"] * n,
            "batch_size": p["batch_per_task"] * n, "checkpoint_every": p["checkpoint_every_per_task"] * n}


def target_entropy(cfg: SACConfig, act_dim: int) -> float:
    return -float(act_dim) if cfg.target_entropy is None else float(cfg.target_entropy)


# ---------------------------------------------------------------------------------------------
# replay buffer


class ReplayBuffer:
    """A circular buffer of (obs, action, reward, next obs, terminated, task id); NumPy on the CPU."""

    def __init__(self, capacity: int, obs_dim: int, act_dim: int):
        self.capacity = int(capacity)
        self.obs = np.zeros((self.capacity, obs_dim), np.float32)
        self.next_obs = np.zeros((self.capacity, obs_dim), np.float32)
        self.actions = np.zeros((self.capacity, act_dim), np.float32)
        self.rewards = np.zeros(self.capacity, np.float32)
        self.terminated = np.zeros(self.capacity, np.float32)
        self.task = np.zeros(self.capacity, np.int64)
        self.pos, self.size = 0, 0

    def add(self, obs, actions, rewards, next_obs, terminated, task) -> None:
        for k in range(len(task)):
            i = self.pos
            self.obs[i], self.next_obs[i], self.actions[i] = obs[k], next_obs[k], actions[k]
            self.rewards[i], self.terminated[i], self.task[i] = rewards[k], float(terminated[k]), task[k]
            self.pos = (self.pos + 1) % self.capacity
            self.size = min(self.size + 1, self.capacity)

    def sample(self, batch: int, rng: np.random.Generator, n_tasks: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        idx = rng.integers(0, self.size, batch)
        task = self.task[idx]
        x = policy_input(self.obs[idx], task, n_tasks)
        x2 = policy_input(self.next_obs[idx], task, n_tasks)
        out = (x, torch.from_numpy(self.actions[idx]), torch.from_numpy(self.rewards[idx]), x2,
               torch.from_numpy(self.terminated[idx]), torch.from_numpy(task))
        return tuple(t.to(device) for t in out)


# ---------------------------------------------------------------------------------------------
# one update


def sac_update(model: SACModel, opts: dict[str, torch.optim.Optimizer], batch: tuple[torch.Tensor, ...], cfg: SACConfig,
               h_target: float, gen: torch.Generator, label: str = "SAC update",
               task_names: list[str] | None = None) -> dict[str, float]:
    """One SAC step on a batch mixing tasks: twin critics, actor, per-task temperatures, targets.

    Divergence is an error (:mod:`policygradex.rl.finite`): a non-finite loss, gradient or
    parameter raises :class:`~policygradex.rl.finite.Divergence` naming ``label`` (e.g. ``"SAC
    update 57 ..."``), the quantity and the learning rate to lower; rewards too large for float32
    name their task (``task_names``, suite order)."""
    x, a, r, x2, term, task = batch
    n, A = model.n_tasks, model.actor.act_dim
    dev = x.device
    groups = model.parameter_groups()
    alpha = model.log_alpha.detach().exp()[task]
    with torch.no_grad():
        a2, logp2 = model.actor.rsample(x2, torch.randn((len(task), A), generator=gen).to(dev))
        q_next = torch.min(model.q1_target(x2, a2), model.q2_target(x2, a2)) - alpha * logp2
        y = r + cfg.gamma * (1.0 - term) * q_next
    q1, q2 = model.q1(x, a), model.q2(x, a)
    critic_loss = 0.5 * ((q1 - y).pow(2).mean() + (q2 - y).pow(2).mean())
    opts["critic"].zero_grad()
    critic_loss.backward()
    with overflow_guard(label, "the critic's optimizer step", f"lower [sac] critic_lr (now {now(cfg.critic_lr)})"):
        opts["critic"].step()

    a_new, logp = model.actor.rsample(x, torch.randn((len(task), A), generator=gen).to(dev))
    q_new = model.q(x, a_new)
    actor_loss = (alpha * logp - q_new).mean()
    opts["actor"].zero_grad()
    actor_loss.backward()
    with overflow_guard(label, "the actor's optimizer step", f"lower [sac] actor_lr (now {now(cfg.actor_lr)})"):
        opts["actor"].step()

    # per task: the mean over the task's rows of -log alpha_i (log pi + H_target)
    per_row = -model.log_alpha[task] * (logp.detach() + h_target)
    counts = torch.bincount(task, minlength=n).clamp_min(1).to(per_row.dtype)
    alpha_loss = (torch.zeros(n, device=dev).index_add(0, task, per_row) / counts).sum()
    opts["alpha"].zero_grad()
    alpha_loss.backward()
    with overflow_guard(label, "the temperatures' optimizer step", f"lower [sac] alpha_lr (now {now(cfg.alpha_lr)})"):
        opts["alpha"].step()

    with torch.no_grad():
        for net, tgt in ((model.q1, model.q1_target), (model.q2, model.q2_target)):
            for p, pt in zip(net.parameters(), tgt.parameters()):
                pt.lerp_(p, cfg.tau)
    # one sync; a non-finite gradient leaves non-finite parameters after Adam's step, so each
    # group's parameters (not the target critics: averages of the critics) stand for its gradient too
    bad = first_nonfinite([("the critic loss", critic_loss), ("the critics' parameters", max_abs(groups["critic"])),
                           ("the actor loss", actor_loss), ("the actor's parameters", max_abs(groups["actor"])),
                           ("the temperature loss", alpha_loss), ("the temperatures", max_abs(groups["alpha"]))])
    if bad is not None:
        raise _divergence(label, cfg, *bad, r, task, task_names)
    return {"critic_loss": float(critic_loss.detach()), "actor_loss": float(actor_loss.detach()), "alpha_loss": float(alpha_loss.detach()),
            "entropy": float(-logp.detach().mean()), "q": float(q1.detach().mean())}


def _divergence(label: str, cfg: SACConfig, name: str, value: float, r: torch.Tensor, task: torch.Tensor,
                task_names: list[str] | None) -> Divergence:
    """The one-line error for the first non-finite quantity of a SAC update."""
    err = reward_overflow(label, r, task, task_names, "rewards")  # rewards too large for float32 critic losses
    if err is not None:
        return err
    critic, actor, alpha = (f"[sac] critic_lr (now {now(cfg.critic_lr)})", f"[sac] actor_lr (now {now(cfg.actor_lr)})",
                            f"[sac] alpha_lr (now {now(cfg.alpha_lr)})")
    lower = {"critic": f"lower {critic}", "actor": f"lower {actor} (or {critic})", "temperature": f"lower {alpha}"}
    key = next((k for k in lower if k in name), None)
    advice = lower[key] if key is not None else f"lower {actor}, {critic} or {alpha}"
    return Divergence(f"{label}: {name} is {describe(value)}; {advice}")


def make_optimizers(model: SACModel, cfg: SACConfig) -> dict[str, torch.optim.Optimizer]:
    g = model.parameter_groups()
    return {"actor": torch.optim.Adam(g["actor"], lr=cfg.actor_lr), "critic": torch.optim.Adam(g["critic"], lr=cfg.critic_lr),
            "alpha": torch.optim.Adam(g["alpha"], lr=cfg.alpha_lr)}


# ---------------------------------------------------------------------------------------------
# checkpoints (the format of rl.checkpoint, with algo = "sac")


def save_checkpoint(path: Path, model: SACModel, opts: dict, cfg: SACConfig, suite: TaskSuite, global_step: int, update: int,
                    returns: dict, success: dict | None) -> None:
    write_checkpoint(path, {k: v.detach().cpu() for k, v in model.state_dict().items()}, {k: o.state_dict() for k, o in opts.items()},
                     cfg, suite, global_step, update, returns, {}, algo="sac", after_returns={"success_rate": success})


def _check_out_dir(out_dir: Path, cfg: SACConfig, suite: TaskSuite) -> None:
    want_suite = suite.to_dict()
    for path in list_checkpoints(out_dir / "checkpoints"):
        try:
            ckpt = read_checkpoint(path)
        except UserError:
            continue  # rewritten below
        if ckpt.get("algo") != "sac" or not same_training(ckpt.get("config"), cfg) or ckpt.get("suite") != want_suite:
            raise UserError(f"--out {out_dir} holds checkpoints of a different algorithm, config or suite; choose another --out "
                            "or delete it")


# ---------------------------------------------------------------------------------------------
# training


def train(suite: TaskSuite, cfg: SACConfig, out_dir: str | Path, tensorboard: str | Path | None = None,
          on_update: Callable[[int, dict], None] | None = None, tasks: list[int] | None = None,
          init_state: dict | None = None) -> TrainResult:
    """Multi-task SAC on ``suite`` for ``cfg.total_steps`` environment steps (over all tasks).

    Every vector step acts in every environment (uniform random actions before
    ``learning_starts`` transitions), stores the transitions and then makes ``gradient_steps``
    updates of batch ``batch_size``.  Checkpoints every ``checkpoint_every`` environment steps
    and at the end, in ``out_dir/checkpoints``; ``on_update(steps, info)`` after each vector step.

    ``tasks``: train on these suite indices only (a group policy; the one-hot width and the
    per-task temperatures stay the suite's, so the policy is evaluated with the suite's task ids);
    ``init_state``: a :class:`SACModel` state dict to start from (warm start from theta*)."""
    # One function on purpose, as CleanRL writes SAC: seeding, resume, the replay buffer, the
    # act/store/update loop and checkpointing read top to bottom (the update is ``sac_update``).
    out_dir = Path(out_dir)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    model = build_model(suite, cfg)  # initialized on the CPU, then moved
    if init_state is not None:
        model.load_state_dict(init_state)
    dev = resolve_device(cfg.device)
    model.to(dev)
    _check_out_dir(out_dir, cfg, suite)
    if list_checkpoints(out_dir / "checkpoints"):
        console.print("[yellow]note:[/] SAC training does not resume (its replay buffer is not checkpointed): "
                      "training restarts and rewrites the same checkpoints")
    opts = make_optimizers(model, cfg)
    h_target = target_entropy(cfg, model.actor.act_dim)
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    env = MultiTaskEnv(suite, cfg.envs_per_task, cfg.seed, tasks)
    obs = env.reset()
    n, E = suite.n, env.num_envs
    space = suite.action_space
    buf = ReplayBuffer(min(cfg.buffer_size, max(cfg.total_steps, E)), int(obs.shape[1]), model.actor.act_dim)
    acting = model.actor if dev.type == "cpu" else copy.deepcopy(model.actor).cpu()
    writer = None
    if tensorboard is not None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(tensorboard))
    key = suite.success_key
    ep_ret, ep_ok = np.zeros(E), np.zeros(E, dtype=bool)
    recent = [deque(maxlen=20) for _ in range(n)]
    recent_ok = [deque(maxlen=20) for _ in range(n)]
    vec_steps = max(1, math.ceil(cfg.total_steps / E))
    if vec_steps * E < max(cfg.learning_starts, cfg.batch_size):  # legal (a smoke run), but says so
        console.print(f"[yellow]note:[/] SAC makes no update: its {vec_steps * E:,} environment steps stay within the random "
                      f"warm-up (learning_starts {cfg.learning_starts:,}, batch_size {cfg.batch_size:,}); the policy stays at "
                      "its initialization")
    history: list[dict] = []
    global_step, updates, next_ckpt = 0, 0, cfg.checkpoint_every
    stats: dict[str, float] = {}
    what = f"of the {'meta-' if tasks is None else ''}policy on {task_list(suite, tasks)}"
    t0 = time.perf_counter()
    try:
        for it in range(1, vec_steps + 1):
            if global_step < cfg.learning_starts:
                a = rng.uniform(space.low, space.high, size=(E, *space.shape)).astype(np.float32)
            else:
                with torch.no_grad():
                    noise = torch.randn((E, model.actor.act_dim), generator=gen)
                    a = acting.rsample(policy_input(obs, env.task_ids, n), noise)[0].numpy()
                if not np.isfinite(a).all():  # finite but huge weights after the last update
                    raise Divergence(f"SAC update {updates} (environment step {global_step:,} of {vec_steps * E:,}) {what}: the "
                                     f"policy's actions are NaN after this update; lower [sac] actor_lr (now {now(cfg.actor_lr)})")
            next_obs, r, term, trunc, info = env.step(np.clip(a, space.low, space.high).astype(space.dtype))
            done = np.logical_or(term, trunc)
            real_next = np.array(next_obs, dtype=np.float32, copy=True)
            for e in np.flatnonzero(done):
                real_next[e] = info["final_obs"][e]
            buf.add(obs, a, r, real_next, term, env.task_ids)
            ep_ret += r
            if key is not None:
                ep_ok |= step_flags(info, key, done)
            for e in np.flatnonzero(done):
                recent[env.task_ids[e]].append(float(ep_ret[e]))
                recent_ok[env.task_ids[e]].append(bool(ep_ok[e]))
                ep_ret[e], ep_ok[e] = 0.0, False
            obs = next_obs
            global_step += E
            if global_step >= cfg.learning_starts and buf.size >= cfg.batch_size:
                model.train()
                for _ in range(cfg.gradient_steps):
                    stats = sac_update(model, opts, buf.sample(cfg.batch_size, rng, n, dev), cfg, h_target, gen,
                                       f"SAC update {updates + 1} (environment step {global_step:,} of {vec_steps * E:,}) {what}",
                                       suite.names)
                    updates += 1
                model.eval()
                if acting is not model.actor:
                    acting.load_state_dict({k: v.detach().cpu() for k, v in model.actor.state_dict().items()})
            returns = {name: (float(np.mean(recent[i])) if recent[i] else None) for i, name in enumerate(suite.names)}
            success = ({name: (float(np.mean(recent_ok[i])) if recent_ok[i] else None) for i, name in enumerate(suite.names)}
                       if key is not None else None)
            sps = global_step / max(time.perf_counter() - t0, 1e-9)
            alphas = model.log_alpha.detach().exp().cpu().tolist()
            if writer is not None and stats:
                for k, v in stats.items():
                    writer.add_scalar(f"losses/{k}", v, global_step)
                for name, al in zip(suite.names, alphas):
                    writer.add_scalar(f"losses/alpha/{name}", al, global_step)
                finite = [v for v in returns.values() if v is not None]
                if finite:
                    writer.add_scalar("charts/episodic_return", float(np.mean(finite)), global_step)
                writer.add_scalar("charts/SPS", sps, global_step)
            if on_update is not None:
                on_update(E, {**stats, "returns": returns, "success_rate": success, "alpha": alphas, "sps": sps,
                              "global_step": global_step})
            if (global_step >= next_ckpt and updates > 0) or it == vec_steps:
                while next_ckpt <= global_step:
                    next_ckpt += cfg.checkpoint_every
                path = out_dir / "checkpoints" / f"step_{global_step:09d}.pt"
                save_checkpoint(path, model, opts, cfg, suite, global_step, updates, returns, success)
                entry = {"step": global_step, "update": updates, "checkpoint": str(path.relative_to(out_dir)), "returns": returns,
                         "alpha": dict(zip(suite.names, alphas))}
                if success is not None:
                    entry["success_rate"] = success
                history.append(entry)
                write_json(out_dir / "train_history.json", history)
            crash_point(f"train:update:{it}")
    except Exception:  # a divergence, a misbehaving environment: release the environments and the log (not on Ctrl-C)
        close_env_and_log(env, writer)
        raise
    close_env_and_log(env, writer)
    elapsed = time.perf_counter() - t0
    model = model.cpu().eval()
    return TrainResult(model, list_checkpoints(out_dir / "checkpoints"), history, global_step,
                       global_step / elapsed if elapsed > 0 else 0.0)


# ---------------------------------------------------------------------------------------------
# collection of theta*'s transitions with Q - V advantages (the features stage)


def collect(model: SACModel, suite: TaskSuite, cfg: SACConfig, transitions_per_task: int, envs_per_task: int,
            heldout_frac: float, seed: int, on_step=None) -> Collected:
    """Roll out the SAC policy (sampled actions) and compute ``A = Q(s, a) - alpha log pi(a|s) - V(s)``
    per transition (``cfg.advantage = "soft"``; ``Q(s, a) - V(s)`` for ``"q_minus_v"``; ``V`` from
    ``cfg.advantage_samples`` actions of pi); same layout and held-out split as the
    PPO collection (``rl.ppo.collect``).  ``returns`` holds ``Q(s, a)`` (the value
    target the advantage is measured against in the signal-health check)."""
    model = model.cpu().eval()
    steps = math.ceil(transitions_per_task / envs_per_task)
    env = MultiTaskEnv(suite, envs_per_task, seed)
    obs = env.reset()
    gen = torch.Generator().manual_seed(seed)
    n, E = suite.n, env.num_envs
    space = suite.action_space
    ep_ret = np.zeros(E)
    finished: list[list[float]] = [[] for _ in range(n)]
    xs, acts = [], []
    for _ in range(steps):
        x = policy_input(obs, env.task_ids, n)
        a, _ = model.act(x, generator=gen)
        obs, r, term, trunc, _ = env.step(np.clip(a.numpy(), space.low, space.high).astype(space.dtype))
        ep_ret += r
        for e in np.flatnonzero(np.logical_or(term, trunc)):
            finished[env.task_ids[e]].append(float(ep_ret[e]))
            ep_ret[e] = 0.0
        xs.append(x); acts.append(a)
        if on_step is not None:
            on_step(E)
    env.close()
    X, Acts = torch.stack(xs), torch.stack(acts)  # [T, E, in], [T, E, act]
    T = X.shape[0]
    with torch.no_grad():
        xf, af = X.reshape(T * E, -1), Acts.reshape(T * E, -1)
        q = model.q(xf, af)
        v = model.soft_value(xf, cfg.advantage_samples, gen)
        # soft: the taken action's own entropy term too, so that E_pi[A] = 0 (see module docstring)
        soft_q = q - model.alpha(xf) * model.actor.log_prob(xf, af) if cfg.advantage == "soft" else q
    adv, ret = (soft_q - v).reshape(T, E), q.reshape(T, E)
    task_ids = torch.as_tensor(env.task_ids)
    copy_ = torch.arange(E) % envs_per_task
    n_held = max(1, math.ceil(heldout_frac * envs_per_task)) if heldout_frac > 0 else 0
    held = (copy_ >= envs_per_task - n_held).unsqueeze(0).expand(T, E)
    order = torch.argsort(task_ids, stable=True)

    def flat(t: torch.Tensor) -> torch.Tensor:
        t = t[:, order]
        return t.transpose(0, 1).reshape(T * E, *t.shape[2:])

    return Collected(flat(X), flat(Acts), flat(adv), flat(ret), flat(task_ids.unsqueeze(0).expand(T, E)), flat(held), finished)


# ---------------------------------------------------------------------------------------------
# one policy per group of tasks under the per-task budget rule (compare; policygradex.compare.train)


def group_sac(cfg: SACConfig, group_size: int, n_tasks: int, steps_per_task: int, seed: int,
              rule: str = "same_count") -> SACConfig:
    """The SAC config of a policy for ``group_size`` of the ``n_tasks`` tasks: ``envs_per_task``
    environments of each of its tasks for ``steps_per_task`` steps of every task (whole vector
    steps); the random-action warm-up is ``learning_starts * s / n`` steps (the same per task as
    the all-task policy) and, with ``same_count``, the batch is ``ceil(batch_size * s / n)`` rows
    (the same rows per task and update as the all-task policy)."""
    frac = group_size / n_tasks
    total = math.ceil(steps_per_task / cfg.envs_per_task) * cfg.envs_per_task * group_size  # whole vector steps
    update = {"total_steps": total, "checkpoint_every": total, "seed": seed,
              "learning_starts": math.ceil(cfg.learning_starts * frac)}
    if rule == "same_count":
        update["batch_size"] = max(1, math.ceil(cfg.batch_size * frac))
    return cfg.model_copy(update=update)


def train_group_sac(suite: TaskSuite, tasks: list[int], cfg: SACConfig, work_dir: Path, init_state: dict | None = None,
                    on_step: Callable[[int], None] | None = None) -> GroupResult:
    """Train one multi-task SAC policy on ``tasks`` with ``cfg`` from :func:`group_sac`; the
    run's checkpoints and ``train_history.json`` go to ``work_dir`` (``GroupResult.checkpoint`` is
    the final one)."""
    t0 = time.perf_counter()
    res = train(suite, cfg, work_dir, on_update=(lambda k, _info: on_step(k)) if on_step is not None else None,
                tasks=[int(t) for t in tasks], init_state=init_state)
    per_task = res.global_step // len(tasks)
    last = res.history[-1]["returns"] if res.history else {}
    rets = {int(t): last.get(suite.names[int(t)]) for t in tasks}
    return GroupResult(res.model, [int(t) for t in tasks], {int(t): per_task for t in tasks},
                       math.ceil(cfg.total_steps / (len(tasks) * cfg.envs_per_task)), time.perf_counter() - t0, rets,
                       res.checkpoints[-1] if res.checkpoints else None)


# ---------------------------------------------------------------------------------------------
# the learner (policygradex.rl.learners)


class SACLearner:
    """Multi-task SAC as a :class:`policygradex.rl.learners.Learner` (registered as ``"sac"``);
    an iteration is one vector step (one step of every environment)."""

    name = "sac"
    config_type = SACConfig
    title = "SAC"

    def check_suite(self, suite: TaskSuite) -> None:
        check_action_space(suite.action_space, suite.name)

    def progress_total(self, cfg: SACConfig, n_tasks: int) -> int:
        envs = n_tasks * cfg.envs_per_task
        return max(1, math.ceil(cfg.total_steps / envs)) * envs


    def train(self, suite: TaskSuite, cfg: SACConfig, out_dir: str | Path, tensorboard: str | Path | None = None,
              on_progress: Callable[[int, dict], None] | None = None) -> TrainResult:
        return train(suite, cfg, out_dir, tensorboard, on_progress)

    def build_model(self, suite: TaskSuite, cfg: SACConfig) -> SACModel:
        return build_model(suite, cfg)

    def collect(self, model: SACModel, suite: TaskSuite, cfg: SACConfig, transitions_per_task: int, envs_per_task: int,
                heldout_frac: float, seed: int, on_step=None) -> Collected:
        return collect(model, suite, cfg, transitions_per_task, envs_per_task, heldout_frac, seed, on_step)

    def iterations(self, cfg: SACConfig, steps_per_task: int) -> int:
        return max(1, math.ceil(steps_per_task / cfg.envs_per_task))

    def steps_per_iteration(self, cfg: SACConfig) -> int:
        return cfg.envs_per_task

    def group_config(self, cfg: SACConfig, group_size: int, n_tasks: int, steps_per_task: int, seed: int,
                     rule: str = "same_count") -> SACConfig:
        return group_sac(cfg, group_size, n_tasks, steps_per_task, seed, rule)

    def group_batch_size(self, cfg: SACConfig) -> int:
        return cfg.batch_size

    def train_group(self, suite: TaskSuite, tasks: list[int], cfg: SACConfig, steps_per_task: int, seed: int, work_dir: Path,
                    init_state: dict | None = None, grad_surgery: GradSurgery | None = None,
                    on_step: Callable[[int], None] | None = None, context: str | None = None) -> GroupResult:
        """``cfg`` from :meth:`group_config` (it holds the budget and the seed); no gradient surgery."""
        if grad_surgery is not None:
            raise ValueError("SAC has no gradient surgery (PCGrad is a PPO update)")
        return train_group_sac(suite, tasks, cfg, work_dir, init_state=init_state, on_step=on_step)

    def save_group_policy(self, path: Path, result: GroupResult, cfg: SACConfig, suite: TaskSuite,
                          returns: dict[str, float]) -> None:
        """The group training's final checkpoint, as it is."""
        write_bytes(path, result.checkpoint.read_bytes())


LEARNER = SACLearner()
