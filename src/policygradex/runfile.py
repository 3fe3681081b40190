"""Read one table of a TOML run/config file (e.g. ``[ppo]``)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from .errors import UserError

TABLES = ("ppo", "estimate", "group", "validate", "sac")


# the model each table is checked against on its own, so an error names the file and the table
MODELS = {"ppo": "PPOConfig", "sac": "SACConfig", "estimate": "EstimateConfig", "group": "GroupConfig", "validate": "ValidateConfig"}


def read_section(path: Path, section: str) -> dict:
    """Table ``section`` of the TOML file ``path`` ({} when absent), checked against its model:
    unknown fields, wrong types and out-of-range values are one-line errors naming the file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"--config {path} does not exist")
    if not path.is_file():
        raise UserError(f"--config {path} is not a file")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"--config {path}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise UserError(f"--config {path}: cannot read it: {exc.strerror or exc}") from None
    unknown = set(data) - set(TABLES)
    if unknown:
        raise UserError(f"--config {path}: unknown table {sorted(unknown)[0]!r}; allowed: {', '.join(TABLES)}")
    sec = data.get(section, {})
    if not isinstance(sec, dict):
        raise UserError(f"--config {path}: {section} must be a table")
    if section in MODELS:
        from . import config

        model = getattr(config, MODELS[section], None)
        if model is not None:
            config.parse(model, sec, f"--config {path}: [{section}]")
    return sec
