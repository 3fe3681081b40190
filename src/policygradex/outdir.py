"""Output directories: what a command may write into, its marker, its lock, and the sweep of
stale temporary files.

Every directory a command creates or claims for its outputs holds a marker file
(``.policygradex``), and a command writes only into a directory that is absent, empty, marked,
or an output directory of an earlier version (recognized by its files): nothing of the user's is
overwritten.  One process at a time writes an output directory (a ``.lock`` held with flock),
and a directory inside one that another process writes is refused.  The sweep removes only
temporary files named by :func:`policygradex.artifacts.atomic_open`'s pattern, only where the
project writes.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

from .artifacts import NOT_WRITABLE, _shown, is_project_temp, os_error_message, write_json
from .errors import UserError
from . import __version__

# Every directory a command creates or claims for its outputs holds this marker file, and a
# command writes only into a directory that is absent, empty, marked, or an output directory of
# an earlier version (recognized by its files, see ``_earlier_output``): nothing of the user's is
# overwritten.
MARKER = ".policygradex"
# Subdirectories the project writes below an output directory, where stale temporary files are
# looked for (with the directory itself); anything else below it (a user's folder) is not visited.
PROJECT_SUBDIRS = ("train", "checkpoints", "collect", "features", "validate", "compare")

_command: list[str] = []


def set_command(name: str | None) -> None:
    """The CLI command this process runs (recorded in the markers it writes)."""
    _command[:] = [name] if name else []


def check_dir_path(path: str | Path, flag: str = "--out") -> bool:
    """Refuse, as one line naming ``flag``, a directory path that cannot be used: a symlink loop,
    a name too long for the file system, a component that is a file, an existing non-directory.
    True when the directory exists."""
    if str(path) == "":
        raise UserError(f"{flag}: an empty path is not allowed; give a directory")
    shown = _shown(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise UserError(f"{flag} {shown} is a broken symbolic link; choose another {flag}") from None
        return False
    except OSError as exc:
        raise UserError(path_error_message(exc, path, flag)) from None
    except ValueError as exc:  # an embedded NUL byte
        raise UserError(f"{flag} {shown}: not a valid path ({exc}); choose another {flag}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UserError(f"{flag} {shown} exists and is not a directory; choose another {flag}")
    return True


def path_error_message(exc: OSError, path: str | Path, flag: str) -> str:
    """One line for an OSError met when looking up the directory ``path`` given as ``flag``."""
    shown = _shown(path)
    if exc.errno == errno.ELOOP:
        return f"{flag} {shown}: too many levels of symbolic links (a symlink loop); choose another {flag}"
    if exc.errno == errno.ENAMETOOLONG:
        return (f"{flag} {shown}: the path or a name in it is too long for the file system "
                f"(names are limited to {_name_max(path)} bytes); choose a shorter {flag}")
    if exc.errno == errno.ENOTDIR:
        return f"{flag} {shown}: a component of the path is a file, not a directory; choose another {flag}"
    if exc.errno in NOT_WRITABLE:
        return f"{flag} {shown}: {exc.strerror or 'permission denied'}; choose another {flag}"
    return f"{flag} {shown}: {exc.strerror or exc}; choose another {flag}"


def _name_max(path: str | Path) -> int:
    for p in [Path(path), *Path(path).parents]:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            if p.is_dir():
                return os.pathconf(p, "PC_NAME_MAX")
    return 255


def read_marker(directory: str | Path) -> dict | None:
    """The content of ``directory``'s marker, or None when it has no valid one."""
    try:
        data = json.loads((Path(directory) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("tool") == "policygradex" else None


def _json_file(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _earlier_output(directory: Path) -> str | None:
    """What an unmarked directory is when an earlier version of policygradex made it (a run or
    validate directory, a train directory, a compare directory), else None."""
    conf = _json_file(directory / "config.json")
    if isinstance(conf, dict) and {"suite", "config"} <= conf.keys():
        return "run"
    hist = _json_file(directory / "train_history.json")
    if (isinstance(hist, list) and all(isinstance(h, dict) and "step" in h for h in hist)) or \
            any((directory / "checkpoints").glob("step_*.pt")):
        return "train"
    comp = _json_file(directory / "comparison.json")
    if (isinstance(comp, dict) and "methods" in comp) or any((directory / "compare").glob("*/seed_*.manifest.json")) or \
            (directory / "run").is_dir() and _earlier_output(directory / "run") == "run":
        return "compare"
    return None


def check_output_dir(directory: str | Path, flag: str = "--out") -> None:
    """Refuse (one line naming ``flag``) an output directory that policygradex must not write
    into: a bad path (:func:`check_dir_path`), or an existing directory that is neither empty,
    nor marked as policygradex's (``.policygradex``), nor an earlier version's output
    directory.  Changes nothing on disk."""
    directory = Path(directory)
    if not check_dir_path(directory, flag):
        return
    try:
        with os.scandir(directory) as it:
            empty = next(it, None) is None
    except OSError as exc:
        raise UserError(path_error_message(exc, directory, flag)) from None
    if empty or read_marker(directory) is not None:
        return
    if (directory / MARKER).exists():  # a file of that name that is not our marker: not ours to overwrite
        raise UserError(f"{flag} {_shown(directory)} has a {MARKER} file that policygradex did not write; nothing in it was "
                        f"changed; choose a new or empty directory, or one that policygradex made")
    if _earlier_output(directory) is not None:
        return
    raise UserError(f"{flag} {_shown(directory)} is not empty and is not a policygradex output directory (it has no "
                    f"{MARKER} file); nothing in it was changed; choose a new or empty directory, or one that "
                    f"policygradex made")


def mark_output_dir(directory: str | Path, flag: str = "--out") -> None:
    """Create ``directory`` (given as ``flag``) if needed and mark it as policygradex's (kept if already marked)."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(os_error_message(exc, directory, flag)) from exc
    if read_marker(directory) is None:

        write_json(directory / MARKER, {"tool": "policygradex", "command": _command[0] if _command else "python",
                                        "version": __version__})


_LOCKS: dict[str, Any] = {}


def _refuse_inside_busy_output(directory: Path, flag: str) -> None:
    """Refuse ``directory`` (resolved) when it lies inside an output directory that another
    process holds: claiming it would mark and sweep part of that process's outputs (its
    temporary files among them).  Output directories this process holds (compare's DIR and
    DIR/run) are fine."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no locking
        return
    for parent in directory.parents:
        if str(parent) in _LOCKS or not (parent / MARKER).is_file():
            continue
        try:
            fh = open(parent / ".lock")
        except OSError:
            continue
        with fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)  # released when fh closes
            except BlockingIOError:
                holder = fh.read().strip() or "?"
                raise UserError(f"{flag} {_shown(directory)} is inside {_shown(parent)}, which another policygradex process "
                                f"(pid {holder}) is writing; wait for it to finish or choose another {flag}") from None
            except OSError:  # a filesystem without locks
                continue


@atexit.register
def _release_locks() -> None:
    """Close the lock files at exit (the kernel would drop the locks anyway; this is tidiness)."""
    for fh in _LOCKS.values():
        with contextlib.suppress(OSError):
            fh.close()
    _LOCKS.clear()


def lock_run_dir(directory: str | Path, flag: str = "--out") -> None:
    """Claim ``directory`` for this process's outputs: check it (:func:`check_output_dir`: absent,
    empty, marked or an earlier version's; never a user's directory), mark it (``.policygradex``),
    and hold ``directory/.lock`` (flock) until this process exits, so two processes never write
    one output directory at once; the kernel drops the lock when the process dies, SIGKILL
    included.  Re-entrant within a process.  Then remove the temporary files that killed
    processes left behind (:func:`remove_stale_temps`; they are never read)."""
    directory = Path(directory)
    check_dir_path(directory, flag)
    try:
        key = str(directory.resolve())
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop on older Pythons
        raise UserError(f"{flag} {_shown(directory)}: cannot resolve the path ({exc}); choose another {flag}") from None
    if key in _LOCKS:
        return
    _refuse_inside_busy_output(Path(key), flag)
    check_output_dir(directory, flag)
    mark_output_dir(directory, flag)
    try:
        fh = open(directory / ".lock", "a+")
    except OSError as exc:
        raise UserError(os_error_message(exc, directory)) from exc
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no locking
        _LOCKS[key] = fh
        return
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "?"
        fh.close()
        raise UserError(f"{flag} {directory} is in use by another policygradex process (pid {holder}); "
                        f"wait for it to finish or choose another {flag}") from None
    except OSError:  # a filesystem without locks: go on unlocked
        pass
    with contextlib.suppress(OSError):
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
    _LOCKS[key] = fh
    remove_stale_temps(directory)


def remove_stale_temps(directory: str | Path) -> list[Path]:
    """Delete the temporary files of interrupted atomic writes (names matching exactly
    ``.<name>.policygradex-<12 hex>.tmp``) in ``directory`` and below it in the subdirectories
    the project writes (``PROJECT_SUBDIRS``, at any depth).  Symbolic links are not followed and
    a marked subdirectory (another output directory, perhaps in use) is left to its own owner."""
    root = Path(directory)
    removed: list[Path] = []

    def sweep(d: Path, into: tuple[str, ...] | None) -> None:
        try:
            with os.scandir(d) as it:
                entries = list(it)
        except OSError:
            return
        for e in entries:
            try:
                if e.is_symlink():
                    continue
                if e.is_file() and is_project_temp(e.name):
                    os.unlink(e.path)
                    removed.append(Path(e.path))
                elif e.is_dir() and (into is None or e.name in into) and not (Path(e.path) / MARKER).exists():
                    sweep(Path(e.path), None)
            except OSError:
                continue

    sweep(root, PROJECT_SUBDIRS)
    return removed


