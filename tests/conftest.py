import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("POLICYGRADEX_QUIET", "1")
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess."""
    env = {**os.environ, "POLICYGRADEX_QUIET": "1"}
    return subprocess.run([sys.executable, "-m", "policygradex.cli", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=env, timeout=timeout)


def assert_user_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit code 2, exactly one line on stderr containing every needle, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.fixture
def cli():
    return run_cli
