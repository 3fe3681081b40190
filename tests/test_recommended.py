"""`compare`'s `recommended` method (the tool's answer as a user follows it) and `pertask`, the
paired comparison of `recommended` with every other method, and the MORL indicators of a
comparison on a preference suite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli, seeded
from policygradex.compare.methods import CompareContext, get_method
from policygradex.compare.runner import _recommended_vs_others
from policygradex.tasks import load_suite


def _ctx(groups: dict) -> CompareContext:
    suite = load_suite("cartpole", n_tasks=4)
    return CompareContext(suite, None, None, Path("."), run_dir=Path("run"), run_groups=groups)


def test_recommended_follows_the_verdict():
    names = load_suite("cartpole", n_tasks=4).names
    real = {"k": 2, "groups": [[names[0], names[2]], [names[1], names[3]]], "null_p": 0.01, "distinguishable_from_noise": True}
    groups, info = get_method("recommended").grouping(_ctx(real), 0)
    assert groups == [[0, 2], [1, 3]] and "the run's groups" in info["followed"]
    noise = {**real, "null_p": 0.4, "distinguishable_from_noise": False}
    groups, info = get_method("recommended").grouping(_ctx(noise), 0)
    assert groups == [[0, 1, 2, 3]] and info["k"] == 1 and info["run_k"] == 2 and "one policy" in info["followed"]
    assert get_method("pertask").grouping(_ctx(real), 0)[0] == [[0], [1], [2], [3]]


def _entry(per_seed: list[float], kind: str = "multi_task") -> dict:
    return {"per_seed_mean": per_seed, "mean": sum(per_seed) / len(per_seed), "kind": kind, "grouping": {"followed": "x"}}


def test_recommended_against_the_others_by_hand():
    methods = {"recommended": _entry([10.0, 12.0, 11.0]), "multitask": _entry([8.0, 9.0, 9.5]),
               "pertask": _entry([10.5, 12.5, 11.0]), "random": _entry([10.0, 12.5, 10.0]),
               "meta-maml": _entry([99.0, 99.0, 99.0], kind="meta_rl")}
    r = _recommended_vs_others(methods)
    assert set(r["vs"]) == {"multitask", "pertask", "random"}  # meta-RL is scored on other tasks
    mt = r["vs"]["multitask"]  # differences 2, 3, 1.5: mean 2.1667, all positive
    assert mt["paired_diff_mean"] == pytest.approx(13 / 6) and mt["significant"] == "above"
    pt = r["vs"]["pertask"]  # differences -0.5, -0.5, 0: mean -1/3, t-interval excludes 0? sd 0.2887, half 0.717
    assert pt["paired_diff_mean"] == pytest.approx(-1 / 3) and pt["significant"] == "no"
    assert r["best_in_hindsight"] == "pertask" and r["regret"] == pytest.approx(34 / 3 - 11.0)
    alone = _recommended_vs_others({"recommended": _entry([1.0, 2.0]), "multitask": _entry([0.0, 1.0])})
    assert alone["best_in_hindsight"] == "recommended" and alone["regret"] == 0.0


@pytest.mark.trains
def test_compare_on_a_preference_suite(tmp_path):
    pytest.importorskip("mo_gymnasium")
    out = tmp_path / "cmp"
    proc = run_cli("compare", "--suite", "mo:deep-sea-treasure-v0", "--tasks", "4", "--anchors", "2", "--replicates", "1",
                   "--theta-window", "1", "--seed", str(seeded(0)), "--steps", "2048", "--transitions", "256",
                   "--null-permutations", "10", "--methods", "recommended,multitask,pertask", "--seeds", "2",
                   "--steps-per-task", "100", "--episodes", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads((out / "comparison.json").read_text())
    for name, e in r["methods"].items():
        m = e["morl"]
        assert len(m["expected_utility"]["per_seed"]) == 2 and m["ref_point"] == [0.0, -25.0]
        assert m["expected_utility"]["mean"] <= m["front_expected_utility"] + 1e-9
        assert 0.0 <= m["hypervolume"]["mean"] <= m["front_hypervolume"] + 1e-9
    assert [len(g) for g in r["methods"]["pertask"]["groups"][0]] == [1, 1, 1, 1]
    rec = r["recommended"]
    assert set(rec["vs"]) == {"multitask", "pertask"} and rec["best_in_hindsight"] in r["methods"]
    followed = r["methods"]["recommended"]["groups"][0]
    if r["policygradex_run"]["distinguishable_from_noise"]:
        assert followed == r["policygradex_run"]["groups"]
    else:
        assert len(followed) == 1
    assert "paired difference of its mean return against multitask" in " ".join(proc.stdout.split())
