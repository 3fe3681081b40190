"""Shared helpers for benchmark scripts: provenance header (command, machine, CPU model, load
average, commit, versions) and result writing."""

from __future__ import annotations

import datetime as _dt
import os
import subprocess
import sys
import time
from pathlib import Path

from policygradex.artifacts import versions, write_json

RESULTS = Path(__file__).resolve().parent / "results"


def provenance() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=RESULTS.parent).stdout.strip()
    except OSError:
        commit = ""
    vers = versions()
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "nproc": os.cpu_count(),
        # float results (and so training outcomes) differ across CPU models; timings depend on the load
        "cpu_model": vers.get("cpu_model", "unknown"),
        "load_average": load_average(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": commit,
        "versions": vers,
    }


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages when the result is saved (None where unsupported)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def policygradex(*args: str, **kwargs) -> tuple[float, subprocess.CompletedProcess]:
    """``python -m policygradex.cli ARGS`` with the progress bars off (``POLICYGRADEX_QUIET=1``):
    ``(wall seconds, the finished process)``.  ``kwargs`` go to ``subprocess.run`` (defaults:
    ``check=True`` and stdout discarded unless ``capture_output`` is given; ``env`` adds variables to
    this process's environment)."""
    opts = {"check": True, **({} if kwargs.get("capture_output") else {"stdout": subprocess.DEVNULL}), **kwargs}
    t0 = time.perf_counter()
    env = {**os.environ, "POLICYGRADEX_QUIET": "1", **opts.pop("env", {})}  # env: variables added to this process's
    if "PYTHONPATH" in kwargs.get("env", {}) and os.environ.get("PYTHONPATH"):  # added to the caller's, not replacing it
        env["PYTHONPATH"] = os.pathsep.join([kwargs["env"]["PYTHONPATH"], os.environ["PYTHONPATH"]])
    proc = subprocess.run([sys.executable, "-m", "policygradex.cli", *args], env=env, **opts)
    return time.perf_counter() - t0, proc


def save(name: str, results: dict) -> Path:
    path = RESULTS / f"{name}.json"
    write_json(path, {"provenance": provenance(), **results})
    return path
