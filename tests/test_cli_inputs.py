"""Inputs that used to end in a traceback, or were accepted although they make no sense (issue 15):
options, ``--config`` tables and suite files.  Each is now one line on stderr with exit code 2
naming the input and what is allowed, or, where the input is legal, a working command.

Most cases run the CLI's entry point in-process with meta-training replaced by a sentinel (the
inputs are refused before anything trains); two run the real CLI in a subprocess.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_line, assert_user_error, run_cli, run_main

PLANTED = ["--suite", "cartpole-planted", "--steps", "64"]  # n = 8
TWO = '[[tasks]]\nname = "a"\nenv_id = "CartPole-v1"\n[[tasks]]\nname = "b"\nenv_id = "CartPole-v1"\n'
DEEP = 600  # the depth: tomllib's recursive parser ran out of stack


def assert_refused(out: Path, *argv: str, needles: list[str], absent: list[str] = ()) -> str:
    """Exit code 2, one line ``error: ...`` with every needle, no traceback, nothing written to ``out``."""
    code, stderr = run_main(*argv, "--out", str(out), stop_at_training=True)
    line = assert_one_line(code, stderr, *needles)
    for n in absent:
        assert n not in line, (n, line)
    assert not out.exists(), "a refused input must not create the output directory"
    return line


def assert_accepted(out: Path, *argv: str) -> None:
    code, stderr = run_main(*argv, "--out", str(out), stop_at_training=True)
    assert code is None and stderr.strip() == "", (code, stderr)


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# -- the two tracebacks, through the real CLI ---------------------------------------------

def test_heldout_frac_that_leaves_no_training_rows_is_refused_by_the_real_cli(tmp_path):
    cfg = write(tmp_path / "run.toml", "[estimate]\nheldout_frac = 0.99\n")
    proc = run_cli("run", *PLANTED, "--config", str(cfg), "--out", str(tmp_path / "o"))
    assert_user_error(proc, f"--config {cfg}", "[estimate]", "heldout_frac", "less than or equal to 0.5")


def test_toml_nested_600_deep_is_one_line_through_the_real_cli(tmp_path):
    suite = write(tmp_path / "deep.toml", TWO + "[tasks.kwargs]\nx = " + "[" * DEEP + "]" * DEEP + "\n")
    proc = run_cli("train", "--suite", str(suite), "--steps", "64", "--out", str(tmp_path / "o"))
    assert_user_error(proc, f"suite file {suite}", "nested too deeply")


def test_dotted_keys_thousands_deep_in_a_suite_file(tmp_path):
    # tomllib parses dotted keys without recursion; the value then overflowed the stack in gymnasium.make
    suite = write(tmp_path / "dotted.toml", TWO + "[tasks.kwargs]\n" + "a." * 3000 + "b = 1\n")
    assert_refused(tmp_path / "o", "train", "--suite", str(suite), needles=[f"suite file {suite}", "tasks.1.kwargs",
                                                                             "nested more than 32 levels"])


# -- config tables ----------------------------------------------------------------------------------

def test_deeply_nested_config_file(tmp_path):
    cfg = write(tmp_path / "deep.toml", "[ppo]\nx = " + "{a = " * DEEP + "1" + "}" * DEEP + "\n")
    assert_refused(tmp_path / "o", "run", *PLANTED, "--config", str(cfg), needles=[f"--config {cfg}", "nested too deeply"])


@pytest.mark.parametrize("body,needles", [
    # every table is checked, whichever command reads the file: run refuses [validate] and [sac] nonsense too
    ("[validate]\nfinetune_steps = 0\n", ["[validate]", "finetune_steps", "greater than or equal to 1"]),
    ("[validate]\nfinetune_seeds = 0\n", ["[validate]", "finetune_seeds", "greater than or equal to 1"]),
    ("[sac]\nbatch_size = 0\n", ["[sac]", "batch_size", "greater than or equal to 1"]),
    ("[sac]\ntau = 0.0\n", ["[sac]", "tau", "greater than 0"]),
    ("sac = 3\n", ["sac must be a table"]),
    # extreme values that crashed long after they were accepted (float32 overflow, the OpenMP runtime)
    ("[ppo]\nclip_coef = 1e300\n", ["[ppo]", "clip_coef", "less than or equal to 1000"]),
    ("[ppo]\nent_coef = 1e300\n", ["[ppo]", "ent_coef", "less than or equal to 1000"]),
    ("[ppo]\nvf_coef = 1e300\n", ["[ppo]", "vf_coef", "less than or equal to 1000"]),
    ("[ppo]\nthreads = 100000\n", ["[ppo]", "threads", "less than or equal to 1024"]),
    ("[ppo]\nlearning_rate = 1e10\n", ["[ppo]", "learning_rate", "less than or equal to 1"]),
    ("[ppo]\nnet = { hidden = [1000000000] }\n", ["[ppo]", "net.hidden", "at most 4096 units"]),
    ("[sac]\ninit_alpha = 1e300\n", ["[sac]", "init_alpha", "less than or equal to 1000"]),
    ("[sac]\ntarget_entropy = -1e300\n", ["[sac]", "target_entropy", "greater than or equal to -1000"]),
    ("[estimate]\ntransitions_per_task = 1000000000000\n", ["[estimate]", "transitions_per_task", "less than or equal to"]),
    ("[group]\npenalty_scale = 1e300\n", ["[group]", "penalty_scale", "less than or equal to 1000000"]),
])
def test_config_tables_out_of_range_are_refused_by_run(tmp_path, body, needles):
    cfg = write(tmp_path / "run.toml", body)
    assert_refused(tmp_path / "o", "run", *PLANTED, "--config", str(cfg), needles=[f"--config {cfg}", *needles])


def test_sac_batch_larger_than_its_buffer(tmp_path):
    cfg = write(tmp_path / "run.toml", "[sac]\nbuffer_size = 100\nbatch_size = 200\n")
    assert_refused(tmp_path / "o", "run", "--suite", "cartpole", "--tasks", "2", "--algo", "sac", "--config", str(cfg),
                   needles=[f"--config {cfg}", "[sac]", "batch_size 200 exceeds buffer_size 100"])


def test_utf8_byte_order_mark_is_accepted_in_config_and_suite_files(tmp_path):
    bom = b"\xef\xbb\xbf"
    cfg = write(tmp_path / "run.toml", bom + b"[ppo]\ncheckpoint_every = 2\n")
    suite = write(tmp_path / "suite.toml", bom + TWO.encode())
    assert_accepted(tmp_path / "o", "run", "--suite", str(suite), "--steps", "64", "--config", str(cfg))


# -- subsets --------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["run", "validate", "compare"])
def test_subset_size_equal_to_the_number_of_tasks(tmp_path, command):
    assert_refused(tmp_path / "o", command, *PLANTED, "--subset-size", "8",
                   needles=["--subset-size 8", "number of tasks (8)", "whole suite", "allowed: 2 to 7"])


def test_subset_size_equal_to_the_number_of_tasks_in_a_config_table(tmp_path):
    cfg = write(tmp_path / "run.toml", "[estimate]\nsubset_size = 8\n")
    assert_refused(tmp_path / "o", "run", *PLANTED, "--config", str(cfg),
                   needles=[f"--config {cfg}", "[estimate]", "subset_size = 8", "whole suite"])


# -- --suite and --tasks --------------------------------------------------------------------------

def test_suite_that_is_a_directory(tmp_path):
    line = assert_refused(tmp_path / "o", "train", "--suite", str(tmp_path), needles=[f"--suite {tmp_path}", "is a directory",
                                                                                        "a .toml suite file", "cartpole-planted"])
    assert "does not exist" not in line


@pytest.mark.parametrize("kind", ["file", "env"])
def test_tasks_with_a_suite_that_defines_its_tasks(tmp_path, kind):
    suite = str(write(tmp_path / "s.toml", TWO)) if kind == "file" else "env:CartPole-v1"
    assert_refused(tmp_path / "o", "train", "--suite", suite, "--tasks", "3", needles=["--tasks applies to built-in suites", suite])


@pytest.mark.parametrize("name,code", [("a\\nb", "U+000A"), ("a\\u0000", "U+0000"), ("tab\\there", "U+0009"), ("del\\u007f", "U+007F")])
def test_task_names_with_control_characters(tmp_path, name, code):
    suite = write(tmp_path / "s.toml", f'[[tasks]]\nname = "ok"\nenv_id = "CartPole-v1"\n[[tasks]]\nname = "{name}"\nenv_id = "CartPole-v1"\n')
    assert_refused(tmp_path / "o", "train", "--suite", str(suite), needles=[f"suite file {suite}", "tasks.1.name", code, "control character"])


EMOJI = ["🚀 short", "长 long ✓", "👩‍🔬 heavy", "$\\frac{$ mass"]  # emoji (with a zero-width joiner), CJK, mathtext-like


def test_emoji_task_names_are_accepted(tmp_path):
    body = "".join(f'[[tasks]]\nname = "{n.replace(chr(92), chr(92) * 2)}"\nenv_id = "CartPole-v1"\n' for n in EMOJI)
    suite = write(tmp_path / "s.toml", 'name = "fusée 🚀"\n' + body)
    assert_accepted(tmp_path / "o", "run", "--suite", str(suite), "--steps", "64")


def test_plot_of_emoji_task_names_prints_no_warning(tmp_path):
    from policygradex.report import affinity_heatmap

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        affinity_heatmap(np.eye(len(EMOJI)), EMOJI, [0, 0, 1, 1], tmp_path / "affinity.png")
    assert [str(w.message) for w in caught] == []
    assert (tmp_path / "affinity.png").read_bytes().startswith(b"\x89PNG")


# -- compare --run-dir ----------------------------------------------------------------------------

def test_compare_run_dir_that_is_a_file_names_run_dir(tmp_path):
    run_dir = write(tmp_path / "afile", "x")
    assert_refused(tmp_path / "o", "compare", "--suite", "cartpole", "--tasks", "3", "--steps", "64", "--run-dir", str(run_dir),
                   needles=[f"--run-dir {run_dir}", "not a directory"], absent=["--out"])


# -- shared run options ----------------------------------------------------------------------------

def test_run_validate_and_compare_take_the_same_run_options():
    """Declared once (cli.RunOptions): every command that names a run accepts every one of them."""
    import dataclasses

    import typer.main

    from policygradex import cli

    shared = {f.name for f in dataclasses.fields(cli.RunOptions)}
    for command in ("run", "validate", "compare"):
        click_cmd = typer.main.get_command(cli.app).commands[command]
        assert shared <= {p.name for p in click_cmd.params}, command


def test_validate_of_a_sac_run_is_refused(tmp_path):
    assert_refused(tmp_path / "o", "validate", "--suite", "cartpole", "--algo", "sac",
                   needles=["--algo sac", "validate fine-tunes theta* with PPO"])
