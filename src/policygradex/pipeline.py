"""The paper's algorithm, top to bottom, as calls of the stages (no maths here)."""

from __future__ import annotations

from pathlib import Path

from .config import PPOConfig
from .rl.ppo import TrainResult, train
from .tasks import TaskSuite
from .ui import progress_bar


def train_meta_policy(suite: TaskSuite, cfg: PPOConfig, out_dir: str | Path, tensorboard: str | Path | None = None) -> TrainResult:
    """Stage 1: multi-task PPO on all tasks, with a progress bar (steps/s, mean return, ETA)."""
    total = cfg.num_updates(suite.n) * cfg.batch_size(suite.n)
    with progress_bar(total, f"train {suite.name}") as bar:
        def on_update(steps: int, info: dict) -> None:
            finite = [r for r in info["returns"].values() if r is not None]
            text = f"return mean {sum(finite) / len(finite):.1f} min {min(finite):.1f}" if finite else ""
            bar.advance(steps, text)

        return train(suite, cfg, out_dir, tensorboard, on_update)
