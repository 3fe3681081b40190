"""Shared helpers for benchmark scripts: provenance header and result writing."""

from __future__ import annotations

import datetime as _dt
import os
import subprocess
import sys
from pathlib import Path

from policygradex.artifacts import versions, write_json

RESULTS = Path(__file__).resolve().parent / "results"


def provenance() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=RESULTS.parent).stdout.strip()
    except OSError:
        commit = ""
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "nproc": os.cpu_count(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": commit,
        "versions": versions(),
    }


def save(name: str, results: dict) -> Path:
    path = RESULTS / f"{name}.json"
    write_json(path, {"provenance": provenance(), **results})
    return path
