"""The README's generated figures and the verdict about theta*'s advantage signal (issue 15).

* README.md's quick-start block, its notes, the `make run` paragraph and the benchmark table's
  `make run` row must equal what benchmarks/readme_figures.py renders from the committed result
  files (pipeline_quickstart.json, pipeline_makerun.json); `--check` fails on a difference.
* The signal verdict follows the per-task health table: "collapsed on k of n tasks: ..." when
  some tasks are collapsed, the run-level "the affinity is likely noise" only when fewer than
  min_healthy_frac of the tasks are healthy, in groups.json's fields, report.md and the CLI.

No training: synthetic health tables, and the pipeline replaced by a stub for the CLI.
"""

from __future__ import annotations

import dataclasses

import contextlib
import importlib.util
import io
import sys
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import torch

from policygradex import cli
from policygradex.config import RunConfig
from policygradex.pipeline import RunResult
from policygradex.errors import UserError
from policygradex.estimate.collect import MetaPolicy
from policygradex.report import signal_sentence, signal_summary, write_report

ROOT = Path(__file__).resolve().parents[1]
RUN_LEVEL = "theta*'s advantage signal is collapsed: the affinity is likely noise"


def _figures():
    spec = importlib.util.spec_from_file_location("readme_figures", ROOT / "benchmarks" / "readme_figures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


figures = _figures()


# ---------------------------------------------------------------- README against the result files

@pytest.mark.parametrize("name", figures.BLOCKS)
def test_readme_block_matches_result_file(name):
    blocks, _ = figures.render()
    readme = (ROOT / "README.md").read_text()
    assert figures.extract(readme, name) == blocks[name], (
        f"README.md's '{name}' block differs from benchmarks/results; run `make figures` (python benchmarks/readme_figures.py)")


def test_readme_makerun_row_matches_result_file():
    _, rows = figures.render()
    readme = (ROOT / "README.md").read_text()
    for key, row in rows.items():
        assert figures.extract_row(readme, key) == row, "run `make figures`"


def test_quickstart_block_shows_the_recorded_command_and_output():
    res = figures.load("pipeline_quickstart")
    block = figures.extract((ROOT / "README.md").read_text(), "quickstart")
    assert f".venv/bin/{res['command']}\n" in block
    assert res["command"].startswith("policygradex run --suite cartpole-planted --out runs/planted")
    for line in res["stdout"].splitlines():
        assert line.rstrip() in block
    assert "runs/planted/groups.json" in block
    mk = figures.load("pipeline_makerun")
    makerun = " ".join(figures.extract((ROOT / "README.md").read_text(), "makerun").split())
    assert f"p = {figures.fmt_p(mk['null_p'])}" in makerun and f"{mk['k']} group" in makerun


def test_check_mode_fails_on_a_stale_readme(tmp_path, monkeypatch, capsys):
    blocks, rows = figures.render()
    good = figures.apply((ROOT / "README.md").read_text(), blocks, rows)
    stale = tmp_path / "README.md"
    stale.write_text(good.replace(blocks["makerun"], blocks["makerun"].replace("p = ", "p = 0.5, was ")))
    monkeypatch.setattr(figures, "README", stale)
    monkeypatch.setattr(sys, "argv", ["readme_figures.py", "--check"])
    with pytest.raises(SystemExit) as exc:
        figures.main()
    assert exc.value.code == 1
    monkeypatch.setattr(sys, "argv", ["readme_figures.py"])
    figures.main()
    assert stale.read_text() == good
    monkeypatch.setattr(sys, "argv", ["readme_figures.py", "--check"])
    figures.main()  # no exit: matches now
    assert "matches" in capsys.readouterr().out


def test_missing_markers_are_named():
    with pytest.raises(ValueError, match="figures:makerun"):
        figures.extract("no markers here", "makerun")


def test_fmt_p():
    assert [figures.fmt_p(p) for p in (1.0, 0.06, 0.004975, 0.0476, 0.5)] == ["1.0", "0.06", "0.005", "0.048", "0.5"]


# ---------------------------------------------------------------- the signal verdict

def _meta(n: int, collapsed: set[int], probe_healthy: bool = True) -> MetaPolicy:
    names = [f"task-{i:02d}" for i in range(n)]
    signal = {name: {"adv_scale": 1e-4 if i in collapsed else 0.1, "frac_positive": 0.5, "mean_abs_adv": 0.1,
                     "collapsed": i in collapsed, "reason": "advantage scale 1.00e-04 < 1e-03" if i in collapsed else ""}
              for i, name in enumerate(names)}
    return MetaPolicy.from_dict({  # a file written before probe_met_rule was recorded: only "healthy"
        "checkpoint": "step_000005120.pt", "step": 5120, "mean_return": 30.0, "per_task_return": {t: 30.0 for t in names},
        "healthy": probe_healthy, "signal": signal, "training_returns": {},
        "probes": [{"checkpoint": "step_000005120.pt", "healthy_task_frac": 0.7, "overall": {"adv_scale": 0.1, "frac_positive": 0.5}}]})


@pytest.mark.parametrize("n,collapsed,min_frac,run_level", [
    (10, set(), 0.8, False),
    (10, {3}, 0.8, False),
    (10, {3, 7}, 0.8, False),          # 80% healthy: the rule accepts it
    (10, {1, 3, 7}, 0.8, True),        # 70% < 80%
    (4, {0, 1, 2, 3}, 0.0, True),      # none healthy: collapsed whatever the threshold
    (4, {0, 1, 2}, 0.0, False),
])
def test_signal_summary_follows_the_table(n, collapsed, min_frac, run_level):
    s = signal_summary(_meta(n, collapsed), min_frac)
    assert s["n_collapsed"] == len(collapsed) and s["n_tasks"] == n
    assert s["collapsed_tasks"] == [f"task-{i:02d}" for i in sorted(collapsed)]
    assert s["run_level_collapsed"] is run_level
    sentence = signal_sentence(s)
    if not collapsed:
        assert sentence is None
    elif run_level:
        assert sentence.startswith(RUN_LEVEL) and f"collapsed on {len(collapsed)} of {n} tasks" in sentence
    else:
        assert sentence == f"advantage signal collapsed on {len(collapsed)} of {n} tasks: " + ", ".join(s["collapsed_tasks"])


def test_probe_met_rule_from_new_and_old_meta_files():
    meta = _meta(4, {1}, probe_healthy=True)
    assert signal_summary(dataclasses.replace(meta, probe_met_rule=False), 0.8)["probe_met_rule"] is False
    assert signal_summary(meta, 0.8)["probe_met_rule"] is True          # older file: only "healthy"
    assert signal_summary(_meta(4, {0, 1, 2, 3}, probe_healthy=False), 0.8)["probe_met_rule"] is None  # cannot tell


def test_meta_policy_file_round_trips_and_names_bad_fields():
    meta = _meta(3, {1})
    assert MetaPolicy.from_dict(meta.to_dict()) == meta
    d = meta.to_dict()
    del d["signal"]
    with pytest.raises(UserError, match=r"m\.json: missing signal; rerun"):
        MetaPolicy.from_dict(d, "m.json")
    with pytest.raises(UserError, match="unknown stepz"):
        MetaPolicy.from_dict({**meta.to_dict(), "stepz": 1}, "m.json")


def test_signal_sentence_shortens_long_lists():
    s = signal_summary(_meta(30, set(range(25))), 0.8)
    short = signal_sentence(s, max_names=10)
    assert "task-09, ... (15 more)" in short and "task-10" not in short
    assert "task-24" in signal_sentence(s)


class _Suite:
    def __init__(self, n: int):
        self.name, self.n, self.names = "synthetic", n, [f"task-{i:02d}" for i in range(n)]


def _groups(meta: MetaPolicy, cfg: RunConfig, p: float = 0.01) -> dict:
    names = list(meta.signal)
    signal = signal_summary(meta, cfg.estimate.min_healthy_frac)
    return {"tasks": names, "groups": [names], "k": 1, "labels": [0] * len(names), "penalty": 1.0, "objective": 0.0,
            "rounded_objective": 0.0, "solver": "CLARABEL",
            "delta": {"target": 0.01, "lam": 1.0, "median": 0.01, "min": 0.01, "max": 0.01, "mean": 0.01},
            "null_p": p, "null_statistic": {"name": "contrast", "observed": 1.0, "null_mean": 0.0, "null_q95": 0.5, "permutations": 200},
            "distinguishable_from_noise": p < cfg.group.alpha, "signal_collapsed": signal["run_level_collapsed"], "signal": signal,
            "meta_policy": {"checkpoint": meta.checkpoint, "step": meta.step, "mean_return": meta.mean_return},
            "subsets": {"m": 10, "size": 5, "min_pair_count": 3},
            "stability": {"per_task": {t: 1.0 for t in names}, "mean_ari": 1.0, "resamples": 5},
            "approx_error_at_delta": {"median": 0.01, "max": 0.02, "subsets": 5, "delta_median": 0.01}}


def _report(tmp_path: Path, meta: MetaPolicy) -> str:
    cfg = RunConfig()
    write_report(tmp_path, _Suite(len(meta.signal)), cfg, meta, _groups(meta, cfg),
                 SimpleNamespace(converged=torch.ones(10, dtype=torch.bool)))
    return (tmp_path / "report.md").read_text()


def test_report_names_the_collapsed_tasks_without_the_run_level_verdict(tmp_path):
    # the case: the probe found no checkpoint meeting the rule, the table says 9 of 10 tasks ok
    text = _report(tmp_path, _meta(10, {4}, probe_healthy=False))
    verdict = text.split("## Verdict")[1].split("## Groups")[0]
    assert RUN_LEVEL not in text
    assert "Do not trust" not in verdict
    assert "healthy on 9 of 10 tasks" in verdict
    assert "advantage signal collapsed on 1 of 10 tasks: task-04" in verdict
    assert text.count("| ok |") == 9 and text.count("| collapsed: ") == 1
    assert "No probed checkpoint met the rule on its short probe" in text


def test_report_gives_the_run_level_verdict_when_the_rule_holds(tmp_path):
    text = _report(tmp_path, _meta(10, {0, 1, 2, 3, 4, 5, 6, 7, 8}))
    verdict = text.split("## Verdict")[1].split("## Groups")[0]
    assert "Do not trust" in verdict
    assert f"- {RUN_LEVEL} (collapsed on 9 of 10 tasks: task-00, " in verdict and "task-08; fewer than 80% of tasks healthy)" in verdict
    assert "healthy on 1 of 10 tasks over the collection" in text


def test_report_healthy_signal(tmp_path):
    text = _report(tmp_path, _meta(6, set()))
    verdict = text.split("## Verdict")[1].split("## Groups")[0]
    assert "theta*'s advantage signal is healthy." in verdict and "collapsed" not in verdict


def _cli_run(tmp_path: Path, meta: dict, p: float) -> tuple[int, str, str]:
    cfg = RunConfig()
    groups = _groups(meta, cfg, p)
    result = RunResult(tmp_path / "out", groups, None, groups["tasks"], [])
    out, err = io.StringIO(), io.StringIO()
    with mock.patch("policygradex.pipeline.run", return_value=result), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exc:
        cli.main(["run", "--suite", "cartpole-planted", "--out", str(tmp_path / "out")])
    return exc.value.code, out.getvalue(), err.getvalue()


def test_cli_headline_follows_the_table(tmp_path):
    code, out, err = _cli_run(tmp_path, _meta(8, {2}, probe_healthy=False), p=0.2)
    assert code == 0 and err == ""
    assert RUN_LEVEL not in out
    assert "note: advantage signal collapsed on 1 of 8 tasks: task-02; see report.md" in out
    assert "warning: these groups are not distinguishable from noise" in out

    code, out, err = _cli_run(tmp_path, _meta(8, {0, 1, 2}), p=0.01)
    assert code == 0 and err == ""
    assert f"warning: {RUN_LEVEL} (collapsed on 3 of 8 tasks: task-00, task-01, task-02; fewer than 80% of tasks healthy); see report.md" in out
    assert "not distinguishable" not in out

    code, out, _ = _cli_run(tmp_path, _meta(8, set()), p=0.01)
    assert code == 0 and "advantage signal" not in out
