"""Per-task evaluation by rollouts: mean and std of episode returns, and success rates.

For a suite with a ``success_key`` (Meta-World: ``"success"``) an episode is a success when
``info[success_key]`` is truthy at any of its steps, the rule of Meta-World's own evaluation
(which ends an episode at its first success); the result then also holds ``success_rate`` and
the per-episode ``successes``.

Every episode ends: each environment has a step cap (its own ``max_episode_steps``, else
``tasks.base.DEFAULT_MAX_EPISODE_STEPS``), and an episode cut there counts as truncated, its
return being the sum of the rewards up to the cap.

For a multi-objective preference task (``info["vector_reward"]``, tasks/mo.py) the result also
holds the vector return of each episode: ``vector_mean`` (undiscounted) and
``discounted_vector_mean`` (discounted by ``gamma``, the discount the published Pareto fronts
use; ``morl`` computes hypervolume and expected utility from them).
"""

from __future__ import annotations

import numpy as np
import torch

from ..config import MAX_SEED
from ..errors import UserError
from ..tasks import TaskSuite
from .networks import ActorCritic, env_action, sample_with_noise
from .rollout import MultiTaskEnv, policy_input, step_vectors


def evaluate_policy(model: ActorCritic, suite: TaskSuite, episodes: int = 10, deterministic: bool = True, seed: int = 12345,
                    tasks: list[int] | None = None, gamma: float | None = None) -> dict[str, dict]:
    """Run ``episodes`` episodes of every task (or of ``tasks``), all in parallel; returns
    {task: {mean, std, returns}} (plus ``success_rate`` and ``successes`` when the suite has a
    ``success_key``).  The same seed gives the same environment seeds and action noise (common
    random numbers across policies).  The model may live on any device; actions are sampled
    from CPU noise streams either way.  A ``rl.sac.SACModel`` works too: its actor's ``mode`` is
    the deterministic ``tanh(mu)`` (rescaled to the Box) and its ``sample_with_noise`` squashes
    the same Gaussian noise.  ``gamma``: the discount of the vector returns (default: the
    suite's ``front_gamma``, else its PPO preset's ``gamma``, else 0.99)."""
    if not 0 <= seed <= MAX_SEED:
        raise UserError(f"evaluation seed must be between 0 and {MAX_SEED}, got {seed}")
    if episodes < 1:
        raise UserError(f"evaluation episodes must be at least 1, got {episodes}")
    # every episode ends: the environments have a step cap (tasks.base.DEFAULT_MAX_EPISODE_STEPS
    # unless their own), which truncates the episode, so the loop below cannot run forever
    env = MultiTaskEnv(suite, episodes, seed, tasks)
    obs = env.reset()
    # one noise stream per (task, episode): the same seed gives every policy the same noise
    streams = [np.random.default_rng([seed, int(t), int(c)]) for t, c in zip(env.task_ids, env.copy_ids)]
    E = env.num_envs
    ret = np.zeros(E)
    final = np.full(E, np.nan)
    key = suite.success_key
    success = np.zeros(E, dtype=bool)
    vec: np.ndarray | None = None  # (E, objectives) vector returns, discounted and not
    dvec: np.ndarray | None = None
    disc = np.ones(E)
    g = gamma if gamma is not None else (suite.metadata.get("front_gamma") or suite.ppo_preset.get("gamma") or 0.99)
    space = env.envs.single_action_space
    dev = next(model.parameters()).device
    model.eval()
    while np.isnan(final).any():
        x = policy_input(obs, env.task_ids, suite.n).to(dev)
        if deterministic:
            a = model.actor.mode(x).detach()
        elif model.kind == "categorical":
            a = sample_with_noise(model.actor, x, torch.as_tensor(np.array([r.random() for r in streams])).to(dev))
        else:
            noise = np.stack([r.standard_normal(model.actor.act_dim) for r in streams])
            # an actor with its own sampler (rl.sac's tanh-squashed Gaussian) maps the same noise itself
            sample = getattr(model.actor, "sample_with_noise", None) or (lambda x_, n_: sample_with_noise(model.actor, x_, n_))
            a = sample(x, torch.as_tensor(noise, dtype=torch.float32).to(dev))
        obs, r, term, trunc, info = env.step(env_action(model.kind, a, space))
        live = np.isnan(final)
        ret[live] += r[live]
        done = np.logical_or(term, trunc) & live
        if key is not None:
            success[live] |= step_flags(info, key, np.logical_or(term, trunc))[live]
        v = step_vectors(info, np.logical_or(term, trunc))
        if v is not None:
            if vec is None:
                vec, dvec = np.zeros((E, v.shape[1])), np.zeros((E, v.shape[1]))
            vec[live] += v[live]
            dvec[live] += disc[live, None] * v[live]
            disc[live] *= g
        final[done] = ret[done]
    env.close()
    out = {}
    for i in sorted(set(env.task_ids.tolist())):
        name = suite.names[i]
        rs = final[env.task_ids == i]
        out[name] = {"mean": float(rs.mean()), "std": float(rs.std()), "returns": rs.tolist()}
        if key is not None:
            ok = success[env.task_ids == i]
            out[name].update(success_rate=float(ok.mean()), successes=[bool(v) for v in ok])
        if vec is not None:
            sel = env.task_ids == i
            out[name].update(vector_mean=vec[sel].mean(axis=0).tolist(), discounted_vector_mean=dvec[sel].mean(axis=0).tolist(),
                             vector_returns=vec[sel].tolist(), vector_gamma=float(g))
    return out


def step_flags(info: dict, key: str, done: np.ndarray) -> np.ndarray:
    """``bool(info[key])`` of this step for every env of a vector env (False where absent).

    With same-step autoreset, the info of an env whose episode just ended is its reset info and
    the last step's info sits in ``info["final_info"]``: that one is read for those envs.
    """
    out = np.zeros(len(done), dtype=bool)
    if key in info:
        has = np.asarray(info.get("_" + key, np.ones(len(done), dtype=bool)), dtype=bool)
        out[has] = np.asarray(info[key])[has].astype(bool)
    final = info.get("final_info", {})
    out[done] = False
    if key in final:
        has = np.asarray(final.get("_" + key, np.ones(len(done), dtype=bool)), dtype=bool) & done
        out[has] = np.asarray(final[key])[has].astype(bool)
    return out
