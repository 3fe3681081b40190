"""Property-based fuzzing (hypothesis) of suite files and option values (issue 8, point 1).

The CLI's entry point runs in-process with meta-training replaced by a sentinel: every input
must either be refused with exit code 2 and one line on stderr, or be accepted and reach
training.  Anything else (a traceback, another exit code) is an uncontrolled crash.  The
examples are derandomized, so the test is deterministic.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import run_main

SETTINGS = {"deadline": None, "derandomize": True, "suppress_health_check": list(HealthCheck), "database": None}


def assert_controlled(code: int | None, stderr: str, argv: list[str]) -> None:
    if code is None:  # accepted: nothing on stderr
        assert stderr.strip() == "", (argv, stderr)
        return
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, (argv, code, stderr)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, (argv, stderr)


def number_text(x) -> str:
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)  # nan, inf, -inf
    return repr(x)


INTS = st.one_of(st.integers(-3, 12), st.sampled_from([0, 2**31, 2**32, 2**63, 2**64, -2**63, 10**30]))
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 1e-300, 0.5, 1.0]))
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=6)
GARBAGE = st.one_of(INTS.map(number_text), FLOATS.map(number_text), TEXT)


def mostly(valid, garbage=GARBAGE):
    """A valid value four times out of five, anything otherwise: inputs near the boundary."""
    return st.one_of(valid, valid, valid, valid, garbage)


def ints(lo, hi):
    return mostly(st.integers(lo, hi).map(str))


def floats(lo, hi):
    return mostly(st.floats(lo, hi).map(number_text))


RUN_OPTIONS = {
    "--tasks": ints(2, 10), "--suite-seed": ints(0, 5), "--steps": ints(1, 10**6), "--seed": ints(0, 5),
    "--k": ints(1, 10), "--penalty-scale": floats(0, 10), "--d": ints(1, 2000), "--transitions": ints(64, 10**5),
    "--subset-size": ints(2, 10), "--coverage": ints(1, 5), "--subsets": ints(1, 50), "--target-delta": floats(1e-4, 0.5),
    "--checkpoint": ints(0, 10**6), "--min-return": floats(-100, 500), "--null-permutations": ints(1, 500),
    "--threads": ints(1, 4),
    "--evaluator": mostly(st.sampled_from(["first_order_ppo", "surrogate_loss", "rollout_return"]), st.just("magic")),
}
TRAIN_OPTIONS = {
    "--tasks": ints(1, 10), "--suite-seed": ints(0, 5), "--steps": ints(1, 10**6), "--seed": ints(0, 5),
    "--threads": ints(1, 4), "--envs-per-task": ints(1, 8), "--checkpoint-every": ints(1, 20),
    "--hidden": mostly(st.lists(st.integers(1, 64), min_size=1, max_size=3).map(lambda v: ",".join(map(str, v))),
                       st.one_of(st.lists(INTS, max_size=3).map(lambda v: ",".join(map(str, v))), TEXT)),
    "--norm-adv": mostly(st.sampled_from(["batch", "task", "none"]), st.just("sometimes")),
}
SUITES = mostly(st.sampled_from(["cartpole-planted", "cartpole", "lunarlander", "env:CartPole-v1", "env:Pendulum-v1"]),
                st.sampled_from(["nope", "", "env:", "env:NoSuch-v0"]))


@st.composite
def command_lines(draw):
    command = draw(st.sampled_from(["run", "train"]))
    table = RUN_OPTIONS if command == "run" else TRAIN_OPTIONS
    names = draw(st.lists(st.sampled_from(sorted(table)), unique=True, max_size=4))
    argv = [command, "--suite", draw(SUITES)]
    for name in names:
        argv += [name, draw(table[name])]
    return argv


@settings(max_examples=80, **SETTINGS)
@given(argv=command_lines())
def test_fuzzed_options_never_crash(argv):
    with tempfile.TemporaryDirectory() as tmp:
        argv = argv + ["--out", str(Path(tmp) / "out")]
        code, stderr = run_main(*argv, stop_at_training=True)
        assert_controlled(code, stderr, argv)


SCALAR = st.one_of(st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True, allow_infinity=True), TEXT)
TOML_VALUE = st.recursive(SCALAR, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
                          max_leaves=5)
NAMES = st.sampled_from(["a", "b", "c"])
ENV_IDS = mostly(st.just("CartPole-v1"), st.sampled_from(["Pendulum-v1", "Acrobot-v1", "MountainCar-v0", "NoSuch-v0", "",
                                                          "gymnasium.envs.classic_control:CartPole-v1", "no_such_module:X-v0"]))
OVERRIDES = st.dictionaries(mostly(st.sampled_from(["length", "masspole", "gravity", "force_mag", "tau"]),
                                   st.sampled_from(["kinematics_integrator", "nope", "_private", "np_random", "steps_beyond_terminated"])),
                            mostly(st.floats(0.05, 20), SCALAR), max_size=2)
KWARGS = st.dictionaries(mostly(st.sampled_from(["max_episode_steps", "sutton_barto_reward"]), st.sampled_from(["bogus", "g", "render_mode"])),
                         mostly(st.integers(1, 500), SCALAR), max_size=2)
WRAPPERS = st.lists(mostly(st.sampled_from(["flatten_observation", "clip_action"]), st.sampled_from(["rescale_action", "nope"])),
                    max_size=2)


TASK = st.fixed_dictionaries(
    {"name": NAMES, "env_id": ENV_IDS},
    optional={"kwargs": KWARGS, "overrides": OVERRIDES, "wrappers": WRAPPERS, "max_episode_steps": st.integers(1, 500)})
FIELDS = ["name", "description", "true_partition", "ppo", "tasks"]
TASK_FIELDS = ["name", "env_id", "kwargs", "overrides", "wrappers", "max_episode_steps"]


@st.composite
def suite_files(draw):
    """A plausible suite file, then at most one fault: a field of any type or value, an unknown
    field, a missing field; faults deep in a file (spaces, overrides, wrappers) come from the
    plausible part itself."""
    data = draw(st.fixed_dictionaries(
        {"tasks": st.lists(TASK, min_size=1, max_size=3)},
        optional={"name": TEXT, "description": TEXT, "true_partition": st.lists(st.lists(NAMES, max_size=3), max_size=3),
                  "ppo": st.dictionaries(st.sampled_from(["gamma", "envs_per_task", "seed", "threads", "net", "bogus"]),
                                         st.one_of(st.integers(0, 3), st.floats(0, 1)), max_size=2)}))
    fault = draw(st.sampled_from(["none", "value", "task-value", "unknown", "missing"]))
    target = data if fault in ("value", "unknown") or not data["tasks"] else draw(st.sampled_from(data["tasks"]))
    if fault in ("value", "task-value"):
        target[draw(st.sampled_from(FIELDS if target is data else TASK_FIELDS))] = draw(TOML_VALUE)
    elif fault == "unknown":
        target[draw(st.sampled_from(["typo", "env", "nmae"]))] = draw(TOML_VALUE)
    elif fault == "missing":
        target.pop(draw(st.sampled_from(["name", "env_id"])), None)
    return data


SUITE_FILE = suite_files()


@settings(max_examples=60, **SETTINGS)
@given(data=SUITE_FILE)
def test_fuzzed_suite_files_never_crash(data):
    try:
        text = tomli_w.dumps(data)
    except (TypeError, ValueError):  # not representable in TOML: nothing a user could write
        return
    with tempfile.TemporaryDirectory() as tmp:
        suite = Path(tmp) / "suite.toml"
        suite.write_text(text)
        argv = ["train", "--suite", str(suite), "--steps", "64", "--out", str(Path(tmp) / "out")]
        code, stderr = run_main(*argv, stop_at_training=True)
        assert_controlled(code, stderr, argv + [text])


@settings(max_examples=30, **SETTINGS)
@given(raw=st.one_of(st.binary(max_size=120), st.text(max_size=120).map(str.encode)))
def test_fuzzed_bytes_as_suite_and_config_files_never_crash(raw):
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "input.toml"
        f.write_bytes(raw)
        for argv in (["train", "--suite", str(f), "--steps", "64"],
                     ["run", "--suite", "cartpole-planted", "--config", str(f), "--steps", "64"]):
            argv = argv + ["--out", str(Path(tmp) / "out")]
            code, stderr = run_main(*argv, stop_at_training=True)
            assert_controlled(code, stderr, argv + [repr(raw)])
