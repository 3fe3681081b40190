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
import hashlib
import io
import json
import os
import platform
import sys
import tempfile
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


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[io.IOBase]:
    """Open a temporary file next to ``path``; rename it onto ``path`` on success."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except PermissionError as exc:
        raise UserError(f"output directory {path.parent} is not writable ({exc.strerror})") from exc
    except OSError as exc:
        raise UserError(f"cannot write to {path.parent}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if exc.errno == 28:  # ENOSPC
            raise UserError(f"disk full while writing {path}; free space and rerun (finished stages are kept)") from exc
        raise
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
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


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


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for mod in ("policygradex", "torch", "numpy", "gymnasium", "cvxpy", "sklearn"):
        with contextlib.suppress(Exception):
            out[mod] = __import__(mod).__version__
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
        return json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def stage_is_current(run_dir: str | Path, stage: str, key: str) -> bool:
    """True when ``stage`` finished with the same config key and every file checks out."""
    m = read_manifest(run_dir, stage)
    if m is None or m.get("key") != key:
        return False
    run_dir = Path(run_dir)
    for rel, digest in m.get("files", {}).items():
        f = run_dir / rel
        if not f.exists() or sha256_file(f) != digest:
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
