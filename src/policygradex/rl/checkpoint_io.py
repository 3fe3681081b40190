"""The checkpoint format: weights, optimizer, config, suite, versions and per-task returns.

The primitives every learner shares (:data:`FORMAT`, :func:`read_checkpoint`, :func:`canonical`,
:func:`spaces_of`, :func:`load_model_state`, :func:`list_checkpoints`, the PPO writer
:func:`save_checkpoint` and the messages); this module imports no learner.  Loading a checkpoint
as a model (which learner built it) is :func:`policygradex.rl.checkpoint.load_checkpoint`.

Saved atomically; ``load_checkpoint`` returns a model whose parameters are bit-identical to
the saved ones, and reports a truncated or corrupted file as a user error.  Each checkpoint
holds the sha256 of its own content (``digest``, :func:`artifacts.content_digest`): torch's
zip format does not notice a flipped byte in tensor data, the digest does.

Resumed training writes the same bytes as training that never stopped: the numpy arrays of the
RNG and environment state are saved with numpy's canonical dtype objects (:func:`canonical`),
because pickle memoizes a dtype object shared by many arrays, and arrays that come back from a
checkpoint (the replayed actions of an environment's current episode) would otherwise each
carry their own.  A file that is not a checkpoint (``groups.json``, a feature file) and a
checkpoint of an environment whose spaces changed since are one-line errors saying so.
"""

from __future__ import annotations

import codecs
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..artifacts import content_digest, save_torch, versions
from ..config import PPOConfig
from ..errors import UserError
from ..tasks import TaskSuite
from .networks import ActorCritic

FORMAT = "policygradex-checkpoint/1"


def canonical(obj: Any) -> Any:
    """``obj`` (dicts, lists, tuples) with every numpy array copied onto numpy's canonical dtype
    object: the same content then pickles to the same bytes wherever its arrays came from."""
    if isinstance(obj, dict):
        return {k: canonical(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(canonical(v) for v in obj)
    if isinstance(obj, np.ndarray) and obj.dtype.kind in "biufc":
        return obj.astype(np.dtype(obj.dtype.str))
    return obj


def spaces_of(suite: TaskSuite) -> dict[str, str]:
    return {"observation": str(suite.observation_space), "action": str(suite.action_space)}


def save_checkpoint(path: str | Path, model: ActorCritic, optimizer: torch.optim.Optimizer | None, cfg: PPOConfig,
                    suite: TaskSuite, global_step: int, update: int, returns: dict[str, float], rng: dict | None = None) -> None:
    write_checkpoint(path, model.state_dict(), optimizer.state_dict() if optimizer is not None else None, cfg, suite,
                     global_step, update, returns, canonical(rng or {}))


def write_checkpoint(path: str | Path, model_state: dict, optimizer_state: Any, cfg, suite: TaskSuite, global_step: int,
                     update: int, returns: dict, rng: dict, algo: str | None = None, after_returns: dict | None = None) -> None:
    """A checkpoint file of any learner: ``algo`` names a learner other than PPO (absent: PPO),
    ``after_returns`` holds a learner's own entries (SAC: ``success_rate``).  The payload's digest
    (its content's sha256) goes in with it."""
    payload = {"format": FORMAT, **({"algo": algo} if algo is not None else {}), "model": model_state,
               "optimizer": optimizer_state, "config": cfg.model_dump(mode="json"), "suite": suite.to_dict(),
               "spaces": spaces_of(suite), "global_step": global_step, "update": update, "returns": returns,
               **(after_returns or {}), "rng": rng, "versions": versions()}
    payload["digest"] = content_digest(payload)
    save_torch(path, payload)


def same_training(saved_config: Any, cfg) -> bool:
    """Whether a checkpoint's saved config trains as ``cfg`` does: equal in every field that enters
    the train stage's key (``StageConfig.cache_key``), so that threads and device may differ
    between the run that wrote it and the run that resumes from it."""
    try:
        return type(cfg).model_validate(saved_config).cache_key() == cfg.cache_key()
    except (ValueError, TypeError):  # pydantic's ValidationError is a ValueError: another config
        return False


def read_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise UserError(f"checkpoint {path} is not a file")
    try:
        with path.open("rb") as f:
            head = f.read(64)
    except OSError as exc:
        raise UserError(f"checkpoint {path} cannot be read: {exc.strerror or exc}") from None
    if not head.startswith(b"PK\x03\x04"):  # every checkpoint is a torch zip file
        raise UserError(f"{path} is not a policygradex checkpoint ({_kind_of(head)}); {EXPECTED}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, TypeError,
            AttributeError, ImportError, KeyError, IndexError, UnicodeDecodeError, MemoryError) as exc:
        raise UserError(f"checkpoint {path} is truncated or corrupted ({type(exc).__name__}); delete it and rerun") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not a policygradex checkpoint (a torch file of other content: {_content_of(ckpt)}); "
                        f"{EXPECTED}")
    if "digest" in ckpt:  # checkpoints written before the digest existed are read as they are
        body = {k: v for k, v in ckpt.items() if k != "digest"}
        if content_digest(body) != ckpt["digest"]:
            raise UserError(f"checkpoint {path} is corrupted (content checksum mismatch); delete it and rerun")
    return ckpt


EXPECTED = ("expected a checkpoint written by train or run: a step_*.pt file in a run's train/checkpoints/ "
            "(or in train --out DIR's checkpoints/)")


def _kind_of(head: bytes) -> str:
    """What the first bytes of a file that is not a torch zip file look like, for messages."""
    text = head.lstrip()
    if not head:
        return "an empty file"
    if text[:1] in (b"{", b"["):
        return "a JSON file, e.g. a run artifact such as groups.json"
    if head.startswith(b"\x89PNG"):
        return "a PNG image"
    try:
        if any(b < 9 or 13 < b < 32 for b in head):  # control characters: not text
            raise UnicodeDecodeError("utf-8", head, 0, 1, "control character")
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)  # a character cut at the end is fine
    except UnicodeDecodeError:
        return "a binary file that is not a torch zip file: another kind of file, or a checkpoint corrupted at its start"
    return "a text file"


def _content_of(obj: Any) -> str:
    if isinstance(obj, dict):
        keys = ", ".join(sorted(map(str, obj))[:5])
        return f"a dict with keys {keys}{', ...' if len(obj) > 5 else ''}" if obj else "an empty dict"
    return type(obj).__name__


EVALUATE_ADVICE = "evaluate the checkpoint with the environment it was trained on, or train again"


def load_model_state(model: torch.nn.Module, ckpt: dict, path: str | Path, suite: TaskSuite,
                     advice: str = "choose another --out or delete it") -> None:
    """``model.load_state_dict(ckpt["model"])``; weights that do not fit the model built for the
    suite's current spaces (the environment changed since the checkpoint was written) are a
    one-line :class:`UserError` naming the checkpoint, the task and both spaces, then ``advice``
    (resumed training: the default)."""
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        if not _does_not_fit(exc):
            raise
        raise UserError(_spaces_changed(path, ckpt, suite, advice)) from None


def _does_not_fit(exc: RuntimeError) -> bool:
    return any(s in str(exc) for s in ("size mismatch", "Missing key", "Unexpected key"))


def _spaces_changed(path: str | Path, ckpt: dict, suite: TaskSuite, advice: str) -> str:
    """The one line for a checkpoint whose weights do not fit the spaces its tasks have now."""
    now = spaces_of(suite)
    task = suite.tasks[0]
    who = f"task {task.name!r}" + (f" ({task.env_id})" if task.env_id != task.name else "")
    saved = ckpt.get("spaces")
    if saved is not None:
        diff = [k for k in ("observation", "action") if saved.get(k) != now[k]] or ["observation", "action"]
        then = " and ".join(f"{k} space {saved.get(k)}" for k in diff)
        nows = " and ".join(f"{k} space {now[k]}" for k in diff)
    else:  # a checkpoint from before the spaces were saved: the input width of the saved weights
        w = next((v for k, v in ckpt["model"].items() if k.endswith("weight") and getattr(v, "ndim", 0) == 2), None)
        then = f"{int(w.shape[1]) - suite.n} observation values" if w is not None else "other spaces"
        nows = f"observation space {now['observation']} and action space {now['action']}"
    return f"checkpoint {path} was trained on {then}, but {who} now has {nows}; the environment changed since training: {advice}"


def list_checkpoints(directory: str | Path) -> list[Path]:
    d = Path(directory)
    return sorted(d.glob("step_*.pt")) if d.is_dir() else []
