"""Plots and the run's ``report.md``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import io
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from . import artifacts as art  # noqa: E402

if TYPE_CHECKING:
    from .estimate.collect import MetaPolicy


def num(x, spec: str) -> str:
    """``format(x, spec)``, or "-" for a value that is missing (None: a NaN in a strict-JSON artifact)."""
    return "-" if x is None else format(x, spec)


def save_png(fig, path: Path, dpi: int = 120) -> None:
    """Render ``fig`` to PNG, write it atomically to ``path`` and close it; no glyph warnings."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # a name in a script the font lacks (emoji, CJK) is drawn as a box; matplotlib's warning
        # about each missing glyph would add lines around the CLI's output
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font", category=UserWarning)
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    art.write_bytes(path, buf.getvalue())


def affinity_heatmap(U: np.ndarray, names: list[str], labels, path: Path) -> None:
    """Heatmap of U with tasks ordered by group; group boundaries drawn."""
    labels = np.asarray(labels)
    order = np.lexsort((np.arange(len(names)), labels))
    Uo = U[np.ix_(order, order)]
    n = len(names)
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * n, 1.0 + 0.45 * n))
    lim = float(np.abs(U[~np.eye(n, dtype=bool)]).max()) if n > 1 else 1.0
    im = ax.imshow(Uo, cmap="RdBu_r", vmin=-lim, vmax=lim)
    # parse_math=False: a task name is text, never mathtext ("$...$" in a name would fail to parse)
    ax.set_xticks(range(n), [names[i] for i in order], rotation=90, fontsize=8, parse_math=False)
    ax.set_yticks(range(n), [names[i] for i in order], fontsize=8, parse_math=False)
    bounds = np.flatnonzero(np.diff(labels[order])) + 0.5
    for b in bounds:
        ax.axhline(b, color="k", lw=1.5)
        ax.axvline(b, color="k", lw=1.5)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="affinity U (std. units)")
    ax.set_title("task affinity (ordered by group)")
    save_png(fig, path)


def signal_summary(meta: MetaPolicy, min_healthy_frac: float) -> dict:
    """The run-level reading of theta*'s per-task signal health table (``meta_policy.json["signal"]``,
    the table of report.md): which tasks are collapsed, and whether the run-level rule holds.

    The run-level rule is the one that accepts a checkpoint (estimate.collect): the signal of the run
    is collapsed when fewer than ``min_healthy_frac`` of the tasks are healthy (or none is).  It is
    applied to the collection's table, so the verdict follows the table that the report shows.
    ``probe_met_rule`` says whether the checkpoint's short probe met the rule (False: no probed
    checkpoint did and theta* is the one with the largest advantage scale)."""
    table = meta.signal
    collapsed = [name for name, h in table.items() if h["collapsed"]]
    n = len(table)
    healthy_frac = (n - len(collapsed)) / n if n else 0.0
    run_level = len(collapsed) == n or healthy_frac < min_healthy_frac
    return {"collapsed_tasks": collapsed, "n_collapsed": len(collapsed), "n_tasks": n, "healthy_frac": healthy_frac,
            "min_healthy_frac": float(min_healthy_frac), "run_level_collapsed": bool(run_level),
            "probe_met_rule": _probe_met_rule(meta, len(collapsed) == n)}


def _probe_met_rule(meta: MetaPolicy, all_collapsed: bool) -> bool | None:
    """Whether theta*'s probe met the rule (``meta_policy.json``; older files only say
    ``healthy`` = probe met it and not every task collapsed: None when that cannot tell)."""
    if meta.probe_met_rule is not None:
        return bool(meta.probe_met_rule)
    return None if all_collapsed else bool(meta.healthy)


def signal_sentence(signal: dict, max_names: int | None = None) -> str | None:
    """The one sentence about theta*'s advantage signal shared by the CLI, report.md and the README:
    the run-level verdict when the run-level rule holds, the collapsed tasks when some are, else None.
    ``max_names`` shortens a long list of tasks (the CLI)."""
    k, n = signal["n_collapsed"], signal["n_tasks"]
    if k == 0:
        return None
    names = signal["collapsed_tasks"]
    if max_names is not None and len(names) > max_names:
        names = names[:max_names] + [f"... ({len(names) - max_names} more)"]
    if signal["run_level_collapsed"]:
        return (f"theta*'s advantage signal is collapsed: the affinity is likely noise (collapsed on {k} of {n} tasks: "
                f"{', '.join(names)}; fewer than {signal['min_healthy_frac']:.0%} of tasks healthy)")
    return f"advantage signal collapsed on {k} of {n} tasks: {', '.join(names)}"


def verdict_of(groups: dict) -> dict:
    """groups.json's ``verdict`` (group stage format 3); for an older file, the single-theta* test it ran."""
    return groups.get("verdict") or {"test": "single_theta_star_permutation", "calibrated": False, "p": groups["null_p"],
                                     "replicates": 1, "replicate_over": "seeds", "not_calibrated_because": "one replicate",
                                     "distinguishable_from_noise": groups["distinguishable_from_noise"]}


def verdict_label(groups: dict) -> str:
    """The verdict in a few words, shared by the CLI headline and report.md: which test, its p, calibrated or not."""
    v = verdict_of(groups)
    if v["test"] == "replicate_consensus":
        over = "" if v["replicate_over"] == "seeds" else f" over {v['replicate_over']}"
        test = f"consensus of {v['replicates']} replicates{over}"
    else:
        test = "one replicate, null test"
    return f"{test}: p = {v['p']:.3f}, {'calibrated' if v['calibrated'] else 'not calibrated'}"


def _null_description(verdict: dict) -> str:
    if verdict["test"] == "replicate_consensus":
        return "the consensus of the replicates with each replicate's task labels permuted independently"
    return "f permuted among each task's subsets: this theta* only"


def _stability_line(stab: dict | None) -> str:
    """report.md's self-check of the grouping's stability: a bootstrap over the subsets (one
    replicate) or the consensus without each replicate in turn."""
    if stab is None:
        return "Stability: not measured."
    per_task = ", ".join(f"{t} {v:.2f}" for t, v in stab["per_task"].items())
    if "resamples" in stab:
        return (f"Bootstrap over subsets ({stab['resamples']} resamples): mean ARI against the reported grouping "
                f"{stab['mean_ari']:.2f}; per-task stability (fraction of partners kept): {per_task}.")
    return (f"Leave one replicate out: per task, the fraction of the other tasks on whose side the consensus of the other "
            f"replicates agrees with the reported grouping, averaged over the replicate left out (a task whose place "
            f"hinges on one training scores low; coassociation.csv has how often each pair lands together in the "
            f"replicates' own groupings): {per_task}.")


def _stability_source(stab: dict | None) -> str:
    """What the stability numbers come from (runs written before it was recorded: the bootstrap)."""
    return (stab or {}).get("source", "bootstrap over the subsets")


def _distrust(cfg, groups: dict, sentence: str | None) -> list[str]:
    """The reasons not to trust the groups as they stand (the verdict's bullet list; empty: trust them)."""
    trust = []
    if groups["signal"]["run_level_collapsed"]:
        trust.append(sentence)
    if not groups["distinguishable_from_noise"]:
        trust.append(f"the groups are NOT distinguishable from noise ({verdict_label(groups)}; p >= {cfg.group.alpha})")
        perms = groups["null_statistic"]["permutations"]
        if 1 / (perms + 1) >= cfg.group.alpha:
            trust.append(f"with {perms} permutations the smallest attainable p is {1 / (perms + 1):.3f} >= {cfg.group.alpha}: "
                         f"use --null-permutations {int(1 / cfg.group.alpha)} or more")
    d = groups["delta"]
    if d["median"] > 0.05:
        trust.append(f"median relative distance {d['median']:.2%} is beyond the first-order regime (~1%)")
    stab = groups.get("stability")
    if stab is not None:
        shaky = [t for t, v in stab["per_task"].items() if v < cfg.group.min_stability]
        if shaky:
            trust.append(f"unstable ({_stability_source(stab)}: stability < {cfg.group.min_stability}): {', '.join(shaky)}")
    ae = groups.get("approx_error_at_delta")
    if ae is not None and ae["median"] > cfg.group.max_approx_error:
        trust.append(f"the first-order approximation is off by {ae['median']:.1%} (median) at the surrogate's delta "
                     f"(> {cfg.group.max_approx_error:.0%}): lower --target-delta")
    return trust


def write_report(run_dir: Path, suite, cfg, meta: MetaPolicy, groups: dict, fit) -> None:
    est = cfg.estimate
    lines = [f"# PolicyGradEx run: `{suite.name}` ({suite.n} tasks)", ""]
    signal = groups["signal"]  # written by the group stage (format version 2)
    sentence = signal_sentence(signal)
    verdict = verdict_of(groups)
    d, stab, ae = groups["delta"], groups.get("stability"), groups.get("approx_error_at_delta")
    source = _stability_source(stab)
    imported = groups.get("meta_policy", {}).get("imported")  # where an imported theta* came from (rl.imported)
    trust = _distrust(cfg, groups, sentence)
    lines += ["## Verdict", ""]
    if trust:
        lines += ["**Do not trust these groups as they stand:**", ""] + [f"- {t}" for t in trust]
    else:
        health = ("theta*'s advantage signal is healthy" if signal["n_collapsed"] == 0 else
                  f"theta*'s advantage signal is healthy on {signal['n_tasks'] - signal['n_collapsed']} of {signal['n_tasks']} tasks")
        lines += [f"The groups are distinguishable from noise ({verdict_label(groups)}), stable ({source}), "
                  f"the first-order approximation holds at the surrogate's step, and {health}."]
    if not verdict["calibrated"] and groups["distinguishable_from_noise"]:
        lines += ["", f"Note: this verdict is not calibrated: {verdict['not_calibrated_because']}."]
    if sentence is not None and not signal["run_level_collapsed"]:
        lines += ["", f"Note: {sentence} (table below); the run-level rule ({signal['min_healthy_frac']:.0%} of tasks "
                  "healthy) holds, and the affinities of those tasks rest on a weak signal."]
    lines += ["", "## Groups", "", f"k = {groups['k']} (penalty {groups['penalty']}, solver {groups['solver']})", ""]
    for i, g in enumerate(groups["groups"]):
        lines.append(f"{i + 1}. {', '.join(g)}")
    if "nmi_vs_true_partition" in groups:
        lines += ["", f"NMI against the suite's known partition: **{groups['nmi_vs_true_partition']:.3f}**"]
    lines += ["", "![affinity](affinity.png)", "",
              "## Null test", "",
              f"Statistic: {groups['null_statistic']['name']} (mean same-group affinity minus mean cross-group affinity).",
              f"Observed {groups['null_statistic']['observed']:.3f}; under the null ({_null_description(verdict)}, "
              f"{groups['null_statistic']['permutations']} draws) mean {groups['null_statistic']['null_mean']:.3f}, "
              f"95th percentile {groups['null_statistic']['null_q95']:.3f}; p = {groups['null_p']:.4f}.", "",
              "## Self-check", "",
              _stability_line(stab), "",
              (f"First-order approximation error along the surrogate's own steps (median delta {ae['delta_median']:.2%}, "
               f"{ae['subsets']} subsets, held-out rows): median {ae['median']:.2%}, max {ae['max']:.2%}. "
               "`policygradex validate` measures it along real fine-tuning paths." if ae else ""), "",
              "## Meta-policy theta*", "",
              *_imported_lines(imported, meta, num),
              "| task | return | adv scale | % positive | signal |", "|---|---:|---:|---:|---|"]
    for name in suite.names:
        s = meta.signal[name]
        r = meta.per_task_return[name]
        lines.append(f"| {name} | {'-' if r is None else f'{r:.1f}'} | {s['adv_scale']:.2e} | {s['frac_positive']:.0%} | "
                     f"{'collapsed: ' + s['reason'] if s['collapsed'] else 'ok'} |")
    lines += ["", f"Signal healthy on {signal['n_tasks'] - signal['n_collapsed']} of {signal['n_tasks']} tasks over the collection "
              f"(run-level rule: at least {signal['min_healthy_frac']:.0%})."]
    if imported is None:  # an imported theta* was not chosen among checkpoints
        if signal["probe_met_rule"] is False:
            lines += ["", "No probed checkpoint met the rule on its short probe; theta* is the probed checkpoint with the largest "
                      "advantage scale. The verdict follows the collection's table above."]
        lines += ["", "Probed checkpoints (newest first):", ""]
    for p in meta.probes if imported is None else []:
        lines.append(f"- `{p['checkpoint']}`: healthy on {p['healthy_task_frac']:.0%} of tasks, overall adv scale "
                     f"{p['overall']['adv_scale']:.2e}, {p['overall']['frac_positive']:.0%} positive")
    conv = fit.converged
    lines += ["", "## Surrogate", "",
              f"{groups['subsets']['m']} subsets of {groups['subsets']['size']} tasks; every pair together in at least "
              f"{groups['subsets']['min_pair_count']} subsets. d = {est.d}, {est.transitions_per_task:,} transitions per task "
              f"({est.heldout_frac:.0%} of environment copies held out), evaluator `{est.evaluator}`.", "",
              f"L2 weight lam = {d['lam']:.3g}, chosen for a target relative distance {d['target']:.2%}: "
              f"delta median {d['median']:.3%}, min {d['min']:.3%}, max {d['max']:.3%}. "
              f"{int(conv.sum())}/{len(conv)} subset fits converged.", ""]
    art.write_text(Path(run_dir) / "report.md", "\n".join(lines) + "\n")


VALIDATION_HEADING = "## Validation against real fine-tuning"


def validation_section(r: dict) -> list[str]:
    """The lines of report.md's validation section, from the content of ``validation.json``."""
    def pct(x):
        return "-" if x is None else f"{x:.2%}"

    o, gt, sb = r["options"], r["ground_truth"], r["speedup_breakdown"]
    lines = [VALIDATION_HEADING, "",
             f"`policygradex validate`: {r['subsets']['m']} subsets fine-tuned for real with PPO "
             f"({o['finetune_steps']:,} steps x {o['finetune_seeds']} seeds each; median final relative distance "
             f"{pct(r['finetune']['final_delta_median'])}), {o['episodes']} evaluation episodes per task.", "",
             "| relative distance | first-order error (median) | points |", "|---|---:|---:|"]
    for label, b in r["approx_error"].items():
        lines.append(f"| {label} | {pct(b['median'])} | {b['n']} |")
    lines += ["", "| ground truth | NMI / ARI vs the estimate | random NMI | its k, null p | seed-to-seed Spearman |",
              "|---|---:|---:|---:|---:|",
              f"| returns after fine-tuning | {r['nmi']:.3f} / {r['ari']:.3f} | {r['random_nmi']:.3f} | {gt['k']}, {gt['null_p']:.3f} | "
              f"{'-' if r['f_true_reliability']['mean_between_seeds'] is None else format(r['f_true_reliability']['mean_between_seeds'], '.2f')} |"]
    sur = r.get("surrogate_truth")
    if sur is not None:
        lines.append(f"| real surrogate improvement | {sur['nmi']:.3f} / {sur['ari']:.3f} | {sur['random_nmi']:.3f} | "
                     f"{sur['k']}, {sur['null_p']:.3f} | {'-' if sur['mean_between_seeds'] is None else format(sur['mean_between_seeds'], '.2f')} |")
    lines += ["", f"Spearman of the estimated f against f_true (standardized): {'-' if r['spearman'] is None else format(r['spearman'], '.3f')}. "
              f"Speedup: {num(r['speedup'], '.1f')}x (real route {num(sb['real_s']['total'], '.0f')} s, "
              f"PolicyGradEx route {num(sb['policygradex_s']['total'], '.0f')} s).", ""]
    weak = [name for name, ok in (("returns", gt["distinguishable_from_noise"]),
                                  ("surrogate", sur["distinguishable_from_noise"] if sur else True)) if not ok]
    if weak:
        lines += [f"**Weak ground truth ({' and '.join(weak)}):** its grouping is not distinguishable from noise; read the "
                  "agreement with caution (more --finetune-seeds, or fewer --finetune-steps to stay near theta*).", ""]
    lines += ["![first-order error](approx_error.png) ![estimated vs true](estimated_vs_true.png)", "",
              "Details: `validation.json`; formulas: docs/validation.md."]
    return lines


def add_validation(run_dir: Path, r: dict) -> None:
    """(Re)write the validation section at the end of ``run_dir/report.md`` (a later `run` rewrites
    the report without it; `validate` adds it back)."""
    path = Path(run_dir) / "report.md"
    text = path.read_text() if path.is_file() else ""
    head = text.split("\n" + VALIDATION_HEADING)[0].rstrip("\n")
    art.write_text(path, head + "\n\n" + "\n".join(validation_section(r)) + "\n")


def approx_error_plot(points: list[dict], buckets, path: Path) -> None:
    """Log-log scatter of the first-order relative error against the relative distance delta:
    real fine-tuning snapshots (filled), points rescaled along the paths (open) and random
    directions at the same distances (crosses, a control), with the median per bucket (paths)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ok = [p for p in points if np.isfinite(p["error"]) and p["error"] > 0 and p["delta"] > 0]
    real = [p for p in ok if p["kind"] == "real"]
    scaled = [p for p in ok if p["kind"] == "scaled"]
    rnd = [p for p in ok if p["kind"] == "random"]
    if rnd:
        ax.scatter([p["delta"] for p in rnd], [p["error"] for p in rnd], s=10, marker="x", color="gray", alpha=0.6,
                   label="random direction (control)")
    if real:
        ax.scatter([p["delta"] for p in real], [p["error"] for p in real], s=14, alpha=0.6, label="fine-tuning snapshots")
    if scaled:
        ax.scatter([p["delta"] for p in scaled], [p["error"] for p in scaled], s=22, facecolors="none", edgecolors="C1",
                   label="rescaled along the path")
    fac = np.sqrt(2.0)
    med = []
    for b in buckets:
        e = [p["error"] for p in ok if p["kind"] != "random" and b / fac <= p["delta"] < b * fac]
        if e:
            med.append((b, float(np.median(e))))
    if med:
        ax.plot([m[0] for m in med], [m[1] for m in med], "k-o", lw=1.5, ms=5, label="bucket median")
    ax.axhline(0.021, color="gray", ls=":", lw=1, label="2.1% (paper, delta <= 1%)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("relative distance  ||theta - theta*|| / ||theta*||")
    ax.set_ylabel("relative first-order error")
    ax.set_title("first-order approximation of log pi along real fine-tuning")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    save_png(fig, path)


def estimated_vs_true_plot(z_est: np.ndarray, z_true: np.ndarray, members: np.ndarray, names: list[str], labels,
                           spearman: float, path: Path) -> None:
    """Scatter of the per-task standardized estimate f against the standardized f_true, one
    point per (subset, task), coloured by the task's ground-truth group."""
    labels = np.asarray(labels)
    fig, ax = plt.subplots(figsize=(5.6, 5.0))
    for g in np.unique(labels):
        cols = np.flatnonzero(labels == g)
        m = members[:, cols]
        ax.scatter(z_est[:, cols][m], z_true[:, cols][m], s=16, alpha=0.7, label=f"ground-truth group {g + 1}")
    lim = float(np.nanmax(np.abs(np.concatenate([z_est[members], z_true[members]])))) if members.any() else 1.0
    lim = max(lim, 1e-6) * 1.05
    ax.plot([-lim, lim], [-lim, lim], color="gray", ls=":", lw=1)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_xlabel("estimated f(S, i), standardized per task")
    ax.set_ylabel("real fine-tuning f_true(S, i), standardized per task")
    rho = "nan" if spearman is None or not np.isfinite(spearman) else f"{spearman:.3f}"
    ax.set_title(f"estimate vs real fine-tuning (Spearman {rho})")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    save_png(fig, path)


def _imported_lines(src: dict | None, meta, num) -> list[str]:
    """The theta* paragraph: a checkpoint of this run's training, or the imported policy's source."""
    if src is None:
        return [f"Checkpoint `{meta.checkpoint}` (step {meta.step:,}), mean per-task return {num(meta.mean_return, '.1f')} "
                f"over the collection episodes.", ""]
    libs = ", ".join(f"{k} {v}" for k, v in src.get("library", {}).items())
    files = ", ".join(f"`{f}`" for f in src.get("files", [])) or "none (the module's code only)"
    adv = ("GAE with the policy's own value function" if src.get("advantages", "").startswith("gae") else
           "Monte-Carlo returns minus a fitted baseline (per task, ridge regression on the observation and its squares)")
    return [f"Imported, not trained here: `{src['spec']}` ({src['kind']}; files {files}; sha256 `{src.get('sha256', '')[:16]}`; {libs}). "
            f"The policy sees the task as: {src.get('task_input')}. Advantages: {adv}, gamma {src.get('gamma')}. "
            f"Per-sample log-prob gradients under vmap match autograd on the policy to {num(src.get('gradient_check_rel_error'), '.1e')} "
            f"(relative). Mean per-task return {num(meta.mean_return, '.1f')} over the collection episodes.", ""]
