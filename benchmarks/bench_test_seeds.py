"""Do the tests that train hold for other seeds?  ``pytest -m trains`` at several seed offsets.

  python benchmarks/bench_test_seeds.py [--offsets 0,1000,2000,3000,4000,5000] [--marker trains]
                                        [--tests tests/test_ppo.py ...] [--cache DIR] [--fresh] [--save-as NAME]

Every test that trains a policy is marked ``trains`` and derives its seeds (training seed, suite
seed, evaluation seed) from ``tests/conftest.py:seeded``, which adds POLICYGRADEX_TEST_SEED_OFFSET.
This script runs the marked tests once per offset (offset 0: the seeds written in the tests),
records every test's outcome (passed / failed / error / skipped) and duration per offset, and
saves benchmarks/results/test_seeds.json (with the CPU model and load average in its provenance:
float results, and so training outcomes, differ across CPU models).

Resumable: each offset's result is cached as one JSON under ``--cache`` (default
runs/bench_test_seeds, ignored by git), keyed by the offset, the selection (marker, --tests) and
a digest of the sources and tests; a rerun reuses every cached offset whose key still matches
and runs only the others (``--fresh`` ignores the cache).  ``--tests`` restricts the run to some
files or node ids (quick checks); the saved result then says so and is named after --save-as.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_average, save  # noqa: E402
from policygradex.artifacts import cpu_model  # noqa: E402

from policygradex.artifacts import write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OFFSET_VAR = "POLICYGRADEX_TEST_SEED_OFFSET"
DEFAULT_OFFSETS = "0,1000,2000,3000,4000,5000"


def source_digest() -> str:
    """sha256 over the library's sources, the tests and pyproject.toml: a cached offset is reused
    only while none of them changed."""
    h = hashlib.sha256()
    files = sorted([*ROOT.glob("src/**/*.py"), *ROOT.glob("tests/**/*.py"), ROOT / "pyproject.toml"])
    for p in files:
        if "__pycache__" in p.parts:
            continue
        h.update(p.relative_to(ROOT).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def node_id(case: ET.Element) -> str:
    """pytest's node id from a JUnit test case (classname ``tests.test_x`` or ``tests.test_x.Class``)."""
    parts = case.get("classname", "").split(".")
    mod, cls = [], []
    for i, part in enumerate(parts):
        mod.append(part)
        if part.startswith("test_"):
            cls = parts[i + 1:]
            break
    path = "/".join(mod) + ".py"
    return "::".join([path, *cls, case.get("name", "?")])


def parse_junit(path: Path) -> dict[str, dict]:
    tests = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", None
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (el.get("message") or "").strip().splitlines()[0][:300] if el.get("message") else None
                break
        tests[node_id(case)] = {"outcome": outcome, "duration_s": round(float(case.get("time", 0.0)), 2),
                                **({"message": message} if message else {})}
    return tests


def run_offset(offset: int, marker: str, tests: list[str], cache: Path, key: dict) -> dict:
    """``pytest -m MARKER [TESTS]`` with the seeds shifted by ``offset``; the per-test outcomes."""
    cache.mkdir(parents=True, exist_ok=True)
    junit, log = cache / f"offset_{offset}.junit.xml", cache / f"offset_{offset}.log"
    junit.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pytest", "-m", marker, "-p", "no:cacheprovider", f"--junitxml={junit}",
           "-o", "junit_duration_report=total", "-q", *tests]
    env = {**os.environ, OFFSET_VAR: str(offset), "POLICYGRADEX_QUIET": "1"}
    load_before = load_average()
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    results = parse_junit(junit) if junit.exists() else {}
    if not results:
        tail = log.read_text()[-2000:]
        raise SystemExit(f"offset {offset}: pytest exited {proc.returncode} without test results; log {log}:\n{tail}")
    return {"offset": offset, "key": key, "exit_code": proc.returncode, "wall_s": round(wall, 1),
            "load_average_before": load_before, "load_average_after": load_average(),
            "cpu_model": cpu_model(), "tests": results}


def summarize(units: list[dict]) -> dict:
    offsets = [u["offset"] for u in units]
    names = sorted({t for u in units for t in u["tests"]})
    per_test = {}
    for name in names:
        row = {str(u["offset"]): u["tests"].get(name, {"outcome": "not run"}) for u in units}
        outcomes = [r["outcome"] for r in row.values()]
        per_test[name] = {"outcomes": {k: r["outcome"] for k, r in row.items()},
                          "duration_s": {k: r.get("duration_s") for k, r in row.items()},
                          "passed_at_every_offset": all(o == "passed" for o in outcomes),
                          "skipped_somewhere": "skipped" in outcomes,
                          **({"messages": {k: r["message"] for k, r in row.items() if r.get("message")}}
                             if any(r.get("message") and r["outcome"] in ("failed", "error") for r in row.values()) else {})}
    failing = sorted(n for n, r in per_test.items() if any(o in ("failed", "error") for o in r["outcomes"].values()))
    skipped = sorted(n for n, r in per_test.items() if r["skipped_somewhere"])
    return {
        "offsets": offsets,
        "tests": len(names),
        "failing_somewhere": failing,
        "skipped_somewhere": skipped,
        "all_passed_at_every_offset": not failing and not skipped,
        "wall_s_per_offset": {str(u["offset"]): u["wall_s"] for u in units},
        "per_offset": {str(u["offset"]): {"exit_code": u["exit_code"], "passed": sum(t["outcome"] == "passed" for t in u["tests"].values()),
                                          "failed": sum(t["outcome"] in ("failed", "error") for t in u["tests"].values()),
                                          "skipped": sum(t["outcome"] == "skipped" for t in u["tests"].values()),
                                          "cpu_model": u["cpu_model"], "load_average_before": u["load_average_before"],
                                          "load_average_after": u["load_average_after"]} for u in units},
        "per_test": per_test,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--offsets", default=DEFAULT_OFFSETS, help=f"seed offsets, comma-separated (default {DEFAULT_OFFSETS})")
    ap.add_argument("--marker", default="trains", help="pytest marker expression (default: trains)")
    ap.add_argument("--tests", nargs="*", default=[], help="restrict to these test files or node ids (a quick check)")
    ap.add_argument("--cache", type=Path, default=ROOT / "runs" / "bench_test_seeds", help="one JSON per offset (resume)")
    ap.add_argument("--fresh", action="store_true", help="ignore cached offsets")
    ap.add_argument("--save-as", default=None, help="result name under benchmarks/results (default test_seeds, "
                                                     "test_seeds_subset with --tests)")
    args = ap.parse_args(argv)
    try:
        offsets = [int(x) for x in args.offsets.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--offsets {args.offsets!r}: expected comma-separated integers")
    if not offsets or any(o < 0 for o in offsets) or len(set(offsets)) != len(offsets):
        ap.error(f"--offsets {args.offsets!r}: expected distinct integers >= 0")
    digest = source_digest()
    units = []
    for off in offsets:
        key = {"marker": args.marker, "tests": args.tests, "source_digest": digest}
        path = args.cache / f"offset_{off}.json"
        cached = None
        if path.exists() and not args.fresh:
            try:
                cached = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                cached = None
        if cached is not None and cached.get("key") == key:
            print(f"offset {off}: cached ({cached['wall_s']:.0f} s when it ran; {path})", flush=True)
            units.append(cached)
            continue
        print(f"offset {off}: running pytest -m {args.marker} {' '.join(args.tests)}", flush=True)
        unit = run_offset(off, args.marker, args.tests, args.cache, key)
        write_json(path, unit)
        bad = [n for n, t in unit["tests"].items() if t["outcome"] in ("failed", "error")]
        print(f"offset {off}: {len(unit['tests'])} tests in {unit['wall_s']:.0f} s "
              f"(load {unit['load_average_before'][0]:.1f} -> {unit['load_average_after'][0]:.1f}); "
              f"{'failed: ' + ', '.join(bad) if bad else 'all passed or skipped'}", flush=True)
        units.append(unit)
    summary = summarize(units)
    name = args.save_as or ("test_seeds" if not args.tests else "test_seeds_subset")
    out = save(name, {"what": "pytest -m %s at seed offsets %s (POLICYGRADEX_TEST_SEED_OFFSET); offset 0 = the seeds "
                              "written in the tests" % (args.marker, offsets),
                      "selection": {"marker": args.marker, "tests": args.tests or "all"},
                      "source_digest": digest, **summary})
    walls = [u["wall_s"] for u in units]
    print(f"{summary['tests']} tests x {len(offsets)} offsets; one offset took {min(walls):.0f}-{max(walls):.0f} s; "
          f"{'every test passed at every offset' if summary['all_passed_at_every_offset'] else 'failing: ' + ', '.join(summary['failing_somewhere']) + ('; skipped somewhere: ' + ', '.join(summary['skipped_somewhere']) if summary['skipped_somewhere'] else '')}")
    print(f"saved {out}")
    return 0 if not summary["failing_somewhere"] else 1


if __name__ == "__main__":
    sys.exit(main())
