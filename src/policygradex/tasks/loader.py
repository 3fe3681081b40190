"""Resolve ``--suite NAME|FILE.toml|env:ID`` to a :class:`TaskSuite`.

A suite file is TOML::

    name = "my-suite"                      # optional, defaults to the file stem
    true_partition = [["a", "b"], ["c"]]   # optional, a known grouping for validation
    success_key = "success"                # optional: info key marking an episode's success (any step)
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

import inspect
import unicodedata
from pathlib import Path

from pydantic import Field

from ..config import MAX_SEED, PPOConfig, Strict, parse
from ..errors import UserError
from ..runfile import load_toml
from .base import Task, TaskSuite
from .builtin import SUITES, single_task


MAX_TASKS = 1000  # a built-in suite's --tasks; each task is an environment made at load time


class SuiteFile(Strict):
    name: str | None = None
    description: str = ""
    success_key: str | None = None
    true_partition: list[list[str]] | None = None
    ppo: dict = Field(default_factory=dict)
    tasks: list[Task] = Field(..., min_length=1)


def load_suite(spec: str, n_tasks: int | None = None, seed: int = 0, profile: str | None = None) -> TaskSuite:
    """A built-in suite by name (``n_tasks``, ``seed`` and ``profile`` feed its generator),
    ``metaworld:<task>,<task>,...``, a TOML file, or ``env:ID`` for a single gymnasium task.

    ``profile`` (``quick`` or ``paper``) picks the budget presets of the suites that have them
    (highway, Meta-World; default quick); the other suites have none and refuse it."""
    if profile is not None and not (spec.startswith("metaworld:") or
                                    (spec in SUITES and "profile" in inspect.signature(SUITES[spec]).parameters)):
        with_profiles = [s for s, f in SUITES.items() if "profile" in inspect.signature(f).parameters]
        raise UserError(f"--profile {profile!r}: suite {spec!r} has no profiles; suites with profiles: "
                        f"{', '.join(with_profiles)}, metaworld:<tasks>")
    if not 0 <= seed <= MAX_SEED:
        raise UserError(f"--suite-seed must be between 0 and {MAX_SEED}, got {seed}")
    if spec in SUITES:
        if n_tasks is not None and not 1 <= n_tasks <= MAX_TASKS:
            raise UserError(f"--tasks must be between 1 and {MAX_TASKS}, got {n_tasks}")
        kwargs = {"seed": seed} if n_tasks is None else {"n": n_tasks, "seed": seed}
        if profile is not None:
            kwargs["profile"] = profile
        suite = SUITES[spec](**kwargs)
        suite.source = {"suite": spec, "tasks": n_tasks, "suite_seed": seed, "profile": profile}  # recorded in config.json
        return suite
    if spec.startswith("metaworld:"):
        if n_tasks is not None:
            raise UserError(f"--tasks does not apply to --suite {spec}: list the Meta-World tasks you want instead")
        from .metaworld import custom

        suite = custom(spec[len("metaworld:"):], seed, profile or "quick")
        suite.source = {"suite": spec, "tasks": None, "suite_seed": seed, "profile": profile}  # recorded in config.json
        return suite
    allowed = f"allowed: {', '.join(SUITES)}, metaworld:<task>,<task>,..., a .toml suite file, or env:<gymnasium id>"
    if spec.startswith("env:"):
        if not spec[4:].strip():
            raise UserError(f"--suite {spec!r}: env: needs a gymnasium id, e.g. env:CartPole-v1")
        if n_tasks is not None:
            raise UserError(f"--tasks applies to built-in suites; --suite {spec} is a single task: leave --tasks out")
        return single_task(spec[4:])
    path = Path(spec)
    try:
        exists, is_dir = path.exists(), path.is_dir()
    except (OSError, ValueError) as exc:  # a name too long for the file system, an embedded NUL byte
        shown = spec if len(spec) <= 80 else f"{spec[:60]}...{spec[-20:]}"
        raise UserError(f"--suite {shown!r}: not a built-in suite, and not a usable path ({getattr(exc, 'strerror', None) or exc}); "
                        f"{allowed}") from None
    if is_dir:
        raise UserError(f"--suite {spec} is a directory; {allowed}")
    if path.suffix == ".toml" or exists:
        if n_tasks is not None:
            raise UserError(f"--tasks applies to built-in suites; the suite file {spec} defines its own tasks: "
                            "leave --tasks out (or list fewer tasks in the file)")
        return load_suite_file(path)
    raise UserError(f"--suite {spec!r}: unknown suite; {allowed}")


def _control_char(text: str) -> str | None:
    """The first control character of ``text`` (newline, tab, NUL, DEL, ...) as U+XXXX, or None."""
    for ch in text:
        if unicodedata.category(ch) == "Cc":
            return f"U+{ord(ch):04X}"
    return None


def load_suite_file(path: Path) -> TaskSuite:
    path = Path(path)
    data = load_toml(path, f"suite file {path}")
    sf = parse(SuiteFile, data, f"suite file {path}")
    # names end up in tables, CSV headers, plots and report.md: one line of printable text each
    # (any Unicode letter, symbol or emoji is fine)
    for where, text in [("name", sf.name or "")] + [(f"tasks.{i}.name", t.name) for i, t in enumerate(sf.tasks)]:
        bad = _control_char(text)
        if bad is not None:
            raise UserError(f"suite file {path}: {where}: {text!r} contains the control character {bad}; "
                            "names must be printable text (no newline, tab, NUL or other control characters)")
    parse(PPOConfig, sf.ppo, f"suite file {path}: [ppo]")
    return TaskSuite(sf.name or path.stem, sf.tasks, sf.true_partition, sf.description, sf.ppo, success_key=sf.success_key)
