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
    wrappers = []                          # flatten_observation, float_observation, clip_action, rescale_action
    weights = [0.7, 0.3]                   # optional: a preference over an MO-Gymnasium env's objectives

A preference family can instead be listed in two lines (one task per row, named pref-00, ...)::

    env_id = "deep-sea-treasure-v0"
    weights = [[0.9, 0.1], [0.2, 0.8]]

Preference tasks of one environment that publishes a Pareto front get ``true_partition`` from
it unless the file gives one (tasks/mo.py).
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
from .mo import preference_suite


MAX_TASKS = 1000  # a built-in suite's --tasks; each task is an environment made at load time


class SuiteFile(Strict):
    name: str | None = None
    description: str = ""
    success_key: str | None = None
    true_partition: list[list[str]] | None = None
    ppo: dict = Field(default_factory=dict)
    tasks: list[Task] = Field(default_factory=list)
    env_id: str | None = Field(None, min_length=1, description="with weights: the MO-Gymnasium env of a listed preference family")
    weights: list[list[float]] | None = Field(None, min_length=1, description="with env_id: one preference per task")


def load_suite(spec: str, n_tasks: int | None = None, seed: int = 0, profile: str | None = None,
               anchors: int | None = None) -> TaskSuite:
    """A built-in suite by name (``n_tasks``, ``seed`` and ``profile`` feed its generator),
    ``metaworld:<task>,<task>,...``, a TOML file, or ``env:ID`` for a single gymnasium task.

    ``profile`` (``quick`` or ``paper``) picks the budget presets of the suites that have them
    (highway, Meta-World; default quick); the other suites have none and refuse it.
    ``mo:<MO-Gymnasium id>`` draws ``n_tasks`` preferences around ``anchors`` directions
    (tasks/mo.py); ``mo:<id>:objectives`` is one task per objective."""
    if anchors is not None and not spec.startswith("mo:"):
        raise UserError(f"--anchors applies to mo:<MO-Gymnasium id> suites, not --suite {spec}")
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
    if spec.startswith("mo:"):
        return _mo_suite(spec, n_tasks, seed, anchors)
    allowed = (f"allowed: {', '.join(SUITES)}, metaworld:<task>,<task>,..., mo:<MO-Gymnasium id>, a .toml suite file, "
               "or env:<gymnasium id>")
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


def _mo_suite(spec: str, n_tasks: int | None, seed: int, anchors: int | None) -> TaskSuite:
    env_id, _, mode = spec[len("mo:"):].partition(":")
    if not env_id.strip():
        raise UserError(f"--suite {spec!r}: mo: needs an MO-Gymnasium id, e.g. mo:fruit-tree-v0")
    if mode not in ("", "objectives"):
        raise UserError(f"--suite {spec!r}: unknown preference mode {mode!r}; allowed: mo:<id> (drawn around --anchors) "
                        "or mo:<id>:objectives (one task per objective)")
    if mode == "objectives" and (n_tasks is not None or anchors is not None):
        raise UserError(f"--suite {spec}: one task per objective; leave --tasks and --anchors out")
    if n_tasks is not None and not 1 <= n_tasks <= MAX_TASKS:
        raise UserError(f"--tasks must be between 1 and {MAX_TASKS}, got {n_tasks}")
    suite = preference_suite(env_id, n_tasks, anchors, seed, per_objective=mode == "objectives")
    suite.source = {"suite": spec, "tasks": n_tasks, "suite_seed": seed, "profile": None, "anchors": anchors}
    return suite


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
    ppo = parse(PPOConfig, sf.ppo, f"suite file {path}: [ppo]")
    if (sf.env_id is None) != (sf.weights is None):
        raise UserError(f"suite file {path}: env_id and weights go together (a listed preference family); give both or neither")
    if sf.weights is not None and sf.tasks:
        raise UserError(f"suite file {path}: give either [[tasks]] or env_id and weights, not both")
    if sf.weights is None and not sf.tasks:
        raise UserError(f"suite file {path}: tasks: at least one [[tasks]] entry is required (or env_id and weights)")
    prefs = [t for t in sf.tasks if t.weights is not None]
    if sf.weights is not None or (prefs and len(prefs) == len(sf.tasks) and len({t.env_id for t in prefs}) == 1):
        suite = preference_suite(sf.env_id or prefs[0].env_id, name=sf.name or path.stem, gamma=ppo.gamma,
                                 weights=sf.weights, tasks=None if sf.weights is not None else sf.tasks,
                                 ppo_preset=sf.ppo, description=sf.description, true_partition=sf.true_partition,
                                 success_key=sf.success_key)
        return suite
    return TaskSuite(sf.name or path.stem, sf.tasks, sf.true_partition, sf.description, sf.ppo, success_key=sf.success_key)
