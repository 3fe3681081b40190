"""Shared by the reliability tests (test_cli_errors, test_crash, test_determinism, test_fuzz):
the real CLI in a subprocess with extra environment variables, misbehaving environments, fault
injection through ``sitecustomize``, and a checker that every file under its final name is whole."""

from __future__ import annotations

import atexit
import csv
import functools
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The tiny pipeline of the crash and determinism tests: 4 tasks, 8 PPO updates with a checkpoint
# every 2, short probes and collection, d = 16, few permutations and bootstrap resamples.
TINY_CONFIG = """\
[ppo]
checkpoint_every = 2
update_epochs = 4
[estimate]
probe_transitions = 64
[group]
bootstrap = 5
"""


def tiny_run_args(out: Path, config: Path) -> list[str]:
    """The tiny run's command line; it trains, so its seeds shift with POLICYGRADEX_TEST_SEED_OFFSET."""
    from conftest import seeded

    return ["run", "--suite", "cartpole-planted", "--tasks", "4", "--seed", str(seeded(0)), "--suite-seed", str(seeded(0)),
            "--steps", "2048", "--transitions", "128", "--d", "16", "--null-permutations", "10", "--replicates", "1", "--theta-window", "1", "--config", str(config),
            "--out", str(out)]


@functools.cache
def reference_run() -> tuple[Path, Path]:
    """(run directory, config file) of one uninterrupted tiny run, made once per test session and
    shared by the crash and determinism tests (removed at exit)."""
    root = Path(tempfile.mkdtemp(prefix="pgx-reference-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    config = root / "tiny.toml"
    config.write_text(TINY_CONFIG)
    out = root / "reference"
    proc = cli(*tiny_run_args(out, config))
    assert proc.returncode == 0, proc.stderr
    return out, config


def cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m policygradex.cli ARGS`` with ``env`` added to the environment."""
    full = {**os.environ, "POLICYGRADEX_QUIET": "1", **(env or {})}
    for k in ("POLICYGRADEX_CRASH_AT", "POLICYGRADEX_CRASH_SIGNAL"):
        if env is None or k not in env:
            full.pop(k, None)
    return subprocess.run([sys.executable, "-m", "policygradex.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env=full, timeout=timeout)


def with_pythonpath(path: Path, env: dict | None = None) -> dict:
    old = os.environ.get("PYTHONPATH")
    return {**(env or {}), "PYTHONPATH": str(path) + (os.pathsep + old if old else "")}


# Misbehaving environments, importable as ``pgx_badenvs:<Name>-v0`` (gymnasium's module:id form).
BAD_ENVS = textwrap.dedent('''
    import gymnasium as gym
    import numpy as np
    from gymnasium.envs.registration import register


    class Env(gym.Env):
        observation_space = gym.spaces.Box(-1, 1, (4,), np.float32)
        action_space = gym.spaces.Discrete(2)

        def __init__(self, fail=None, at=3):
            self.fail, self.at, self.t = fail, at, 0

        def reset(self, seed=None, options=None):
            super().reset(seed=seed)
            self.t = 0
            if self.fail == "reset":
                raise RuntimeError("boom in reset")
            obs = np.zeros(4, np.float32)
            if self.fail == "nan_reset":
                obs[0] = np.nan
            return obs, {}

        def step(self, action):
            self.t += 1
            obs, reward = np.zeros(4, np.float32), 1.0
            if self.t >= self.at:
                if self.fail == "step":
                    raise ValueError("boom in step")
                if self.fail == "nan_obs":
                    obs[2] = np.nan
                if self.fail == "inf_reward":
                    reward = float("inf")
                if self.fail == "shape":
                    obs = np.zeros(3, np.float32)
            return obs, reward, False, self.t >= 20, {}


    class ThreeActions(Env):
        action_space = gym.spaces.Discrete(3)


    class MultiDiscreteActions(Env):
        action_space = gym.spaces.MultiDiscrete([2, 2])


    class BrokenConstructor(Env):
        def __init__(self):
            raise OSError("cannot open the simulator")


    for name, fail in [("Good", None), ("RaiseReset", "reset"), ("RaiseStep", "step"), ("NanObs", "nan_obs"),
                       ("NanReset", "nan_reset"), ("InfReward", "inf_reward"), ("Shape", "shape")]:
        register(id=f"{name}-v0", entry_point=Env, kwargs={"fail": fail})
    register(id="ThreeActions-v0", entry_point=ThreeActions)
    register(id="MultiDiscrete-v0", entry_point=MultiDiscreteActions)
    register(id="BrokenConstructor-v0", entry_point=BrokenConstructor)
''')


# Fault injection in a subprocess: PGX_FAULT=enospc:<substring> makes fsync of a file whose path
# contains <substring> fail with ENOSPC (a full disk); PGX_FAULT=erofs:<dir> makes every
# write-open under <dir> fail with EROFS (a read-only file system, whoever runs the test).
# PGX_AUDIT=<file> appends every path opened for reading to <file>.
SITECUSTOMIZE = textwrap.dedent('''
    import builtins, errno, os, sys

    _fault = os.environ.get("PGX_FAULT", "")
    kind, _, where = _fault.partition(":")
    if kind == "enospc":
        _fsync = os.fsync

        def fsync(fd):
            try:
                path = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                path = ""
            if where in path:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return _fsync(fd)

        os.fsync = fsync
    elif kind == "erofs":
        _open, _os_open = builtins.open, os.open

        def _under(path):
            try:
                return os.path.abspath(os.fspath(path)).startswith(where)
            except TypeError:
                return False

        def open_(file, mode="r", *args, **kwargs):
            if _under(file) and any(c in mode for c in "wax+"):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(file))
            return _open(file, mode, *args, **kwargs)

        def os_open(path, flags, *args, **kwargs):
            if _under(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return _os_open(path, flags, *args, **kwargs)

        builtins.open, os.open = open_, os_open

    _audit = os.environ.get("PGX_AUDIT")
    if _audit:
        _log = open(_audit, "a", buffering=1)

        def _hook(event, args):
            if event != "open" or not args or not isinstance(args[0], (str, bytes, os.PathLike)):
                return
            mode, flags = args[1], args[2] if len(args) > 2 else 0
            reading = (isinstance(mode, str) and "r" in mode and "+" not in mode) or \\
                      (mode is None and isinstance(flags, int) and flags & os.O_ACCMODE == os.O_RDONLY)
            if reading:
                _log.write(os.fsdecode(args[0]) + "\\n")

        sys.addaudithook(_hook)
''')


def write_helpers(directory: Path) -> Path:
    """``pgx_badenvs.py`` and ``sitecustomize.py`` in ``directory`` (put it on PYTHONPATH)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "pgx_badenvs.py").write_text(BAD_ENVS)
    (directory / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return directory


def is_temp(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(".tmp")


def assert_every_file_whole(run_dir: Path) -> int:
    """Every file under its final name parses completely (only ``.*.tmp`` files may be partial);
    returns how many files were checked."""
    import torch

    from policygradex.rl.checkpoint import read_checkpoint

    n = 0
    for p in sorted(run_dir.rglob("*")):
        if not p.is_file() or is_temp(p) or p.name == ".lock":
            continue
        data = p.read_bytes()
        if p.suffix == ".json":
            json.loads(data)
        elif p.suffix == ".pt":
            if p.parent.name == "checkpoints":
                read_checkpoint(p)  # also checks the content digest
            else:
                torch.load(io.BytesIO(data), weights_only=False)
        elif p.suffix == ".csv":
            rows = list(csv.reader(io.StringIO(data.decode())))
            assert rows and len({len(r) for r in rows}) == 1, p
        elif p.suffix == ".png":
            assert data.startswith(b"\x89PNG") and data.rstrip(b"\x00").endswith(b"IEND\xaeB`\x82"), p
        elif p.suffix == ".md":
            assert data.endswith(b"\n"), p
        n += 1
    return n


def tree_digest(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Every file, folder and link below ``root`` (relative path -> sha256 of a file's content,
    ``link:<target>`` or ``dir``), but those named in ``skip``: to show a directory untouched."""
    out = {}
    for p in sorted(Path(root).rglob("*")):
        if p.name in skip:
            continue
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out
