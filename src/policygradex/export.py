"""A run's groups as task lists (:func:`groups_of`) and as suite files, one per group
(:func:`export_suites`, ``policygradex export RUN_DIR --format suite``), so that the groups can be
trained with any tool: each file is a suite file (docs/suites.md) that ``--suite FILE`` reads back.
"""

from __future__ import annotations

import re
from pathlib import Path

import tomli_w

from . import artifacts as art
from .errors import UserError
from .tasks import TaskSuite

__all__ = ["groups_of", "export_suites"]


def _groups_json(run_dir: Path) -> dict:
    path = Path(run_dir) / "groups.json"
    if not path.is_file():
        raise UserError(f"{run_dir}: no groups.json; run `policygradex run --out {run_dir}` first")
    return art.read_json(path)


def groups_of(run_dir: str | Path) -> list[list[str]]:
    """The run's groups, each a list of task names (``groups.json["groups"]``)."""
    return [list(g) for g in _groups_json(Path(run_dir))["groups"]]


def _task_table(task: dict) -> dict:
    """A task's suite-file entry: its fields without the empty ones (TOML has no null)."""
    return {k: v for k, v in task.items() if v is not None and v != {} and v != []}


def export_suites(run_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """One suite file per group of the run in ``out_dir`` (``<suite>-group<i>.toml``); files that
    already exist are never overwritten (a one-line error names the first, nothing is written)."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    g = _groups_json(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise UserError(f"{run_dir}: no config.json; not a run directory")
    suite = TaskSuite.from_dict(art.read_json(cfg_path)["suite"])
    by_name = {t.name: t for t in suite.tasks}
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", suite.name).strip("-") or "suite"
    paths = [out_dir / f"{stem}-group{i}.toml" for i in range(1, len(g["groups"]) + 1)]
    existing = [p for p in paths if p.exists()]
    if existing:
        raise UserError(f"--out {out_dir}: {existing[0].name} already exists; choose another directory (nothing was written)")
    out_dir.mkdir(parents=True, exist_ok=True)
    verdict = g.get("verdict", {})
    for i, (path, names) in enumerate(zip(paths, g["groups"]), 1):
        doc = {"name": f"{suite.name}-group{i}",
               "description": (f"group {i} of {len(g['groups'])} of `{suite.name}` from {run_dir} "
                               f"(p = {verdict.get('p', g.get('null_p')):.3g}, "
                               f"{'calibrated' if verdict.get('calibrated') else 'not calibrated'})")}
        if suite.success_key:
            doc["success_key"] = suite.success_key
        if suite.ppo_preset:
            doc["ppo"] = dict(suite.ppo_preset)
        doc["tasks"] = [_task_table(by_name[n].model_dump()) for n in names]
        art.write_text(path, tomli_w.dumps(doc))
    return paths
