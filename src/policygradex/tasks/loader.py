"""Resolve ``--suite NAME|FILE.toml|env:ID`` to a :class:`TaskSuite`.

A suite file is TOML::

    name = "my-suite"                      # optional, defaults to the file stem
    true_partition = [["a", "b"], ["c"]]   # optional, a known grouping for validation
    [ppo]                                  # optional PPO preset (any PPOConfig field)
    envs_per_task = 4
    [[tasks]]
    name = "a"
    env_id = "CartPole-v1"
    kwargs = {}                            # gymnasium.make keyword arguments
    overrides = { length = 0.25 }          # attributes set on env.unwrapped
    wrappers = []                          # flatten_observation, clip_action, rescale_action
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import Field

from ..config import PPOConfig, Strict, parse
from ..errors import UserError
from .base import Task, TaskSuite
from .builtin import SUITES, single_task


class SuiteFile(Strict):
    name: str | None = None
    description: str = ""
    true_partition: list[list[str]] | None = None
    ppo: dict = Field(default_factory=dict)
    tasks: list[Task] = Field(..., min_length=1)


def load_suite(spec: str, n_tasks: int | None = None, seed: int = 0) -> TaskSuite:
    """A built-in suite by name (``n_tasks`` and ``seed`` feed its generator), a TOML file,
    or ``env:ID`` for a single gymnasium task."""
    if spec in SUITES:
        if n_tasks is not None and n_tasks < 1:
            raise UserError(f"--tasks must be >= 1, got {n_tasks}")
        kwargs = {"seed": seed} if n_tasks is None else {"n": n_tasks, "seed": seed}
        return SUITES[spec](**kwargs)
    if spec.startswith("env:"):
        return single_task(spec[4:])
    path = Path(spec)
    if path.suffix == ".toml" or path.exists():
        return load_suite_file(path)
    raise UserError(f"--suite {spec!r}: unknown suite; allowed: {', '.join(SUITES)}, a .toml suite file, or env:<gymnasium id>")


def load_suite_file(path: Path) -> TaskSuite:
    if not path.is_file():
        raise UserError(f"suite file {path} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"suite file {path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise UserError(f"suite file {path}: not a UTF-8 text file") from None
    sf = parse(SuiteFile, data, f"suite file {path}")
    parse(PPOConfig, sf.ppo, f"suite file {path}: [ppo]")
    return TaskSuite(sf.name or path.stem, sf.tasks, sf.true_partition, sf.description, sf.ppo)
