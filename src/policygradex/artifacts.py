"""Run directories, atomic writes, manifests and checksums.

Every artifact is written to a temporary file in the same directory and renamed into place,
so a reader never sees a partial file and a killed run leaves either the old file or the new
one.  Each stage writes a manifest (``<stage>.manifest.json``) holding the hash of the config
it depends on, library versions and the sha256 of every file it produced; ``stage_is_current``
lets the pipeline skip a finished stage and recompute one whose inputs changed or whose files
were truncated or corrupted.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import functools
import hashlib
import importlib.metadata
import io
import json
import math
import os
import platform
import re
import secrets
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from .errors import UserError


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# Test hook (docs/reliability.md): ``POLICYGRADEX_CRASH_AT=<event>`` makes the process SIGKILL
# itself at that event, so tests can kill a run at a chosen point.  Events: ``write:<path>``
# (an atomic write whose target path ends with <path>, killed after its temporary file is
# written, left half-truncated, and before the rename) and ``train:update:<k>`` (after PPO
# update k).  ``POLICYGRADEX_CRASH_SIGNAL=INT`` sends SIGINT (a Ctrl-C) instead of SIGKILL, ``TERM``
# SIGTERM (what batch schedulers and ``docker stop`` send).
# Unset, it costs one dictionary lookup.
CRASH_ENV = "POLICYGRADEX_CRASH_AT"


def crash_point(event: str, tmp: str | None = None) -> None:
    """SIGKILL (or SIGINT) this process when ``event`` matches ``$POLICYGRADEX_CRASH_AT`` (tests only)."""
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return
    kind, _, what = spec.partition(":")
    ekind, _, ewhat = event.partition(":")
    if kind != ekind or not (ewhat == what or (kind == "write" and ewhat.endswith("/" + what))):
        return
    if tmp is not None:  # leave a genuinely partial temporary file behind
        with contextlib.suppress(OSError):
            os.truncate(tmp, os.path.getsize(tmp) // 2)
    import signal

    name = os.environ.get("POLICYGRADEX_CRASH_SIGNAL", "").upper().removeprefix("SIG")
    sig = {"INT": signal.SIGINT, "TERM": signal.SIGTERM}.get(name, signal.SIGKILL)
    if sig == signal.SIGINT and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # a process started in the background by a non-interactive shell inherits SIGINT ignored;
        # the hook stands for a Ctrl-C at a terminal, so it gets Python's usual handler
        signal.signal(signal.SIGINT, signal.default_int_handler)
    os.kill(os.getpid(), sig)  # SIGINT, SIGTERM (under the CLI): KeyboardInterrupt as soon as this returns


DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


# errors of a bad output path met while writing (the CLI reports them as one line, exit code 2)
PATH_ERRORS = {errno.EEXIST, errno.ENOTDIR, errno.ELOOP, errno.ENAMETOOLONG}


def _shown(path: str | Path) -> str:
    """A path for a one-line message (a very long one abbreviated in the middle)."""
    text = str(path)
    return text if len(text) <= 120 else f"{text[:60]}...{text[-40:]}"


def os_error_message(exc: OSError, path: str | Path, flag: str = "--out") -> str:
    """One line for an OSError met while writing ``path`` (under the directory given as ``flag``):
    disk full, not writable, a bad path, or other."""
    path = _shown(path)
    if exc.errno in DISK_FULL:
        return f"disk full while writing {path}; free space and rerun the same command (finished stages are kept)"
    if exc.errno in NOT_WRITABLE:
        return f"cannot write {path}: {exc.strerror or 'permission denied'}; choose a writable {flag}"
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):
        return f"cannot write {path}: a path component is a file, not a directory ({exc.strerror}); choose another {flag}"
    if exc.errno == errno.ELOOP:
        return f"cannot write {path}: too many levels of symbolic links (a symlink loop); choose another {flag}"
    if exc.errno == errno.ENAMETOOLONG:
        return f"cannot write {path}: the path or a name in it is too long for the file system; choose a shorter {flag}"
    return f"cannot write {path}: {exc.strerror or exc}"


# Temporary files of atomic writes are named ``.<name>.policygradex-<12 hex digits>.tmp``: a
# pattern the project owns, so the sweep of stale temporary files (``remove_stale_temps``)
# never touches a user's own ``.*.tmp`` files.  (Earlier versions used ``.<name>.<random>.tmp``,
# which cannot be told apart from a user's files: such leftovers are left alone.)
TEMP_TAG = ".policygradex-"
_TEMP_RE = re.compile(r"\..+\.policygradex-[0-9a-f]{12}\.tmp")


def is_project_temp(name: str) -> bool:
    """True for the name of a temporary file of :func:`atomic_open` (and nothing else)."""
    return _TEMP_RE.fullmatch(name) is not None


def _create_temp(path: Path) -> tuple[int, str]:
    """A new, exclusively created temporary file next to ``path`` (usual permissions, 0666 & ~umask)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.parent / f".{path.name}{TEMP_TAG}{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), str(tmp)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unused temporary file name", str(path))


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[io.IOBase]:
    """Open a temporary file next to ``path``; rename it onto ``path`` on success.

    Any OSError (disk full, read-only or missing directory) becomes a one-line UserError
    naming the path; the temporary file is removed, and ``path`` keeps its old content."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _create_temp(path)
    except OSError as exc:
        raise UserError(os_error_message(exc, path)) from exc
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        crash_point(f"write:{path.as_posix()}", tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise UserError(os_error_message(exc, path)) from exc
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    """``obj`` as strict JSON (RFC 8259): NaN and infinities, which strict parsers refuse, are
    written as ``null``; readers get ``None`` for them."""
    write_text(path, json.dumps(strict_json(obj), indent=2, sort_keys=False, allow_nan=False, default=_json_default) + "\n")


def strict_json(obj: Any) -> Any:
    """A copy of ``obj`` (dicts, lists, tuples, scalars, NumPy values) with every non-finite float as ``None``."""
    if isinstance(obj, float):  # float and np.float64
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if type(obj).__module__ == "numpy":  # NumPy scalars and arrays, without importing NumPy
        return strict_json(_json_default(obj))
    return obj


def _json_default(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def save_torch(path: str | Path, obj: Any) -> None:
    """``torch.save`` through an atomic write."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(path, buf.getvalue())


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def config_hash(obj: Any) -> str:
    """A stable short hash of a JSON-serialisable config."""
    blob = json.dumps(obj, sort_keys=True, default=_json_default).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what ``platform`` says): float
    results can differ across CPU models, so every run and benchmark records it."""
    with contextlib.suppress(OSError, UnicodeDecodeError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


#: The packages whose versions every artifact records: (key, distribution name).
VERSIONED = (("policygradex", "policygradex"), ("torch", "torch"), ("numpy", "numpy"), ("gymnasium", "gymnasium"),
             ("cvxpy", "cvxpy"), ("sklearn", "scikit-learn"))


def versions() -> dict[str, str]:
    """Python, platform, CPU model and the versions of :data:`VERSIONED`, read from the installed
    distributions' metadata (importing cvxpy and scikit-learn for their ``__version__`` would cost a
    training process seconds at its first checkpoint)."""
    out = {"python": sys.version.split()[0], "platform": platform.platform(), "cpu_model": cpu_model()}
    for key, dist in VERSIONED:
        try:
            out[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:  # imported from a source tree, not installed
            version = getattr(sys.modules.get(key), "__version__", None)
            if version is not None:
                out[key] = str(version)
    return out


def manifest_path(run_dir: str | Path, stage: str) -> Path:
    return Path(run_dir) / f"{stage}.manifest.json"


def write_manifest(run_dir: str | Path, stage: str, key: str, files: list[str | Path], extra: dict | None = None) -> None:
    """Record that ``stage`` finished with config hash ``key`` and produced ``files`` (relative to ``run_dir``)."""
    run_dir = Path(run_dir)
    entry = {
        "stage": stage,
        "key": key,
        "versions": versions(),
        "files": {str(f): sha256_file(run_dir / f) for f in files},  # paths relative to run_dir
    }
    if extra:
        entry["extra"] = extra
    write_json(manifest_path(run_dir, stage), entry)


def read_manifest(run_dir: str | Path, stage: str) -> dict | None:
    p = manifest_path(run_dir, stage)
    if not p.exists():
        return None
    try:
        m = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None  # a corrupted manifest means an unfinished stage: it is recomputed
    return m if isinstance(m, dict) and isinstance(m.get("files", {}), dict) else None


def stage_is_current(run_dir: str | Path, stage: str, key: str) -> bool:
    """True when ``stage`` finished with the same config key and every file checks out."""
    m = read_manifest(run_dir, stage)
    if m is None or m.get("key") != key:
        return False
    run_dir = Path(run_dir)
    for rel, digest in m.get("files", {}).items():
        f = run_dir / rel
        if not f.is_file() or sha256_file(f) != digest:
            return False
    return True


def verify_file(path: str | Path, digest: str, what: str) -> None:
    """Raise a UserError when ``path`` does not match the checksum it was written with."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} {path} is missing")
    if sha256_file(path) != digest:
        raise UserError(f"{what} {path} is corrupted or truncated (checksum mismatch); delete it and rerun")


def read_json(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is unreadable or corrupted ({type(exc).__name__}); delete it and rerun") from None


def stage_digest(run_dir: str | Path, stage: str) -> str:
    """Hash of a finished stage's key and file checksums: what it depended on and what it made.
    Downstream keys built from it change whenever the stage's content does."""
    m = read_manifest(run_dir, stage)
    if m is None:
        raise UserError(f"{run_dir} has no finished {stage} stage; run `policygradex run --out {run_dir}` first")
    return config_hash([m.get("key"), m.get("files")])


class Stage:
    """Skip-or-run bookkeeping for one stage of a run directory::

        st = Stage(run_dir, "features", key)
        if not st.current:
            ...compute and write files...
            st.done(["features/manifest.json", ...])   # records checksums and wall time
        downstream_key = config_hash([st.digest, ...])
    """

    def __init__(self, run_dir: str | Path, name: str, key: str):
        self.run_dir, self.name, self.key = Path(run_dir), name, key
        self.t0 = time.perf_counter()

    @property
    def current(self) -> bool:
        return stage_is_current(self.run_dir, self.name, self.key)

    def done(self, files: list[str], extra: dict | None = None) -> None:
        """Record the stage's files, and its wall time (``extra.seconds``) for speedup accounting."""
        write_manifest(self.run_dir, self.name, self.key, files, {"seconds": time.perf_counter() - self.t0, **(extra or {})})

    @property
    def digest(self) -> str:
        return stage_digest(self.run_dir, self.name)


def write_table(path: str | Path, a, columns: list[str], index: list[str] | None = None) -> None:
    """A float matrix as CSV (header = ``columns``, optional row labels); NaN as an empty cell."""
    import math

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(([""] if index is not None else []) + list(columns))
    for r, row in enumerate(a):
        cells = ["" if not math.isfinite(v) else repr(float(v)) for v in row]
        w.writerow(([index[r]] if index is not None else []) + cells)
    write_text(path, buf.getvalue())


def read_table(path: str | Path, index: bool = False):
    """The matrix written by :func:`write_table` (empty cells as NaN)."""
    import numpy as np

    rows = list(csv.reader(io.StringIO(Path(path).read_text())))[1:]
    return np.array([[float(c) if c else float("nan") for c in (r[1:] if index else r)] for r in rows], dtype=float)


def content_digest(obj: Any) -> str:
    """sha256 of a nested structure of dicts, lists, tensors, arrays and scalars, independent
    of how it is serialized: a checkpoint stores the digest of its own content, so a bit flip
    that ``torch.load`` does not notice (tensor data) is still detected on load."""
    h = hashlib.sha256()
    _digest_into(h, obj)
    return h.hexdigest()


def _digest_into(h, obj: Any) -> None:
    import numpy as np
    import torch

    if isinstance(obj, dict):
        h.update(b"{%d" % len(obj))
        for k in sorted(obj, key=repr):
            _digest_into(h, k)
            _digest_into(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(b"[%d" % len(obj))
        for v in obj:
            _digest_into(h, v)
    elif isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, np.ndarray) and obj.dtype != object:
        h.update(f"A{obj.dtype.str}{obj.shape}".encode())
        h.update(np.ascontiguousarray(obj).tobytes())
    elif isinstance(obj, (bytes, bytearray)):
        h.update(b"B%d:" % len(obj) + bytes(obj))
    elif obj is None or isinstance(obj, (bool, int, float, str, np.generic)):
        h.update(f"{type(obj).__name__}:{obj!r};".encode())
    else:
        import pickle

        h.update(b"P" + pickle.dumps(obj, protocol=4))


# --- interruption ---------------------------------------------------------------------------

class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with a one-line account of what was kept on disk."""


def kept_summary(directory: str | Path) -> str:
    """What an interrupted run leaves behind that a rerun will reuse."""
    directory = Path(directory)
    stages = []
    for m in sorted(directory.glob("*.manifest.json"), key=lambda p: p.stat().st_mtime_ns):
        name = m.name[: -len(".manifest.json")]
        if stage_is_current(directory, name, (read_manifest(directory, name) or {}).get("key")):
            stages.append(name)
    ckpts = sorted(directory.glob("checkpoints/step_*.pt")) + sorted(directory.glob("train/checkpoints/step_*.pt"))
    parts = []
    if stages:
        parts.append(f"finished stages {', '.join(stages)}")
    if ckpts:
        parts.append(f"{len(ckpts)} training checkpoint{'s' if len(ckpts) != 1 else ''} "
                     f"(newest {ckpts[-1].relative_to(directory).as_posix()})")
    kept = "; ".join(parts) if parts else "nothing yet"
    return f"interrupted: kept in {directory}: {kept}; rerun the same command to resume"


_GENERIC_INTERRUPT = "interrupted: finished stages and checkpoints are kept; rerun the same command to resume"
_last_interrupt: list[str] = []


@contextlib.contextmanager
def interrupt_summary(directory: str | Path) -> Iterator[None]:
    """Turn Ctrl-C into :class:`Interrupted` saying what ``directory`` keeps (also remembered for
    :func:`interruption_message`: the CLI framework turns Ctrl-C into exit code 130 on its way out)."""
    try:
        yield
    except Interrupted:
        raise
    except KeyboardInterrupt:
        try:
            msg = kept_summary(directory)
        except Exception:  # never let the account of an interruption fail
            msg = _GENERIC_INTERRUPT
        _last_interrupt.append(msg)
        raise Interrupted(msg) from None


def interruption_message() -> str:
    """The account of the latest interruption in this process (a generic line if none)."""
    return _last_interrupt[-1] if _last_interrupt else _GENERIC_INTERRUPT


# --- the CLI's view: empty paths, which option a failing path came from, SIGTERM ----------------

PATH_OPTIONS = ("--out", "--run-dir", "--tensorboard", "--config")


def _path_options(args: list[str]) -> Iterator[tuple[str, str]]:
    """(flag, value) of every path option in a command line (``--out DIR`` and ``--out=DIR``)."""
    for i, a in enumerate(args):
        flag, eq, value = a.partition("=")
        if flag in PATH_OPTIONS:
            if eq:
                yield flag, value
            elif i + 1 < len(args):
                yield flag, args[i + 1]


def refuse_empty_paths(args: list[str]) -> None:
    """An empty path option (an unset shell variable: ``--out "$DIR"``) is one line, not the
    current directory."""
    for flag, value in _path_options(args):
        if value == "":
            raise UserError(f"{flag}: an empty path is not allowed (it is not taken to mean the current directory); "
                            f"give a path, e.g. {flag} {'runs/x' if flag != '--config' else 'run.toml'}")


def option_of_path(args: list[str], path: str | Path | None) -> str | None:
    """The path option of ``args`` whose value ``path`` is, or lies under (the most specific one)."""
    if not path:
        return None
    with contextlib.suppress(OSError, ValueError, TypeError):
        target = Path(os.path.abspath(os.fsdecode(path)))
        best = None
        for flag, value in _path_options(args):
            if value and (target == Path(os.path.abspath(value)) or Path(os.path.abspath(value)) in target.parents):
                if best is None or len(value) > len(best[1]):
                    best = (flag, value)
        return best[0] if best else None
    return None


class TermSignal:
    """SIGTERM handler of the CLI: the first SIGTERM while armed raises KeyboardInterrupt, so the
    command stops as on Ctrl-C (same cleanup, same account of what was kept).  A process forked
    from this one (an environment subprocess) that inherits the handler dies of SIGTERM as usual."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.armed = True
        self.interrupted = False  # a SIGTERM that stopped the command

    def disarm(self) -> None:
        self.armed = False

    def __call__(self, signum, frame) -> None:
        import signal

        if os.getpid() != self.pid:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        if self.armed:
            self.armed = False
            self.interrupted = True
            raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[TermSignal]:
    """Within: SIGTERM (batch schedulers, ``docker stop``) behaves like Ctrl-C (:class:`TermSignal`);
    the previous handler is restored on the way out.  Outside the main thread: nothing changes."""
    import signal

    term = TermSignal()
    try:
        previous = signal.signal(signal.SIGTERM, term)
    except ValueError:  # not the main thread of the main interpreter
        term.disarm()
        yield term
        return
    try:
        yield term
    finally:
        term.disarm()
        signal.signal(signal.SIGTERM, previous)
