"""Checkpoints: :func:`load_checkpoint` (a checkpoint as a model of the learner that wrote it)
and the format's primitives (:mod:`policygradex.rl.checkpoint_io`, re-exported here).

A checkpoint's ``algo`` field names its learner (absent: ``ppo``, the field predates SAC);
:func:`load_checkpoint` rebuilds the config and the model through that learner
(:func:`policygradex.rl.learners.learner_for`), so a new learner's checkpoints load without a
change here.  ``build_model`` is PPO's (:func:`policygradex.rl.ppo.build_model`).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch

from ..config import PPOConfig, SACConfig
from ..errors import UserError
from ..tasks import TaskSuite
from .checkpoint_io import (EVALUATE_ADVICE, EXPECTED, FORMAT, canonical, list_checkpoints, load_model_state, read_checkpoint,
                            save_checkpoint, spaces_of)
from .learners import learner_for
from .ppo import build_model

__all__ = ["LoadedCheckpoint", "load_checkpoint", "build_model", "FORMAT", "EXPECTED", "canonical", "list_checkpoints",
           "load_model_state", "read_checkpoint", "save_checkpoint", "spaces_of"]


class LoadedCheckpoint(NamedTuple):
    """What :func:`load_checkpoint` returns; unpacks as ``model, suite, config, raw``."""

    model: torch.nn.Module           # in eval mode, on the CPU: ActorCritic (ppo), SACModel (sac), ...
    suite: TaskSuite                 # rebuilt from the checkpoint (every task made now)
    config: PPOConfig | SACConfig    # the learner's config (``Learner.config_type``)
    raw: dict                        # the checkpoint's dict (global_step, returns, optimizer, ...)


def load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """(model in eval mode, suite, config, raw checkpoint dict), the model and config of the
    learner named by the checkpoint's ``algo`` (absent: ``ppo``).

    The suite is rebuilt from the checkpoint (every task made now): an environment that cannot
    be made any more, or whose spaces no longer fit the saved weights, is a one-line error
    naming the checkpoint (and the task and both spaces); so is a learner that is not registered."""
    ckpt = read_checkpoint(path)
    try:
        suite = TaskSuite.from_dict(ckpt["suite"])
    except UserError as exc:  # a task that cannot be made (or checked) any more
        raise UserError(f"checkpoint {path}: {exc}") from None
    try:
        learner = learner_for(str(ckpt.get("algo") or "ppo"))
        cfg = learner.config_type.model_validate(ckpt["config"])
        model = learner.build_model(suite, cfg)
    except UserError as exc:  # an unknown learner; an action space the learner cannot act in any more
        raise UserError(f"checkpoint {path}: {exc}") from None
    load_model_state(model, ckpt, path, suite, advice=EVALUATE_ADVICE)
    model.eval()
    return LoadedCheckpoint(model, suite, cfg, ckpt)
