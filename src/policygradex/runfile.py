"""Read TOML input files: the ``--config`` run file (``[ppo]``, ``[estimate]``, ...) and, through
:func:`load_toml`, suite files.

Every way a file can fail to load (missing, a directory, unreadable, not UTF-8, invalid TOML,
nested too deeply for the parser) is one :class:`UserError` naming the file.  A UTF-8
byte-order mark at the start of a file (as some Windows editors write it) is accepted and
dropped.
"""

from __future__ import annotations

import copy
import functools
import os
import tomllib
from pathlib import Path

from .errors import UserError
from . import config

TABLES = ("ppo", "estimate", "group", "validate", "sac", "imported")


# the model each table is checked against on its own, so an error names the file and the table
MODELS = {"ppo": "PPOConfig", "sac": "SACConfig", "estimate": "EstimateConfig", "group": "GroupConfig", "validate": "ValidateConfig",
          "imported": "ImportedConfig"}


def load_toml(path: Path, what: str) -> dict:
    """The TOML file ``path`` as a dict.  ``what`` names the file in errors, e.g.
    ``"--config run.toml"`` or ``"suite file s.toml"``."""
    path = Path(path)
    try:
        if not path.exists():
            raise UserError(f"{what} does not exist")
        if path.is_dir():
            raise UserError(f"{what} is a directory; expected a TOML file")
        if not path.is_file():
            raise UserError(f"{what} is not a regular file; expected a TOML file")
        raw = path.read_bytes()
    except OSError as exc:  # permission denied, a name too long, an I/O error
        raise UserError(f"{what}: cannot read it: {exc.strerror or exc}") from None
    except ValueError as exc:  # an embedded NUL byte in the path
        raise UserError(f"{what}: not a valid file name ({exc})") from None
    try:
        text = raw.decode("utf-8-sig")  # drops a leading UTF-8 byte-order mark, if any
    except UnicodeDecodeError:
        raise UserError(f"{what}: not a UTF-8 text file") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{what}: invalid TOML: {exc}") from None
    except RecursionError:  # tomllib parses nested arrays and inline tables recursively
        raise UserError(f"{what}: arrays or inline tables are nested too deeply to parse (hundreds of levels); "
                        f"allowed: at most {MAX_DEPTH} levels") from None
    _check_depth(data, what)
    return data


#: tables and arrays nested deeper than this are refused: the documented formats need three or
#: four levels, and deeper values (e.g. dotted keys ``kwargs.a.a.a...``, which tomllib parses
#: without recursion) would overflow the stack later, when they are validated, hashed or printed
MAX_DEPTH = 32


def _check_depth(data: dict, what: str) -> None:
    stack = [(data, [], 0)]
    while stack:
        value, loc, depth = stack.pop()
        if depth > MAX_DEPTH:
            shown = ".".join(str(p) for p in loc[:4])
            raise UserError(f"{what}: {shown}...: tables or arrays nested more than {MAX_DEPTH} levels deep; "
                            f"allowed: at most {MAX_DEPTH} levels")
        if isinstance(value, dict):
            stack.extend((v, loc + [k], depth + 1) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, loc + [i], depth + 1) for i, v in enumerate(value))


def read_config(path: Path) -> dict:
    """Every table of the ``--config`` file ``path``, each checked against its model: unknown
    tables and fields, wrong types and out-of-range values are one-line errors naming the file
    and the table.  All tables are checked whichever command reads the file, so a value that
    makes no sense (``[validate] finetune_steps = 0``) is refused by ``run`` too, not only by
    the command that uses it.  A command asks for several tables: the file is read and checked
    once while it is unchanged (its size and modification time)."""
    try:
        st = os.stat(path)
        stamp = (st.st_mtime_ns, st.st_size)
    except (OSError, ValueError):  # missing or unusable: load_toml says so in one line
        stamp = None
    return copy.deepcopy(_read_config(str(path), stamp))


@functools.lru_cache(maxsize=8)
def _read_config(path: str, stamp: tuple[int, int] | None) -> dict:
    what = f"--config {path}"
    data = load_toml(Path(path), what)
    unknown = set(data) - set(TABLES)
    if unknown:
        raise UserError(f"{what}: unknown table {sorted(unknown)[0]!r}; allowed: {', '.join(TABLES)}")

    for section in TABLES:
        if section not in data:
            continue
        sec = data[section]
        if not isinstance(sec, dict):
            raise UserError(f"{what}: {section} must be a table ([{section}])")
        config.parse(getattr(config, MODELS[section]), sec, f"{what}: [{section}]")
    return data


def read_section(path: Path, section: str) -> dict:
    """Table ``section`` of the TOML file ``path`` ({} when absent), after :func:`read_config`
    has checked every table of the file against its model."""
    if section not in TABLES:
        raise ValueError(f"unknown section {section!r}")
    return dict(read_config(Path(path)).get(section, {}))
