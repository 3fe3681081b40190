"""Checkpoints: weights, optimizer, config, suite, versions and per-task returns.

Saved atomically; ``load_checkpoint`` returns a model whose parameters are bit-identical to
the saved ones, and reports a truncated or corrupted file as a user error.  Each checkpoint
holds the sha256 of its own content (``digest``, :func:`artifacts.content_digest`): torch's
zip format does not notice a flipped byte in tensor data, the digest does.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from ..artifacts import content_digest, save_torch, versions
from ..config import PPOConfig
from ..errors import UserError
from ..tasks import TaskSuite
from .networks import ActorCritic, build_actor_critic

FORMAT = "policygradex-checkpoint/1"


def build_model(suite: TaskSuite, cfg: PPOConfig) -> ActorCritic:
    in_dim = int(suite.observation_space.shape[0]) + suite.n
    return build_actor_critic(in_dim, suite.action_space, cfg.net, suite.n)


def save_checkpoint(path: str | Path, model: ActorCritic, optimizer: torch.optim.Optimizer | None, cfg: PPOConfig,
                    suite: TaskSuite, global_step: int, update: int, returns: dict[str, float], rng: dict | None = None) -> None:
    payload = {
        "format": FORMAT,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "config": cfg.model_dump(mode="json"),
        "suite": suite.to_dict(),
        "global_step": global_step,
        "update": update,
        "returns": returns,
        "rng": rng or {},
        "versions": versions(),
    }
    payload["digest"] = content_digest(payload)
    save_torch(path, payload)


def read_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise UserError(f"checkpoint {path} is not a file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, TypeError,
            AttributeError, ImportError, KeyError, IndexError, UnicodeDecodeError, MemoryError) as exc:
        raise UserError(f"checkpoint {path} is truncated or corrupted ({type(exc).__name__}); delete it and rerun") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"checkpoint {path} is not a policygradex checkpoint")
    if "digest" in ckpt:  # checkpoints written before the digest existed are read as they are
        body = {k: v for k, v in ckpt.items() if k != "digest"}
        if content_digest(body) != ckpt["digest"]:
            raise UserError(f"checkpoint {path} is corrupted (content checksum mismatch); delete it and rerun")
    return ckpt


def load_checkpoint(path: str | Path) -> tuple[ActorCritic, TaskSuite, PPOConfig, dict]:
    """(model in eval mode, suite, config, raw checkpoint dict); for a checkpoint of ``rl.sac``
    (``ckpt["algo"] == "sac"``) the model is a ``SACModel`` and the config a ``SACConfig``."""
    ckpt = read_checkpoint(path)
    if ckpt.get("algo") == "sac":  # an MT-SAC checkpoint (rl.sac): a SACModel and its SACConfig
        from .sac import model_from_checkpoint

        model, suite, cfg = model_from_checkpoint(ckpt)
        return model, suite, cfg, ckpt
    suite = TaskSuite.from_dict(ckpt["suite"])
    cfg = PPOConfig.model_validate(ckpt["config"])
    model = build_model(suite, cfg)
    model.load_state_dict(ckpt["model"])
    model.eval()
    return model, suite, cfg, ckpt


def list_checkpoints(directory: str | Path) -> list[Path]:
    d = Path(directory)
    return sorted(d.glob("step_*.pt")) if d.is_dir() else []
