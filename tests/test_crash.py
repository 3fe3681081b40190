"""Crash safety (issue 8, points 2 and 3; docs/reliability.md).

``run`` is SIGKILLed at chosen points (``POLICYGRADEX_CRASH_AT``: during training, while a
checkpoint is written, while collecting, featurizing, fitting the surrogates and grouping),
each time leaving a half-written temporary file behind, and interrupted with Ctrl-C (SIGINT),
which stops cleanly and says what was kept; after every interruption each file under its final
name is whole, an audit hook shows that no temporary file is ever read, and the final rerun
finishes with byte-identical groups.json, affinity.csv and checkpoints.  Corrupted or
truncated artifacts are recomputed, never used.
"""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest

from conftest import seeded
from reliability_helpers import (assert_every_file_whole, cli, is_temp, reference_run, tiny_run_args, with_pythonpath,
                                 write_helpers)

OUTPUTS = ("groups.json", "affinity.csv", "f_table.csv", "subsets.json", "surrogate.pt", "collect/rollouts.pt",
           "collect/meta_policy.json", "train/train_history.json")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted tiny run (the answer every interrupted run must reproduce) and helpers."""
    ref, config = reference_run()
    root = tmp_path_factory.mktemp("crash")
    return root, write_helpers(root / "helpers"), config, ref


def checkpoints(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "train" / "checkpoints").glob("step_*.pt"))


def assert_same_as(run_dir: Path, ref: Path) -> None:
    for name in OUTPUTS:
        assert (run_dir / name).read_bytes() == (ref / name).read_bytes(), name
    assert [p.name for p in checkpoints(run_dir)] == [p.name for p in checkpoints(ref)]
    for a, b in zip(checkpoints(run_dir), checkpoints(ref)):
        assert a.read_bytes() == b.read_bytes(), a.name


def assert_ctrl_c_message(proc, out: Path, kept: str) -> None:
    assert proc.returncode == 130, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0] == f"interrupted: kept in {out}: {kept}; rerun the same command to resume", lines[0]


@pytest.mark.trains
def test_killed_at_every_stage_then_rerun_is_byte_identical(reference):
    """One run directory, interrupted again and again as it progresses: SIGKILL during training
    (between checkpoints, and while one is written), collection, featurizing, the surrogates and
    grouping; Ctrl-C during training and featurizing.  Then the same command finishes."""
    root, helpers, config, ref = reference
    ckpt = [p.relative_to(ref).as_posix() for p in checkpoints(ref)]
    out, audit = root / "killed", root / "audit.log"
    points = [("INT", "train:update:2", f"1 training checkpoint (newest {ckpt[0]})"),
              ("KILL", "train:update:3", None),           # between checkpoints 1 and 2 (update 3 of 8)
              ("KILL", f"write:{ckpt[2]}", None),         # while checkpoint 3 is written
              ("KILL", "write:collect/rollouts.pt", None),
              ("INT", "write:features/task_000.pt", f"finished stages train, collect; 4 training checkpoints (newest {ckpt[3]})"),
              ("KILL", "write:features/task_001.pt", None),  # task 0 written, task 1 half-written
              ("KILL", "write:surrogate.pt", None),
              ("KILL", "write:groups.json", None)]        # affinity.csv and affinity.png already written
    for sig, point, kept in points:
        env = with_pythonpath(helpers, {"POLICYGRADEX_CRASH_AT": point, "POLICYGRADEX_CRASH_SIGNAL": sig,
                                        "PGX_AUDIT": str(audit)})
        proc = cli(*tiny_run_args(out, config), env=env)
        if sig == "KILL":
            assert proc.returncode == -signal.SIGKILL, (point, proc.returncode, proc.stderr)
            if point.startswith("write:"):  # the kill left a partial temporary file, never a partial artifact
                assert any(is_temp(p) for p in out.rglob("*")), point
        else:
            assert_ctrl_c_message(proc, out, kept)
            assert not [p for p in out.rglob("*") if is_temp(p)]  # Ctrl-C leaves no temporary file
        assert_every_file_whole(out)
    proc = cli(*tiny_run_args(out, config), env=with_pythonpath(helpers, {"PGX_AUDIT": str(audit)}))
    assert proc.returncode == 0, proc.stderr
    assert_same_as(out, ref)
    assert not [p for p in out.rglob("*") if is_temp(p)]  # the rerun removed the killed runs' leftovers
    reads = [Path(line) for line in audit.read_text().splitlines() if line.startswith(str(out))]
    assert any(p.name == "rollouts.pt" for p in reads) and any(p.parent.name == "checkpoints" for p in reads)
    assert not [p for p in reads if is_temp(p)]  # no partial file was ever read


@pytest.mark.trains
def test_corrupted_and_truncated_artifacts_are_recomputed_not_used(reference):
    root, _, config, ref = reference
    out = root / "corrupted"
    shutil.copytree(ref, out)
    ck = checkpoints(out)[1]  # a middle checkpoint: a flipped byte in tensor data, which torch.load accepts
    data = bytearray(ck.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ck.write_bytes(bytes(data))
    for name in ("affinity.csv", "collect/rollouts.pt", "features/task_002.pt"):  # truncated
        p = out / name
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    sur = out / "surrogate.pt"
    data = bytearray(sur.read_bytes())
    data[-100] ^= 0x01
    sur.write_bytes(bytes(data))
    (out / "groups.json").write_text("{")
    proc = cli(*tiny_run_args(out, config))
    assert proc.returncode == 0, proc.stderr
    assert_same_as(out, ref)
    for name in ("affinity.csv", "features/task_002.pt"):
        assert (out / name).read_bytes() == (ref / name).read_bytes()


@pytest.mark.trains
def test_training_resume_is_bit_identical_and_skips_a_corrupted_checkpoint(tmp_path):
    """In-process: training stopped after any checkpoint (or with a corrupted one) and resumed
    writes the same checkpoints, byte for byte, as training that never stopped."""
    from policygradex.config import PPOConfig
    from policygradex.rl.checkpoint import list_checkpoints
    from policygradex.rl.ppo import train
    from policygradex.tasks import load_suite

    suite = load_suite("cartpole", 2, seeded(0))
    cfg = PPOConfig(total_steps=2048, envs_per_task=2, num_steps=64, minibatch_size=128, update_epochs=2,
                    checkpoint_every=2, seed=seeded(3))
    full = train(suite, cfg, tmp_path / "full")
    ref = list_checkpoints(tmp_path / "full" / "checkpoints")
    assert len(ref) == 4
    for keep in (1, 3):  # a kill after checkpoint `keep`
        part = tmp_path / f"part{keep}"
        (part / "checkpoints").mkdir(parents=True)
        for p in ref[:keep]:
            shutil.copy(p, part / "checkpoints" / p.name)
        res = train(suite, cfg, part)
        got = list_checkpoints(part / "checkpoints")
        assert [p.read_bytes() for p in got] == [p.read_bytes() for p in ref]
        assert (part / "train_history.json").read_bytes() == (tmp_path / "full" / "train_history.json").read_bytes()
        assert res.history == full.history
    bad = tmp_path / "part3" / "checkpoints" / ref[1].name
    bad.write_bytes(bad.read_bytes()[:-10])
    train(suite, cfg, tmp_path / "part3")
    assert bad.read_bytes() == ref[1].read_bytes()


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    """Disk full in the middle of an atomic write: one-line UserError naming the file, the old
    content intact, no temporary file left."""
    import errno
    import os

    from policygradex import artifacts as art
    from policygradex.errors import UserError

    target = tmp_path / "groups.json"
    art.write_json(target, {"old": True})

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(art.os, "fsync", full)
    with pytest.raises(UserError, match=r"disk full while writing .*groups\.json; free space and rerun"):
        art.write_json(target, {"new": True})
    assert target.read_text() == '{\n  "old": true\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["groups.json"]
