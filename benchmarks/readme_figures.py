"""Rewrite the README's generated blocks from the committed result files.

  python benchmarks/readme_figures.py            (or `make figures`) rewrite README.md
  python benchmarks/readme_figures.py --check    exit 1 (and show a diff) if README.md differs

A generated block sits between ``<!-- figures:NAME -->`` and ``<!-- /figures:NAME -->`` in
README.md; a generated table row is the row that starts with its key.  Everything in them comes
from ``benchmarks/results/``:

  quickstart        the quick start's command and its exact output   pipeline_quickstart.json
  quickstart-notes  what the run and its report.md say               pipeline_quickstart.json
  makerun           the `make run` paragraph: output, k, p, verdict  pipeline_makerun.json
  row `make run`    the benchmark table's `make run` row             pipeline_makerun.json
  trust             the trust scoreboard's table                      trust.json
  decision          does following the tool pay (compare per family)  decision.json
  policies          groups from Stable-Baselines3 models (run --policy) policies.json

Regenerate those files with ``python benchmarks/bench_pipeline.py quickstart`` and
``python benchmarks/bench_pipeline.py makerun`` (``trust.json`` with
``python benchmarks/bench_trust.py``, ``decision.json`` with ``python
benchmarks/bench_decision.py``, ``policies.json`` with ``python benchmarks/bench_policies.py``),
then run this script.  tests/test_readme.py
fails when README.md and the rendering differ.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"

BLOCKS = ("quickstart", "quickstart-notes", "makerun", "trust", "decision", "policies")
MAKERUN_ROW = "| `make run` (pipeline on `cartpole`, after install) |"


def load(name: str, results: Path = RESULTS) -> dict:
    return json.loads((results / f"{name}.json").read_text())


def fmt_p(p: float) -> str:
    """A p-value as the README writes it: at most 3 decimals, trailing zeros dropped (1.0, 0.06, 0.005)."""
    s = f"{p:.3f}".rstrip("0")
    return s + "0" if s.endswith(".") else s


def md(text: str) -> str:
    """Plain text for markdown prose (theta*'s would open an emphasis)."""
    return text.replace("*", r"\*").replace("_", r"\_")


def machine(res: dict) -> str:
    prov = res.get("provenance", {})
    cpu = prov.get("versions", {}).get("cpu_model") or prov.get("cpu_model")
    parts = [f"{prov['nproc']} cores" if prov.get("nproc") else None, cpu, (prov.get("date") or "")[:10] or None]
    return ", ".join(p for p in parts if p)


def prose(text: str) -> str:
    """A paragraph wrapped as the README wraps its prose (breaks at spaces, never inside "x = y")."""
    glued = text.replace(" = ", "\0=\0")
    return textwrap.fill(glued, width=96, break_long_words=False, break_on_hyphens=False).replace("\0=\0", " = ")


def output_block(stdout: str) -> list[str]:
    return ["```", *[line.rstrip() for line in stdout.rstrip("\n").splitlines()], "```"]


def _signal_sentence(res: dict) -> str | None:
    from policygradex.report import signal_sentence

    return signal_sentence(res["signal"]) if res.get("signal") else None


def render_quickstart(res: dict) -> str:
    cmd = res["command"]
    if not cmd.startswith("policygradex "):
        raise ValueError(f"pipeline_quickstart.json: unexpected command {cmd!r}")
    lines = ["```bash", "# group the 8 tasks of the planted family (half of them have mirrored actions)",
             f".venv/bin/{cmd}", "```", "", *output_block(res["stdout"])]
    return "\n".join(lines)


def _stability(res: dict, min_stability: float) -> str:
    stab = res["stability"]
    what = "leave-one-replicate-out stability" if res.get("replicates", 1) > 1 else "bootstrap stability"
    low = {t: v for t, v in stab.items() if v < min_stability}
    rest = [v for t, v in stab.items() if t not in low]
    rng = "" if not rest else (f"{min(rest):.2f}" if min(rest) == max(rest) else f"{min(rest):.2f}–{max(rest):.2f}")
    if not low:
        return f"{what} {rng} for every task"
    flagged = "; ".join(f"{t} {v:.2f}" for t, v in low.items())
    return f"{what} {flagged}" + (f"; every other task {rng}" if rest else "")


def render_quickstart_notes(res: dict) -> str:
    from policygradex.config import GroupConfig

    nmi = res.get("nmi_vs_true_partition")
    out = []
    if nmi is not None and nmi >= 1 - 1e-9:
        out.append("Every task lands in its planted cluster (NMI 1.000 against the planted partition).")
    elif nmi is not None:
        out.append(f"The groups match the planted partition at NMI {nmi:.3f}.")
    verdict = res["report_verdict"]
    items = [line[2:] for line in verdict.splitlines() if line.startswith("- ")]
    if items:
        out.append(f"`report.md` still says not to trust the groups as they stand ({_stability(res, GroupConfig().min_stability)}):")
        text = prose(" ".join(out)) + "\n\n" + "\n".join(f"> - {md(i)}" for i in items)
    else:
        out.append(f"`report.md`'s verdict: every check passes ({_stability(res, GroupConfig().min_stability)}).")
        text = prose(" ".join(out))
    notes = [line[len("Note: "):] for line in verdict.splitlines() if line.startswith("Note: ")]
    if notes:
        text += "\n\n" + "\n".join(prose(f"Note: {md(n)}") for n in notes)
    return text + "\n\n" + prose(f"(`benchmarks/results/pipeline_quickstart.json`: {res['wall_s']:.0f} s on {machine(res)}.)")


def render_makerun(res: dict) -> str:
    k, p = res["k"], res["null_p"]
    cmd = res["command"] if "stdout" in res else "policygradex run --suite cartpole --out runs/default"  # older files: no exact command
    intro = f"`make run` runs `{cmd}`: ten CartPole tasks with random physics."
    if "stdout" in res:
        parts = [prose(f"{intro} On this project's machine ({machine(res)}) it printed:"), "\n".join(output_block(res["stdout"]))]
        text = ""
    else:
        parts, text = [], intro + " "
    groups = f"{k} group" + ("s" if k != 1 else "")
    distinguishable = res.get("distinguishable_from_noise", p < 0.05)
    sig = _signal_sentence(res)
    if not distinguishable:
        text += (f"Their affinity does not beat the null, and the run says so: {groups}, null test p = {fmt_p(p)}, "
                 "\"these groups are not distinguishable from noise\".")
    else:
        text += f"The run finds {groups} (null test p = {fmt_p(p)}): " + " / ".join("{" + ", ".join(g) + "}" for g in res["groups"]) + "."
    if sig is not None:
        text += f" It also reports: \"{md(sig)}\"."
    if not distinguishable:
        text += " That is the tool working — a grouping is only reported as real when it beats the null."
    return "\n\n".join([*parts, prose(text)])


def render_makerun_row(res: dict) -> str:
    return (f"{MAKERUN_ROW} {res['wall_s']:.0f} s (k = {res['k']}, null p = {fmt_p(res['null_p'])}) | ≤ 5 min | "
            "`python benchmarks/bench_pipeline.py makerun` |")


FAMILY_TITLES = {"planted": "`cartpole-planted`, 8 tasks in 2 planted clusters", "thrusters": "Thrusters (own env module), 9 tasks in 3 planted clusters",
                 "identical": "8 identical CartPole tasks", "cartpole": "`cartpole` (n = 10)", "lunarlander": "`lunarlander` (n = 10)",
                 "fruittree": "`mo-fruit-tree`, 9 preferences around 3 front points", "deepsea": "`mo-deep-sea-treasure`, 9 preferences around 3 front points"}


def render_trust(res: dict) -> str:
    """The scoreboard: per family, R and mode, how often the answer was right (and the wrong ones called significant)."""
    lines = ["| family | replicates | right | wrong but called significant | called significant | cost per answer |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        fam = FAMILY_TITLES.get(r["family"], r["family"]) + (", `--k 2`" if r["mode"] == "k2" else "")
        n = r["seeds_done"]
        right = f"{r['right']}/{n}" if r.get("right") is not None else "–"
        if r.get("mean_pairwise_nmi") is not None:  # no known answer: do the seeds agree?
            same = round(r["verdict_consistency"] * n)
            right = f"cross-seed NMI {r['mean_pairwise_nmi']:.2f}; one verdict in {same}/{n}"
        wrong = str(r["wrong_but_significant"]) if r.get("wrong_but_significant") is not None else "–"
        cal = "" if r.get("calibrated") else " (not calibrated)"
        lines.append(f"| {fam} | {r['replicates']} | {right} | {wrong} | {r['significant']}/{n}{cal} | {r['mean_cost_seconds']:.0f} s |")
    prov = res.get("provenance", {})
    command = re.sub(r" --work \S*/runs/bench_trust\b", "", prov.get("command", "python benchmarks/bench_trust.py"))  # the default
    command = re.sub(r" --base \S+", "", command)  # trainings copied from an earlier variant's directories: the same answers
    partial = "" if res.get("complete", True) else " Partial: not every planned answer is in yet."
    lines += ["", prose(f"Right: the planted partition exactly (NMI 1) for the planted families; NMI at least 0.9 against the "
                        f"truth from the published Pareto front for the MO-Gymnasium preference families; \"not distinguishable from "
                        f"noise\" for identical tasks; for a family without a known answer, how alike the seeds' groupings are "
                        f"(mean pairwise NMI) and how many seeds share the most common verdict. Cost: the stage seconds an answer rests on (serial). "
                        f"The answers accumulate over calls of `python benchmarks/bench_trust.py` (it resumes from the "
                        f"answers in the result file; each records where it was computed); the latest call: "
                        f"`{command}` at commit {prov.get('git_commit', '?')} "
                        f"on {machine(res)} (`benchmarks/results/trust.json`).{partial}")]
    return "\n".join(lines)


def render_decision(res: dict) -> str:
    """bench_decision's table and where it was measured."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_decision import table

    done = [r for r in res["families"] if "pending" not in r]
    calls: dict[tuple, list[str]] = {}  # families measured by the same call share one mention
    for r in done:
        c = r["computed"]
        calls.setdefault((r["command"], c["git_commit"], c["nproc"], c["cpu_model"], c["date"][:10]), []).append(r["family"])
    where = "; ".join(f"{', '.join(fams)}: `{cmd}` at commit {commit}, {nproc} cores, {cpu}, {date}"
                      for (cmd, commit, nproc, cpu, date), fams in calls.items())
    pending = [r["family"] for r in res["families"] if "pending" in r]
    return "\n".join([table(res["families"]), "", prose(
        "Mean return over tasks ± 95% CI over 5 training seeds, the same environment steps per task for every method; "
        "paired differences of the per-seed means with their 95% CI (above, below: the CI excludes 0; no: it does not); "
        "regret: the best method's mean minus `recommended`'s (0 when `recommended` is the best). Measured, per family: "
        f"{where} (`benchmarks/results/decision.json`)." + (f" Not measured yet: {', '.join(pending)}." if pending else ""))])


def render_policies(res: dict) -> str:
    """bench_policies' table: the planted family grouped from SB3 models and from the project's own theta*, per budget."""
    label = {"sb3": "one SB3 PPO model (`--policy sb3:...`)", "sb3_replicates": "three SB3 PPO models, one per replicate",
             "own": "the project's own θ*, one replicate"}
    out = ["| θ* | training steps | right (NMI 1) | wrong but called significant | verdict |", "|---|---:|---:|---:|---|"]
    where, seeds = [], 0
    for b in res["budgets"]:
        s, rows = b["summary"], b["rows"]
        seeds = max(seeds, len(rows))
        for key in ("sb3", "sb3_replicates", "own"):
            if s.get(key, {}).get("of"):
                calibrated = any(r[key]["calibrated"] for r in rows if key in r)
                out.append(f"| {label[key]} | {b['steps']:,} | {s[key]['right']}/{s[key]['of']} | {s[key]['wrong_but_significant']} | "
                           f"{'calibrated' if calibrated else 'not calibrated'} |")
        p = b["provenance"]
        call = f"`{p['command']}` at commit {p['git_commit']}, {p['nproc']} cores, {p['cpu_model']}, {p['date'][:10]}"
        if call not in where:  # budgets measured by one call share one mention
            where.append(call)
    return "\n".join(out + ["", prose(
        f"`cartpole-planted`, suite seeds 0-{seeds - 1}; the training steps are environment steps over all tasks, the same for "
        "SB3 (`PPO(\"MlpPolicy\")` on `OneHotTaskEnv`, 8 envs, n_steps 128, batch 256) and for the project's meta-training. "
        f"Measured: {'; '.join(where)} (`benchmarks/results/policies.json`).")])


def render(results: Path = RESULTS) -> tuple[dict[str, str], dict[str, str]]:
    """(blocks by name, table rows by key) rendered from the result files."""
    qs, mk = load("pipeline_quickstart", results), load("pipeline_makerun", results)
    blocks = {"quickstart": render_quickstart(qs), "quickstart-notes": render_quickstart_notes(qs), "makerun": render_makerun(mk),
              "trust": render_trust(load("trust", results)), "decision": render_decision(load("decision", results)),
              "policies": render_policies(load("policies", results))}
    rows = {MAKERUN_ROW: render_makerun_row(mk)}
    return blocks, rows


def _block_re(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- figures:{re.escape(name)} -->\n)(.*?)(<!-- /figures:{re.escape(name)} -->)", re.S)


def extract(text: str, name: str) -> str:
    """The content of block ``name`` in ``text`` (ValueError when its markers are missing or repeated)."""
    found = _block_re(name).findall(text)
    if len(found) != 1:
        raise ValueError(f"README.md: expected one '<!-- figures:{name} -->' ... '<!-- /figures:{name} -->' block, found {len(found)}")
    return found[0][1].removesuffix("\n")


def extract_row(text: str, key: str) -> str:
    found = [line for line in text.splitlines() if line.startswith(key)]
    if len(found) != 1:
        raise ValueError(f"README.md: expected one table row starting with {key!r}, found {len(found)}")
    return found[0]


def apply(text: str, blocks: dict[str, str], rows: dict[str, str]) -> str:
    for name, content in blocks.items():
        extract(text, name)  # exactly one block
        text = _block_re(name).sub(lambda m: m.group(1) + content + "\n" + m.group(3), text)
    for key, row in rows.items():
        old = extract_row(text, key)
        text = text.replace(old + "\n", row + "\n", 1)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="do not write; exit 1 if README.md differs from the rendering")
    a = ap.parse_args()
    text = README.read_text()
    new = apply(text, *render())
    if a.check:
        if new != text:
            sys.stdout.writelines(difflib.unified_diff(text.splitlines(True), new.splitlines(True), "README.md", "rendered"))
            print("README.md differs from the result files; run `make figures`", file=sys.stderr)
            sys.exit(1)
        print("README.md matches the result files")
    elif new != text:
        from policygradex.artifacts import write_text

        write_text(README, new)
        print("README.md rewritten")
    else:
        print("README.md already up to date")


if __name__ == "__main__":
    main()
