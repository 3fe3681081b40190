"""Read one table of a TOML run/config file (e.g. ``[ppo]``)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from .errors import UserError


def read_section(path: Path, section: str) -> dict:
    if not Path(path).is_file():
        raise UserError(f"--config {path} does not exist")
    try:
        data = tomllib.loads(Path(path).read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"--config {path}: invalid TOML: {exc}") from None
    unknown = set(data) - {"ppo", "estimate", "group"}
    if unknown:
        raise UserError(f"--config {path}: unknown table {sorted(unknown)[0]!r}; allowed: ppo, estimate, group")
    sec = data.get(section, {})
    if not isinstance(sec, dict):
        raise UserError(f"--config {path}: {section} must be a table")
    return sec
