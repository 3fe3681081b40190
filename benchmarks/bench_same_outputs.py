"""Same outputs before and after a change: byte-for-byte comparison of two revisions' run outputs.

Exports each revision into its own temporary directory (``git archive REV``, so the main checkout
and its git state stay untouched; ``--after WORKTREE`` copies the working tree instead: tracked
and untracked files that git does not ignore, as they are when the script starts), then runs the
CLI of that copy (this interpreter, ``PYTHONPATH=<copy>/src``, which wins over the editable
install; the imported ``policygradex.__file__`` is checked and recorded) in an empty temporary
working directory with ``POLICYGRADEX_QUIET=1`` and ``--out run``.  The runs are sequential: the
case's run of ``--before``, then of ``--after``.

Cases (``--cases``, comma-separated; default both):

  planted  ``policygradex run --suite cartpole-planted --out run`` at the default options (the
           README quick start; 8 tasks, auto k): 2-3.5 min per revision on a 2-core machine (115 s
           idle, 200 s at a load average of 3).
  sac      ``policygradex run --suite metaworld-mt10 --tasks 6 --algo sac --steps 6000
           --transitions 2048 --k 2 --out run``: MT-SAC at the Meta-World quick profile's SAC
           preset (1,000 steps per task, the first 250 per task random), theta* from the SAC
           checkpoints, 2,048 transitions per task with the soft advantages, a 6x6 affinity and
           the SDP at a fixed k = 2 (the planted case covers the automatic k): 70 s per revision
           on a 2-core machine at a load average of 3.

A full default run (both cases, both revisions) takes about 9 minutes on that machine.
``--quick`` shrinks both, to check the script itself (not a result; about 3 minutes): planted appends
``--steps 8192 --transitions 1024 --null-permutations 20``; sac uses ``--steps 3000
--transitions 512 --null-permutations 20``.

Compared byte for byte: ``groups.json``, ``affinity.csv`` and ``f_table.csv`` (required), and
``subsets.json`` and ``collect/meta_policy.json`` (for information).  Recorded per case and
revision: the sha256 of each file, the wall time, the exit status (and stderr's tail on a
failure); per file: equal or not (for differing CSVs the largest absolute difference, for
differing JSON the top-level keys that differ); the two revisions' commit hashes.

Usage:
  python benchmarks/bench_same_outputs.py [--before 07c7872] [--after HEAD|WORKTREE]
      [--cases planted,sac] [--quick] [--keep DIR] [--timeout 1800]

Result: benchmarks/results/same_outputs.json (``--quick``: same_outputs_quick.json).  Exit status
1 when any required file differs or is missing in any case, else 0.  ``--keep DIR`` copies both
run directories of each case to DIR/<case>/{before,after}/.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import policygradex, save  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BEFORE = "5dcbdd3"  # the last commit before the issue #16 refactor
WORKTREE = "WORKTREE"
REQUIRED = ("groups.json", "affinity.csv", "f_table.csv")
EXTRA = ("subsets.json", "collect/meta_policy.json")

SAC = ["run", "--suite", "metaworld-mt10", "--tasks", "6", "--algo", "sac", "--k", "2"]
CASES = {  # case: (the full command, the --quick command)
    "planted": (["run", "--suite", "cartpole-planted"],
                ["run", "--suite", "cartpole-planted", "--steps", "8192", "--transitions", "1024", "--null-permutations", "20"]),
    "sac": (SAC + ["--steps", "6000", "--transitions", "2048"],
            SAC + ["--steps", "3000", "--transitions", "512", "--null-permutations", "20"]),
}


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, check=True, capture_output=True, text=True).stdout.strip()


def export(rev: str, dest: Path) -> dict:
    """The tree of ``rev`` (or the working tree) under ``dest``; what was exported."""
    dest.mkdir(parents=True)
    if rev == WORKTREE:
        head = git("rev-parse", "HEAD")
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                                check=True, capture_output=True).stdout.decode().split("\0")
        files = [f for f in listed if f and (REPO / f).is_file()]  # tracked files deleted in the tree are skipped
        digest = hashlib.sha256()
        for f in sorted(files):
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, dest / f)
            digest.update(f.encode() + b"\0" + sha256(dest / f).encode() + b"\n")
        changed = git("status", "--porcelain", "--untracked-files=all").splitlines()
        return {"rev": WORKTREE, "commit": head, "worktree_changes": len(changed), "worktree_sha256": digest.hexdigest()}
    try:
        commit = git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    except subprocess.CalledProcessError:
        raise SystemExit(f"{rev}: not a commit of {REPO}") from None
    archive = dest.parent / f"{dest.name}.tar"
    with open(archive, "wb") as fh:
        subprocess.run(["git", "archive", "--format=tar", commit], cwd=REPO, check=True, stdout=fh)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    archive.unlink()
    return {"rev": rev, "commit": commit}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_case(args: list[str], checkout: Path, work: Path, timeout: float) -> dict:
    """``policygradex ARGS --out run`` of ``checkout`` in the empty directory ``work``."""
    src = checkout / "src"
    work.mkdir(parents=True)
    env = {"PYTHONPATH": str(src)}  # the checkout's package, not the installed one (checked below)
    probe = subprocess.run([sys.executable, "-c", "import policygradex; print(policygradex.__file__)"], cwd=work,
                           capture_output=True, text=True, env={**os.environ, **env})
    imported = probe.stdout.strip()
    if probe.returncode != 0 or not Path(imported).resolve().is_relative_to(src.resolve()):
        raise SystemExit(f"the checkout's package is not the one imported: {imported or probe.stderr[-500:]}")
    try:
        wall, proc = policygradex(*args, "--out", "run", cwd=work, check=False, capture_output=True, text=True,
                                  timeout=timeout, env=env)
        status, stderr = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as e:
        err = e.stderr or ""
        wall, status, stderr = timeout, "timed out", err if isinstance(err, str) else err.decode(errors="replace")
    out = {"imported": imported, "wall_s": round(wall, 1), "returncode": status,
           "sha256": {f: sha256(work / "run" / f) if (work / "run" / f).is_file() else None for f in REQUIRED + EXTRA}}
    if status != 0:
        out["stderr_tail"] = stderr[-2000:]
    return out


def describe_difference(a: Path, b: Path) -> dict:
    """What differs between two versions of an output (for the record, when the bytes differ)."""
    if not (a.is_file() and b.is_file()):
        return {"missing_in": [label for label, p in (("before", a), ("after", b)) if not p.is_file()]}
    if a.suffix == ".csv":
        ra, rb = (list(csv.reader(p.read_text().splitlines())) for p in (a, b))
        if len(ra) != len(rb) or any(len(x) != len(y) for x, y in zip(ra, rb)) or ra[0] != rb[0]:
            return {"shape_or_header_differs": True}
        diff, cells = 0.0, 0
        for x, y in zip(ra[1:], rb[1:]):
            for u, v in zip(x, y):
                if u != v:
                    cells += 1
                    try:
                        diff = max(diff, abs(float(u or "nan") - float(v or "nan")))
                    except ValueError:
                        diff = float("inf")
        return {"cells_differing": cells, "max_abs_difference": diff}
    ja, jb = json.loads(a.read_text()), json.loads(b.read_text())
    if isinstance(ja, dict) and isinstance(jb, dict):
        return {"keys_differing": sorted(k for k in ja.keys() | jb.keys() if ja.get(k) != jb.get(k))}
    return {"content_differs": ja != jb}


def compare(case: str, root: Path, args: list[str], timeout: float, keep: Path | None) -> dict:
    """Run ``args`` with both checkouts under ``root`` (each in an empty directory) and compare."""
    runs, dirs = {}, {}
    for label in ("before", "after"):
        print(f"[{case}] {label}: policygradex {' '.join(args)} --out run", flush=True)
        work = root / f"cwd_{case}_{label}"
        runs[label] = run_case(args, root / label, work, timeout)
        dirs[label] = work / "run"
        print(f"[{case}] {label}: exit {runs[label]['returncode']}, {runs[label]['wall_s']} s", flush=True)
    files = {}
    for f in REQUIRED + EXTRA:
        a, b = runs["before"]["sha256"][f], runs["after"]["sha256"][f]
        files[f] = {"required": f in REQUIRED, "equal": a is not None and a == b}
        if not files[f]["equal"]:
            files[f].update(describe_difference(dirs["before"] / f, dirs["after"] / f))
    for label, d in dirs.items():
        if keep is not None and d.exists():
            shutil.copytree(d, keep / case / label, dirs_exist_ok=True)
        shutil.rmtree(d.parent, ignore_errors=True)
    return {"command": ["policygradex", *args, "--out", "run"], "runs": runs, "files": files,
            "identical": all(files[f]["equal"] for f in REQUIRED)}


def _terminate(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that remove the temporary checkouts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", default=DEFAULT_BEFORE, help=f"revision before the change (default {DEFAULT_BEFORE})")
    ap.add_argument("--after", default="HEAD", help=f"revision after the change, or {WORKTREE} (default HEAD)")
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of: {', '.join(CASES)}")
    ap.add_argument("--quick", action="store_true", help="small budgets, to check the script (writes same_outputs_quick.json)")
    ap.add_argument("--keep", type=Path, help="copy both run directories of each case to DIR/<case>/{before,after}")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per CLI run (default 1800)")
    ap.add_argument("--save-as", default=None, help="result name (default same_outputs, or same_outputs_quick with --quick)")
    opts = ap.parse_args()
    cases = [c.strip() for c in opts.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown or not cases:
        ap.error(f"--cases: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(CASES)}")
    if opts.before == WORKTREE:
        ap.error(f"--before {WORKTREE}: only --after may be the working tree")

    signal.signal(signal.SIGTERM, _terminate)
    root = Path(tempfile.mkdtemp(prefix="same_outputs_"))
    try:
        revs = {"before": export(opts.before, root / "before"), "after": export(opts.after, root / "after")}
        print(f"before: {revs['before']['commit']} ({opts.before}); after: {revs['after']['commit']} ({opts.after})", flush=True)
        results = {}
        for case in cases:
            args = CASES[case][1 if opts.quick else 0]
            res = results[case] = compare(case, root, args, opts.timeout, opts.keep)
            for f, e in res["files"].items():
                shas = [(res["runs"][lbl]["sha256"][f] or "(missing)")[:12] for lbl in ("before", "after")]
                print(f"[{case}] {f}: {'same' if e['equal'] else 'DIFFERENT'} ({' / '.join(shas)})", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    identical = all(r["identical"] for r in results.values())
    path = save(opts.save_as or ("same_outputs_quick" if opts.quick else "same_outputs"), {
        "before": revs["before"], "after": revs["after"], "quick": opts.quick,
        "environment": {"POLICYGRADEX_QUIET": "1", "PYTHONPATH": "<checkout>/src", "python": sys.executable},
        "required_files": list(REQUIRED), "extra_files": list(EXTRA), "cases": results,
        "identical": identical})
    print(("IDENTICAL" if identical else "DIFFERENT") + f": required files of {', '.join(cases)}; wrote {path}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
