import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("POLICYGRADEX_QUIET", "1")
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]

# Every test that trains (marked ``trains``) derives its seeds through ``seeded``: setting
# POLICYGRADEX_TEST_SEED_OFFSET=K shifts them all by K without editing a test, which shows the
# assertions hold for other seeds too (benchmarks/bench_test_seeds.py runs ``-m trains`` at
# several offsets).  Default 0: the seeds written in the tests.
SEED_OFFSET_VAR = "POLICYGRADEX_TEST_SEED_OFFSET"
MAX_SEED_OFFSET = 2**31  # keeps every shifted seed (and seed + 12345 etc.) below 2**32


def _seed_offset() -> tuple[int, str | None]:
    raw = os.environ.get(SEED_OFFSET_VAR, "").strip() or "0"
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_SEED_OFFSET:
        return 0, f"{SEED_OFFSET_VAR}={raw!r}: must be an integer between 0 and {MAX_SEED_OFFSET}"
    return value, None


SEED_OFFSET, _SEED_OFFSET_ERROR = _seed_offset()


def pytest_configure(config):
    if _SEED_OFFSET_ERROR:
        raise pytest.UsageError(_SEED_OFFSET_ERROR)


# Fixtures that train a policy: every test that uses one trains too, so it gets the `trains`
# marker here (derived from its fixtures, not written on each test).
TRAINING_FIXTURES = {"finished"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.trains)


def seeded(base: int) -> int:
    """The seed a training test uses where it wrote ``base``: ``base`` shifted by
    POLICYGRADEX_TEST_SEED_OFFSET (0 by default)."""
    return base + SEED_OFFSET


def pytest_report_header(config):
    return f"{SEED_OFFSET_VAR}={SEED_OFFSET} (seeds of the tests marked 'trains' shifted by it)"


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess."""
    env = {**os.environ, "POLICYGRADEX_QUIET": "1"}
    return subprocess.run([sys.executable, "-m", "policygradex.cli", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=env, timeout=timeout)


def assert_one_line(code, stderr: str, *needles: str) -> str:
    """Exit code 2, exactly one line ``error: ...`` on stderr containing every needle, no traceback; the line."""
    assert code == 2, (code, stderr)
    lines = [l for l in stderr.splitlines() if l.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and "Traceback" not in stderr, stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def assert_user_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """:func:`assert_one_line` on a finished process."""
    return assert_one_line(proc.returncode, proc.stderr, *needles)


class ReachedTraining(Exception):
    """Raised instead of meta-training by :func:`main_in_process` (``stop_at_training``): the input was accepted."""


def main_in_process(*argv: str, stop_at_training: bool = False) -> subprocess.CompletedProcess:
    """The CLI's ``main(ARGV)`` in this process (no interpreter start-up): exit code, stdout, stderr.
    ``stop_at_training``: meta-training raises :class:`ReachedTraining` instead of running, and
    the exit code is None when it was reached (the input was accepted)."""
    import contextlib
    import io
    from unittest import mock

    from policygradex import cli as entry

    out, err = io.StringIO(), io.StringIO()
    stop, serial = contextlib.nullcontext(), contextlib.nullcontext()
    if stop_at_training:
        stop = mock.patch("policygradex.stages.train_meta_policy", side_effect=ReachedTraining)
        # replicates in this process, so that the first training is the patched one (not a worker's)
        real_backend = entry._backend
        serial = mock.patch("policygradex.cli._backend", side_effect=lambda opts, replicates=1: real_backend(opts, 1))
    with stop, serial, contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            entry.main(list(argv))
        except SystemExit as exc:
            return subprocess.CompletedProcess(list(argv), exc.code, out.getvalue(), err.getvalue())
        except ReachedTraining:
            return subprocess.CompletedProcess(list(argv), None, out.getvalue(), err.getvalue())
    raise AssertionError("main() returned without exiting")


def run_main(*argv: str, stop_at_training: bool = False) -> tuple:
    """(exit code, stderr) of :func:`main_in_process`."""
    proc = main_in_process(*argv, stop_at_training=stop_at_training)
    return proc.returncode, proc.stderr


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def seed_offset() -> int:
    """POLICYGRADEX_TEST_SEED_OFFSET (default 0); see ``seeded``."""
    return SEED_OFFSET
