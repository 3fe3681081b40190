"""The trust scoreboard: how often is one run's answer right, at one replicate and at R?

Families (``--families``, comma-separated; default all):

  planted      ``cartpole-planted`` at suite seeds 0-9: right = NMI 1 against the planted partition.
  thrusters    ``benchmarks/suites/thrusters.toml``: 9 Thrusters tasks (a custom environment module,
               ``benchmarks/envs/thrusters.py``, registered through gymnasium as users do) in three
               planted clusters by thruster wiring, pipeline seeds 0-4: right = NMI 1.
  identical    ``benchmarks/suites/identical.toml``: 8 CartPole-v1 tasks that differ only in their
               task id, pipeline seeds 0-19, in auto-k and with ``--k 2``: right = not
               distinguishable from noise.
  cartpole     ``cartpole`` (n = 10), pipeline seeds 0-4: no known answer; the agreement between
  lunarlander  seeds (mean pairwise NMI of the groupings) and the verdict's consistency.
  fruittree    ``mo-fruit-tree`` and ``mo-deep-sea-treasure`` (MO-Gymnasium preference families,
  deepsea      9 tasks around 3 anchors; the mo extra), suite and pipeline seeds 0-2: right = NMI
               >= 0.9 against the truth from the environment's published Pareto front.

Every answer is one ``policygradex run`` at the default options plus ``--replicates R`` (and
``--k 2`` for that mode).  A family's seeds share nothing across seeds; within a seed, the run
directory (``runs/bench_trust/<variant>/<family>/seed<s>/``) is reused across R and modes, so
that replicate 0 is the R = 1 run and R = 5 adds two replicates to R = 3: the pipeline's own stage
cache makes the benchmark resumable and incremental.  Each answer is cached as a small JSON
(``.../answers/``); a rerun skips what is cached, so the benchmark resumes across sessions
(``--max-minutes`` stops it cleanly between answers).  The result file keeps every answer, and a
work directory without an answer that the committed result file holds takes it from there (a
fresh clone resumes where the last session stopped instead of recomputing hours of answers); the
file summarizes every cached answer of the families above, not only those of this call.

Cost: the ``seconds`` of every stage manifest the answer rests on (replicates 0..R-1 and the group
stage), i.e. what a fresh serial run at R takes on this machine, and the wall time of the call
that produced it (incremental, with ``--workers``).

``--cached-only`` writes the result file from the answers cached so far (``complete`` false
while some are missing) and runs nothing.

``--quick`` screens variants at R = 1 (``--replicates 1``); ``--variant NAME --extra "ARGS"`` runs
every answer with extra CLI options (e.g. ``--extra "--transitions 16384"``), in its own
directories and result file.  ``--base default`` starts each of the variant's run directories as
a copy (hard links) of that variant's: the stage cache then recomputes only the stages whose
options the variant changes (a variant of the collect stage costs its collect, features,
surrogate and group stages, not the training), and the cost column still counts every stage.

Usage:
  python benchmarks/bench_trust.py [--families planted,identical] [--replicates 1,3,5] [--workers 2]
      [--quick] [--variant NAME --extra "ARGS" [--base default]] [--max-minutes 120]

Result: benchmarks/results/trust.json (``trust_<variant>.json`` for a variant) with the command,
nproc, CPU model, versions, load average and date; a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import policygradex, provenance, save  # noqa: E402

ROOT = HERE.parent
SUITES, ENVS, RESULTS = HERE / "suites", HERE / "envs", HERE / "results"


@dataclass(frozen=True)
class Family:
    args: tuple[str, ...]   # the suite; "{seed}" is replaced by the seed
    seeds: int
    modes: tuple[str, ...]  # "auto" and/or "k2"
    truth: str              # "nmi" (planted partition), "noise" (nothing to find), "agreement" (no known answer)
    env: tuple[tuple[str, str], ...] = ()
    right_nmi: float = 1.0  # truth "nmi": right at this NMI or above


FAMILIES = {
    "planted": Family(("--suite", "cartpole-planted", "--suite-seed", "{seed}"), 10, ("auto",), "nmi"),
    "thrusters": Family(("--suite", str(SUITES / "thrusters.toml"), "--seed", "{seed}"), 5, ("auto",), "nmi",
                        (("PYTHONPATH", str(ENVS)),)),
    "identical": Family(("--suite", str(SUITES / "identical.toml"), "--seed", "{seed}"), 20, ("auto", "k2"), "noise"),
    "cartpole": Family(("--suite", "cartpole", "--seed", "{seed}"), 5, ("auto",), "agreement"),
    "lunarlander": Family(("--suite", "lunarlander", "--seed", "{seed}"), 5, ("auto",), "agreement"),
    "fruittree": Family(("--suite", "mo-fruit-tree", "--suite-seed", "{seed}", "--seed", "{seed}"), 3, ("auto",), "nmi",
                        right_nmi=0.9),
    "deepsea": Family(("--suite", "mo-deep-sea-treasure", "--suite-seed", "{seed}", "--seed", "{seed}"), 3, ("auto",), "nmi",
                      right_nmi=0.9),
}


def _stage_seconds(run_dir: Path, replicates: int) -> float:
    """Seconds of every stage manifest of replicates 0..R-1 and of the group stage."""
    dirs = [run_dir] + [run_dir / "replicates" / f"r{i}" for i in range(1, replicates)]
    dirs += [w for d in list(dirs) for w in sorted((d / "window").glob("c*"))]  # each training's theta_window
    total = 0.0
    for d in dirs:
        for name in ("train", "collect", "features", "subsets", "surrogate", "evaluate"):
            m = d / f"{name}.manifest.json"
            if m.is_file():
                total += float(json.loads(m.read_text()).get("extra", {}).get("seconds", 0.0))
    g = run_dir / "group.manifest.json"
    return total + float(json.loads(g.read_text()).get("extra", {}).get("seconds", 0.0))


def _window_seconds(run_dir: Path, replicates: int) -> float:
    """The stage seconds of the replicates' theta_window members (their manifests do not change with R)."""
    total = 0.0
    for d in [run_dir] + [run_dir / "replicates" / f"r{i}" for i in range(1, replicates)]:
        for m in sorted((d / "window").glob("c*/*.manifest.json")):
            total += float(json.loads(m.read_text()).get("extra", {}).get("seconds", 0.0))
    return total


def _seed_from(src: Path, dst: Path) -> None:
    """A copy of another variant's run directory: the checkpoints hard-linked (they are only
    read), every other file copied (a hard link would share the lock file and any file written in
    place with the other variant), the lock left out."""
    def copy(s: str, d: str) -> None:
        (os.link if "checkpoints" in Path(s).parts else shutil.copy2)(s, d)

    tmp = dst.with_name(dst.name + ".copying")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, copy_function=copy, ignore=shutil.ignore_patterns(".lock"))
    os.replace(tmp, dst)


def answer(work: Path, name: str, fam: Family, seed: int, R: int, mode: str, workers: int, extra: list[str],
           base: Path | None = None) -> dict:
    """One cached answer: run (or reuse) the pipeline and summarize groups.json."""
    cache = work / "answers" / f"{name}-seed{seed}-R{R}-{mode}.json"
    if cache.is_file():
        out = json.loads(cache.read_text())
        if "window_seconds" not in out:  # answers cached before the cost counted the window's stages
            out["window_seconds"] = round(_window_seconds(work / name / f"seed{seed}", R), 1)
            out["cost_seconds"] = round(out["cost_seconds"] + out["window_seconds"], 1)
        return out
    run_dir = work / name / f"seed{seed}"
    if base is not None and not run_dir.exists() and (base / name / f"seed{seed}").is_dir():
        _seed_from(base / name / f"seed{seed}", run_dir)
    args = [a.replace("{seed}", str(seed)) for a in fam.args] + ["--replicates", str(R), "--workers", str(workers)]
    args += ["--k", "2"] if mode == "k2" else []
    wall, _ = policygradex("run", *args, *extra, "--out", str(run_dir), env=dict(fam.env), cwd=ROOT)
    prov = provenance()  # answers accumulate over sessions (and machines): each says where it was computed
    g = json.loads((run_dir / "groups.json").read_text())
    v = g.get("verdict", {})
    out = {"family": name, "seed": seed, "replicates": R, "mode": mode, "k": g["k"], "groups": g["groups"], "labels": g["labels"],
           "p": g["null_p"], "distinguishable": g["distinguishable_from_noise"], "calibrated": v.get("calibrated"),
           "test": v.get("test"), "nmi": g.get("nmi_vs_true_partition"), "cost_seconds": round(_stage_seconds(run_dir, R), 1),
           "window_seconds": round(_window_seconds(run_dir, R), 1),
           "wall_seconds": round(wall, 1), "computed": {k: prov[k] for k in ("date", "git_commit", "cpu_model", "nproc")}}
    if fam.truth == "nmi":
        out["right"] = out["nmi"] is not None and out["nmi"] > fam.right_nmi - 1e-9
        out["wrong_but_significant"] = (not out["right"]) and out["distinguishable"]
    elif fam.truth == "noise":
        out["right"] = not out["distinguishable"]
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1))
    os.replace(tmp, cache)
    return out


def restore_answers(work: Path, results: Path) -> int:
    """Copy into ``work/answers`` each answer of the committed result file that is not cached there
    (of a family still on the scoreboard); how many."""
    if not results.is_file():
        return 0
    n = 0
    for a in json.loads(results.read_text()).get("answers", []):
        cache = work / "answers" / f"{a['family']}-seed{a['seed']}-R{a['replicates']}-{a['mode']}.json"
        if a["family"] in FAMILIES and not cache.is_file():
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp")
            tmp.write_text(json.dumps(a, indent=1))
            os.replace(tmp, cache)
            n += 1
    return n


def cached_answers(work: Path) -> list[dict]:
    """Every cached answer of a family on the scoreboard, in scoreboard order."""
    out = [json.loads(p.read_text()) for p in sorted((work / "answers").glob("*.json"))]
    out = [a for a in out if a["family"] in FAMILIES and a["seed"] < FAMILIES[a["family"]].seeds]
    return sorted(out, key=lambda a: (list(FAMILIES).index(a["family"]), a["replicates"], a["mode"], a["seed"]))


def _mean_pairwise_nmi(labels: list[list[int]]) -> float | None:
    from sklearn.metrics import normalized_mutual_info_score

    pairs = list(itertools.combinations(labels, 2))
    return float(np.mean([normalized_mutual_info_score(a, b) for a, b in pairs])) if pairs else None


def summarize(answers: list[dict]) -> list[dict]:
    rows = []
    keys = sorted({(a["family"], a["replicates"], a["mode"]) for a in answers}, key=lambda t: (list(FAMILIES).index(t[0]), t[1], t[2]))
    for fam, R, mode in keys:
        rs = sorted((a for a in answers if (a["family"], a["replicates"], a["mode"]) == (fam, R, mode)), key=lambda a: a["seed"])
        truth = FAMILIES[fam].truth
        row = {"family": fam, "replicates": R, "mode": mode, "seeds_done": len(rs), "seeds_planned": FAMILIES[fam].seeds,
               "significant": sum(a["distinguishable"] for a in rs), "calibrated": all(a["calibrated"] for a in rs),
               "mean_cost_seconds": round(float(np.mean([a["cost_seconds"] for a in rs])), 1)}
        if truth in ("nmi", "noise"):
            row["right"] = sum(a["right"] for a in rs)
        if truth == "nmi":
            row["wrong_but_significant"] = sum(a["wrong_but_significant"] for a in rs)
            row["nmi"] = [round(a["nmi"], 3) for a in rs]
        if truth == "agreement":
            row["mean_pairwise_nmi"] = _mean_pairwise_nmi([a["labels"] for a in rs])
            verdicts = [a["distinguishable"] for a in rs]
            row["verdict_consistency"] = max(verdicts.count(True), verdicts.count(False)) / len(verdicts)
        row["p"] = [round(a["p"], 3) for a in rs]
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    out = ["| family | R | mode | seeds | right | wrong but significant | significant | calibrated | mean cost (s) |",
           "|---|---:|---|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        right = f"{r['right']}/{r['seeds_done']}" if "right" in r else f"agreement {r['mean_pairwise_nmi']:.2f}" if r.get(
            "mean_pairwise_nmi") is not None else "-"
        out.append(f"| {r['family']} | {r['replicates']} | {r['mode']} | {r['seeds_done']}/{r['seeds_planned']} | {right} | "
                   f"{r.get('wrong_but_significant', '-')} | {r['significant']}/{r['seeds_done']} | {'yes' if r['calibrated'] else 'no'} | "
                   f"{r['mean_cost_seconds']} |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--replicates", default="1,3,5", help="comma-separated R values, run in this order")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--quick", action="store_true", help="screening: R = 1 only")
    ap.add_argument("--variant", default=None, help="name of a variant (own directories and result file)")
    ap.add_argument("--extra", default="", help="extra CLI options of every run of the variant")
    ap.add_argument("--base", default=None, help="start the run directories from this variant's (a name under --work, or a path)")
    ap.add_argument("--seeds", type=int, default=None, help="at most this many seeds per family")
    ap.add_argument("--cached-only", action="store_true", help="summarize the answers already cached; run nothing")
    ap.add_argument("--max-minutes", type=float, default=None, help="stop (cleanly, between answers) after this long")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_trust")
    args = ap.parse_args()
    families = [f for f in args.families.split(",") if f]
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        ap.error(f"unknown families {unknown}; allowed: {', '.join(FAMILIES)}")
    if args.extra and not args.variant:
        ap.error("--extra needs --variant NAME")
    base = (Path(args.base) if "/" in args.base else args.work / args.base) if args.base else None
    if base is not None and not base.is_dir():
        ap.error(f"--base {args.base}: no such variant directory {base}")
    Rs = [1] if args.quick else [int(r) for r in args.replicates.split(",")]
    work = args.work / (args.variant or "default")
    extra = shlex.split(args.extra)
    result_name = "trust" + (f"_{args.variant}" if args.variant else "")
    restored = restore_answers(work, RESULTS / f"{result_name}.json")
    if restored:
        print(f"{restored} answers taken from {RESULTS / (result_name + '.json')} (not in {work / 'answers'})", flush=True)
    t0, stopped = time.monotonic(), False
    for R in Rs:
        for name in families:
            fam = FAMILIES[name]
            for seed in range(min(fam.seeds, args.seeds or fam.seeds)):
                for mode in fam.modes:
                    if args.max_minutes is not None and time.monotonic() - t0 > 60 * args.max_minutes:
                        stopped = True
                        break
                    if args.cached_only and not (work / "answers" / f"{name}-seed{seed}-R{R}-{mode}.json").is_file():
                        stopped = True
                        continue
                    try:
                        a = answer(work, name, fam, seed, R, mode, args.workers, extra, base)
                    except subprocess.CalledProcessError as exc:
                        print(f"{name} seed {seed} R {R} {mode}: failed ({exc.returncode}); skipped", flush=True)
                        continue
                    print(f"{name} seed {seed} R {R} {mode}: k {a['k']} p {a['p']:.3f} nmi {a['nmi']} right {a.get('right')} "
                          f"cost {a['cost_seconds']} s", flush=True)
    answers = cached_answers(work)
    rows = summarize(answers)
    save(result_name, {"variant": args.variant, "extra": args.extra, "complete": not stopped,
                "rows": rows, "answers": answers})
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
