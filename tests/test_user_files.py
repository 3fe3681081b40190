"""Nothing of the user's is ever deleted or overwritten (issue 15; docs/reliability.md).

Output directories must be absent, empty, marked as policygradex's (``.policygradex``) or an
earlier version's output directory; temporary files have a name the project owns and only those
are swept, only in the directories the project writes; bad output paths are one line; SIGTERM
stops a command as Ctrl-C does (exit 143); JSON artifacts are strict JSON.

Most cases call the CLI's ``main()`` in this process (no interpreter start-up); SIGTERM is sent
to a real CLI subprocess.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, assert_user_error, main_in_process, seeded
from reliability_helpers import assert_every_file_whole, tree_digest

TRAIN = ["train", "--suite", "cartpole", "--tasks", "2", "--steps", "256", "--eval-episodes", "1", "--seed", str(seeded(0))]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny ``train`` directory (marked) and the digest of its files."""
    from policygradex.cli import main

    root = tmp_path_factory.mktemp("user-files")
    out = root / "finished"
    with pytest.raises(SystemExit) as info:
        main([*TRAIN, "--out", str(out)])
    assert info.value.code == 0
    assert (out / ".policygradex").is_file() and list((out / "checkpoints").glob("step_*.pt"))
    return out, tree_digest(out)


def fresh_copy(finished, root: Path, name: str) -> Path:
    """A copy of the finished directory under a new path (a path this process has not locked yet)."""
    dst = root / name
    shutil.copytree(finished[0], dst)
    return dst


def test_users_tmp_files_survive_and_only_stale_project_temps_go(capsys, finished, tmp_path):
    out = fresh_copy(finished, tmp_path, "rerun")
    sub = out / "my-notes"
    sub.mkdir()
    users = [out / ".x.tmp", out / ".groups.json.ab12cd34.tmp",  # the user's own, and the old temporary pattern
             sub / ".x.tmp", sub / ".groups.json.ab12cd34.tmp",
             sub / ".notes.policygradex-0123456789ab.tmp",  # even the project's pattern, in a folder it does not write
             out / "checkpoints" / ".keep.tmp"]
    for i, p in enumerate(users):
        p.write_text(f"user data {i}\n")
    stale = [out / ".train_history.json.policygradex-0123456789ab.tmp",
             out / "checkpoints" / ".step_000000256.pt.policygradex-abcdef012345.tmp"]
    for p in stale:
        p.write_bytes(b"half a file")
    proc = main_in_process(*TRAIN, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    for i, p in enumerate(users):
        assert p.read_text() == f"user data {i}\n", p
    assert not [p for p in stale if p.exists()]  # a killed run's leftovers are still swept


def test_a_non_empty_unmarked_directory_is_refused_and_untouched(capsys, finished, tmp_path):
    mine = tmp_path / "mine"
    (mine / "deep").mkdir(parents=True)
    (mine / "report.md").write_text("my report\n")
    (mine / "config.json").write_text('{"not": "a policygradex run"}\n')
    (mine / ".x.tmp").write_text("scratch\n")
    (mine / "deep" / ".y.policygradex-0123456789ab.tmp").write_text("scratch\n")
    before, finished_before = tree_digest(mine), tree_digest(finished[0])
    for command in (TRAIN, ["run", "--suite", "cartpole", "--tasks", "2", "--steps", "256"]):
        proc = main_in_process(*command, "--out", str(mine))
        assert_user_error(proc, f"--out {mine}", "is not empty and is not a policygradex output directory",
                          ".policygradex", "nothing in it was changed")
    assert tree_digest(mine) == before
    assert tree_digest(finished[0]) == finished_before == finished[1]


@pytest.mark.parametrize("argv", [
    ["train", "--out", ""], ["run", "--out="], ["validate", "--out", ""], ["compare", "--out", ""],
    ["compare", "--run-dir", ""], ["train", "--out", "x", "--tensorboard", ""],
])
def test_an_empty_path_is_refused(capsys, tmp_path, monkeypatch, argv):
    (tmp_path / "data.tmp").write_text("keep\n")
    (tmp_path / ".data.tmp").write_text("keep\n")
    monkeypatch.chdir(tmp_path)  # an empty --out must not mean the current directory
    before = tree_digest(tmp_path)
    flag = next(a.split("=")[0] for i, a in enumerate(argv) if a.endswith("=") or argv[i + 1:i + 2] == [""])
    assert_user_error(main_in_process(*argv), f"{flag}: an empty path is not allowed")
    assert tree_digest(tmp_path) == before


def test_a_marked_directory_reruns(capsys, finished, tmp_path):
    out = fresh_copy(finished, tmp_path, "again")
    proc = main_in_process(*TRAIN, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == sorted(p.name for p in (finished[0] / "checkpoints").iterdir())


def test_a_directory_inside_an_output_directory_in_use_is_refused(capsys, finished, tmp_path):
    """Another process writing R (its lock held): claiming R/train would mark and sweep part of its
    outputs, its temporary files among them.  The lock is held here through a second open file,
    which flock treats as another holder."""
    import fcntl

    busy = fresh_copy(finished, tmp_path, "busy")
    (busy / "train").mkdir()
    temp = busy / "train" / ".step_000000256.pt.policygradex-0123456789ab.tmp"  # a write in progress
    temp.write_bytes(b"partial")
    before = tree_digest(busy)
    with open(busy / ".lock", "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert_user_error(main_in_process(*TRAIN, "--out", str(busy / "train")), "is inside", "another policygradex process")
    assert tree_digest(busy) == before


def test_a_file_named_like_the_marker_that_is_not_ours_is_refused(capsys, tmp_path):
    out = tmp_path / "theirs"
    out.mkdir()
    (out / ".policygradex").write_text("my own notes")
    (out / "config.json").write_text(json.dumps({"suite": {}, "config": {}}))  # looks like an earlier version's run
    before = tree_digest(out)
    assert_user_error(main_in_process(*TRAIN, "--out", str(out)), "that policygradex did not write")
    assert tree_digest(out) == before


def test_earlier_versions_output_directories_are_accepted_and_marked(capsys, finished, tmp_path):
    old_train = fresh_copy(finished, tmp_path, "old-train")  # checkpoints/ and train_history.json, no marker
    (old_train / ".policygradex").unlink()
    old_run = tmp_path / "old-run"
    old_run.mkdir()
    conf = {"suite": {"name": "cartpole"}, "config": {}, "versions": {}, "seeds": {}, "command": ["policygradex", "run"]}
    (old_run / "config.json").write_text(json.dumps(conf))
    for out in (old_train, old_run):
        proc = main_in_process(*TRAIN, "--out", str(out))
        assert proc.returncode == 0, proc.stderr
        assert json.loads((out / ".policygradex").read_text())["tool"] == "policygradex"
    assert json.loads((old_run / "config.json").read_text()) == conf


def _too_long(tmp_path: Path) -> str:
    return str(tmp_path / ("n" * 300))


@pytest.mark.parametrize("case,needles", [
    ("loop", ["--out", "symlink loop"]),
    ("long", ["--out", "too long for the file system", "choose a shorter --out"]),
    ("under_file", ["--out", "a component of the path is a file"]),
    ("file", ["--out", "exists and is not a directory"]),
    ("tensorboard_file", ["--tensorboard", "afile", "not a directory"]),
])
def test_bad_output_paths_are_one_line(capsys, finished, tmp_path, case, needles):
    (tmp_path / "loop").symlink_to("loop")
    (tmp_path / "afile").write_text("x\n")
    out = {"loop": tmp_path / "loop" / "run", "long": _too_long(tmp_path), "under_file": tmp_path / "afile" / "run",
           "file": tmp_path / "afile", "tensorboard_file": tmp_path / "tb-run"}[case]
    extra = ["--tensorboard", str(tmp_path / "afile")] if case == "tensorboard_file" else []
    before = tree_digest(finished[0])
    proc = main_in_process(*TRAIN, "--out", str(out), *extra)
    assert_user_error(proc, *needles)
    assert (tmp_path / "afile").read_text() == "x\n"
    assert tree_digest(finished[0]) == before


def test_sigterm_stops_like_ctrl_c_with_exit_143(finished, tmp_path):
    """A real SIGTERM (batch schedulers, docker stop) during training: the Ctrl-C message, the
    checkpoints kept, no temporary file left, exit code 143; the finished directory next to it
    is untouched."""
    root = finished[0].parent
    out = root / "terminated"
    env = {**os.environ, "POLICYGRADEX_QUIET": "1"}
    env.pop("POLICYGRADEX_CRASH_AT", None)
    proc = subprocess.Popen([sys.executable, "-m", "policygradex.cli", "train", "--suite", "cartpole", "--tasks", "2",
                             "--steps", "1000000", "--checkpoint-every", "1", "--out", str(out)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list((out / "checkpoints").glob("step_*.pt")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() is not None else "no checkpoint"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert re.fullmatch(rf"interrupted: kept in {re.escape(str(out))}: \d+ training checkpoints? "
                        r"\(newest checkpoints/step_\d{9}\.pt\); rerun the same command to resume", lines[0]), lines[0]
    assert not [p for p in out.rglob("*.tmp")]
    assert_every_file_whole(out)
    assert tree_digest(finished[0]) == finished[1]


def test_sigterm_handler_only_acts_in_the_main_process():
    """A process forked from the CLI's (an environment subprocess) inherits the handler and still
    dies of SIGTERM; the main process gets KeyboardInterrupt; the old handler comes back after."""
    from policygradex import artifacts as art

    before = signal.getsignal(signal.SIGTERM)
    with art.sigterm_as_interrupt() as term:
        pid = os.fork()
        if pid == 0:  # the child: wait to be terminated
            time.sleep(30)
            os._exit(0)
        time.sleep(0.1)
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        assert term.interrupted
    assert signal.getsignal(signal.SIGTERM) == before


def test_json_artifacts_are_strict_json(tmp_path, finished):
    import numpy as np

    from policygradex import artifacts as art

    def strict(text: str):
        def refuse(name):
            raise ValueError(f"non-standard JSON constant {name}")
        return json.loads(text, parse_constant=refuse)

    obj = {"nan": float("nan"), "inf": math.inf, "ninf": -math.inf, "np": np.float64("nan"), "np32": np.float32("inf"),
           "arr": np.array([1.0, np.nan]), "nested": [{"x": (float("nan"), 2.5)}], "ok": 1.5, "int": 3, "none": None}
    art.write_json(tmp_path / "g.json", obj)
    assert strict((tmp_path / "g.json").read_text()) == {
        "nan": None, "inf": None, "ninf": None, "np": None, "np32": None, "arr": [1.0, None], "nested": [{"x": [None, 2.5]}],
        "ok": 1.5, "int": 3, "none": None}
    for p in finished[0].rglob("*.json"):
        strict(p.read_text())
    strict((finished[0] / ".policygradex").read_text())
