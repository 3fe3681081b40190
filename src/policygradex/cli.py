"""The ``policygradex`` command line: parse, call, print.  No logic lives here.

Exit codes: 0 success, 2 a user error (one line on stderr naming the input), 1 a bug,
130 interrupted (Ctrl-C), 143 stopped by SIGTERM.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import UserError
from .ui import quiet_gymnasium, returns_table

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Which RL tasks to train together: PolicyGradEx task grouping from projected policy gradients.")
out = Console()

SUITE_HELP = ("built-in suite (cartpole, cartpole-planted, lunarlander, highway, metaworld-mt10, metaworld-mt50, mo-fruit-tree, "
              "mo-deep-sea-treasure, mo-lunar-lander), metaworld:<task>,<task>,... (Meta-World v3 names), mo:<MO-Gymnasium id> "
              "(preference tasks; mo:<id>:objectives for one per objective), a suite .toml file, or env:<gymnasium id>")


# Options shared by `run` and `validate` (validate must be able to name the same run).
TasksOpt = Annotated[Optional[int], typer.Option("--tasks", help="number of tasks for a built-in suite")]
SuiteSeedOpt = Annotated[int, typer.Option("--suite-seed", help="seed of the built-in suite's task generator")]
AnchorsOpt = Annotated[Optional[int], typer.Option("--anchors", help="mo:<id> suites: preferences are drawn around this many "
                                                  "directions (default 3; --tasks defaults to 3 per anchor)")]
ProfileOpt = Annotated[Optional[str], typer.Option("--profile", help="budget profile of the highway and Meta-World suites: "
                                                  "quick (the default: a smoke run of minutes) or paper (long runs; docs/suites.md)")]
StepsOpt = Annotated[Optional[int], typer.Option("--steps", help="meta-training environment steps over all tasks")]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="TOML file with \\[ppo], \\[estimate], \\[group], \\[sac] (--algo sac) "
                                                 "and \\[validate] (validate) tables; every table in it is checked, whichever command reads it")]
KOpt = Annotated[Optional[int], typer.Option("--k", help="fixed number of groups (default: chosen automatically)")]
PenaltyScaleOpt = Annotated[Optional[float], typer.Option("--penalty-scale", help="auto-k price per group, in units of mean |U|")]
DOpt = Annotated[Optional[int], typer.Option("--d", help="projection dimension (default 400)")]
ProjectorOpt = Annotated[Optional[str], typer.Option("--projector", help="structured (per-layer, from one batched forward/backward; docs/projector.md) or dense (seeded Gaussian P); default structured")]
TransitionsOpt = Annotated[Optional[int], typer.Option("--transitions", help="transitions of theta* per task (default 8192)")]
SubsetSizeOpt = Annotated[Optional[int], typer.Option("--subset-size", help="tasks per subset (default about n/2)")]
CoverageOpt = Annotated[Optional[int], typer.Option("--coverage", help="minimum subsets per pair of tasks (default 3)")]
SubsetsOpt = Annotated[Optional[int], typer.Option("--subsets", help="number of subsets m (raised if coverage needs more)")]
TargetDeltaOpt = Annotated[Optional[float], typer.Option("--target-delta", help="target relative distance of the surrogate solutions (default 0.01)")]
EvaluatorOpt = Annotated[Optional[str], typer.Option("--evaluator", help="first_order_ppo, surrogate_loss or rollout_return")]
CheckpointOpt = Annotated[Optional[int], typer.Option("--checkpoint", help="pin theta* to the checkpoint of this step")]
MinReturnOpt = Annotated[Optional[float], typer.Option("--min-return", help="refuse a meta-policy whose mean return is below this")]
PolicyOpt = Annotated[Optional[List[str]], typer.Option("--policy", help="use a policy trained elsewhere as theta* instead of training one: module:PKG.MOD:FACTORY[:STATE_DICT] or sb3:PATH.zip; repeat it with independently trained policies for a calibrated verdict (one replicate each; docs/policies.md)")]
PolicyTaskInputOpt = Annotated[Optional[str], typer.Option("--policy-task-input", help="with --policy sb3:...: how the policy sees the task: onehot (appended to the observation, the default), none, or key:NAME (a dict observation with the task's index under NAME)")]
PolicyTasksOpt = Annotated[Optional[str], typer.Option("--policy-tasks", help="with --policy: the policy's task order, comma-separated names (default: the suite's)")]
ReplicatesOpt = Annotated[Optional[int], typer.Option("--replicates", help="independent estimates of the affinity; their consensus gives the groups and, with 2 or more, a calibrated verdict (default 3; 1 is today's single-theta* test, not calibrated)")]
ReplicateOverOpt = Annotated[Optional[str], typer.Option("--replicate-over", help="what differs between replicates: seeds (independent trainings: calibrated), checkpoints or projection (cheaper, one training: not calibrated)")]
ThetaWindowOpt = Annotated[Optional[int], typer.Option("--theta-window", help="checkpoints of each training whose affinities are averaged: theta* and the next ones (default 2; 1: theta* alone)")]
NullPermutationsOpt = Annotated[Optional[int], typer.Option("--null-permutations", help="permutations of the null test (default 200)")]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", help="torch threads (default 1)")]
BackendOpt = Annotated[str, typer.Option("--backend", help="where independent units run (run: features per task, null-test permutations; validate: fine-tuning per subset and seed; compare: training per method and seed): local (this machine) or ray (docs/scaling.md)")]
RayAddressOpt = Annotated[Optional[str], typer.Option("--ray-address", help="with --backend ray: an existing Ray cluster (auto, HOST:6379 or ray://HOST:10001); default: start a local Ray instance")]
AlgoOpt = Annotated[str, typer.Option("--algo", help="meta-trainer: ppo (multi-task PPO, the default) or sac (multi-task SAC with a "
                                            "per-task entropy temperature, continuous actions; options in a \\[sac] table of --config; docs/sac.md)")]
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", help="local: worker processes (default: one per replicate up to the machine's cores; with one replicate 1: in this process); ray without --ray-address: CPUs of the local Ray instance")]


@dataclass
class RunOptions:
    """The options that name a run, shared by `run`, `validate` and `compare` (validate and compare
    must be able to name the same run that `run` makes): declared once in :data:`_RUN_OPTIONS`."""

    tasks: Optional[int] = None
    suite_seed: int = 0
    anchors: Optional[int] = None
    profile: Optional[str] = None
    steps: Optional[int] = None
    config: Optional[Path] = None
    algo: str = "ppo"
    k: Optional[int] = None
    penalty_scale: Optional[float] = None
    d: Optional[int] = None
    projector: Optional[str] = None
    transitions: Optional[int] = None
    subset_size: Optional[int] = None
    coverage: Optional[int] = None
    subsets: Optional[int] = None
    target_delta: Optional[float] = None
    evaluator: Optional[str] = None
    checkpoint: Optional[int] = None
    min_return: Optional[float] = None
    null_permutations: Optional[int] = None
    replicates: Optional[int] = None
    replicate_over: Optional[str] = None
    theta_window: Optional[int] = None
    threads: Optional[int] = None
    backend: str = "local"
    ray_address: Optional[str] = None
    workers: Optional[int] = None
    policy: Optional[List[str]] = None
    policy_task_input: Optional[str] = None
    policy_tasks: Optional[str] = None


_RUN_OPTIONS = {"tasks": TasksOpt, "suite_seed": SuiteSeedOpt, "anchors": AnchorsOpt, "profile": ProfileOpt, "steps": StepsOpt, "config": ConfigOpt,
                "algo": AlgoOpt, "k": KOpt, "penalty_scale": PenaltyScaleOpt, "d": DOpt, "projector": ProjectorOpt,
                "transitions": TransitionsOpt, "subset_size": SubsetSizeOpt, "coverage": CoverageOpt, "subsets": SubsetsOpt,
                "target_delta": TargetDeltaOpt, "evaluator": EvaluatorOpt, "checkpoint": CheckpointOpt, "min_return": MinReturnOpt,
                "null_permutations": NullPermutationsOpt, "replicates": ReplicatesOpt, "replicate_over": ReplicateOverOpt,
                "theta_window": ThetaWindowOpt, "threads": ThreadsOpt, "backend": BackendOpt, "ray_address": RayAddressOpt, "workers": WorkersOpt,
                "policy": PolicyOpt, "policy_task_input": PolicyTaskInputOpt, "policy_tasks": PolicyTasksOpt}


def with_run_options(command):
    """Give a command the options of :class:`RunOptions`: its signature (what typer reads) gains one
    parameter per option after its own, and it is called with them packed as ``opts``."""
    sig = inspect.signature(command)
    own = [p for name, p in sig.parameters.items() if name != "opts"]
    defaults = RunOptions()
    shared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=getattr(defaults, name), annotation=ann)
              for name, ann in _RUN_OPTIONS.items()]

    @functools.wraps(command)
    def wrapper(**kwargs):
        opts = RunOptions(**{name: kwargs.pop(name) for name in _RUN_OPTIONS})
        return command(opts=opts, **kwargs)

    wrapper.__signature__ = sig.replace(parameters=own + shared)
    wrapper.__annotations__ = {k: v for k, v in command.__annotations__.items() if k != "opts"}
    return wrapper


def _backend(opts: RunOptions, replicates: int = 1):
    """The execution backend of --backend/--workers/--ray-address (user mistakes are UserErrors).
    Without --workers, a local run of R replicates gets min(R, cores) worker processes."""
    from .backend import make_backend

    workers = opts.workers
    if workers is None and opts.backend == "local" and replicates > 1:
        workers = max(1, min(replicates, os.cpu_count() or 1))
    return make_backend(opts.backend, workers=workers, address=opts.ray_address)


def _hidden(text: Optional[str]) -> Optional[tuple[int, ...]]:
    if text is None:
        return None
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise UserError(f"--hidden must be comma-separated integers like 64,64,64, got {text!r}") from None


def _ppo_config(suite, steps, seed, threads, envs_per_task, hidden, norm_adv, checkpoint_every, config_file):
    from .config import PPOConfig, parse
    from .runfile import read_section

    data = dict(suite.ppo_preset)
    if config_file is not None:
        data.update(read_section(config_file, "ppo"))
    overrides = {"total_steps": steps, "seed": seed, "threads": threads, "envs_per_task": envs_per_task,
                 "norm_adv": norm_adv, "checkpoint_every": checkpoint_every}
    data.update({k: v for k, v in overrides.items() if v is not None})
    if hidden is not None:
        data["net"] = {**data.get("net", {}), "hidden": hidden}
    flags = {"total_steps": "--steps", "seed": "--seed", "threads": "--threads", "envs_per_task": "--envs-per-task",
             "norm_adv": "--norm-adv", "checkpoint_every": "--checkpoint-every", "net.hidden": "--hidden"}
    return parse(PPOConfig, data, "options", flags)


def _check_algo(algo: str) -> str:
    from .config import ALGOS

    if algo not in ALGOS:
        raise UserError(f"--algo must be one of {', '.join(ALGOS)}, got {algo!r}")
    return algo


def _sac_config(suite, steps, seed, threads, envs_per_task, hidden, checkpoint_every, config_file):
    """The SACConfig of ``--algo sac``: defaults, the suite profile's SAC preset (rl.sac.PROFILES),
    the --config file's [sac] table, then the flags."""
    from .config import SACConfig, parse
    from .rl.sac import preset
    from .runfile import read_section

    data = preset(suite)
    data.update(read_section(config_file, "sac") if config_file is not None else {})
    overrides = {"total_steps": steps, "seed": seed, "threads": threads, "envs_per_task": envs_per_task,
                 "checkpoint_every": checkpoint_every}
    data.update({k: v for k, v in overrides.items() if v is not None})
    if hidden is not None:
        data["net"] = {**data.get("net", {}), "hidden": hidden}
    flags = {"total_steps": "--steps", "seed": "--seed", "threads": "--threads", "envs_per_task": "--envs-per-task",
             "checkpoint_every": "--checkpoint-every", "net.hidden": "--hidden"}
    return parse(SACConfig, data, "options", flags)


@app.command()
def train(
    suite: str = typer.Option("cartpole", "--suite", help=SUITE_HELP),
    tasks: Optional[int] = typer.Option(None, "--tasks", help="number of tasks for a built-in suite"),
    suite_seed: int = typer.Option(0, "--suite-seed", help="seed of the built-in suite's task generator"),
    anchors: AnchorsOpt = None,
    profile: ProfileOpt = None,
    steps: Optional[int] = typer.Option(None, "--steps", help="total environment steps over all tasks"),
    seed: int = typer.Option(0, "--seed", help="training seed"),
    out_dir: Path = typer.Option(Path("runs/train"), "--out", help="output directory (checkpoints, history)"),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch threads (default 1: fastest for small nets)"),
    envs_per_task: Optional[int] = typer.Option(None, "--envs-per-task", help="parallel environments per task"),
    hidden: Optional[str] = typer.Option(None, "--hidden", help="hidden widths, e.g. 64,64,64"),
    norm_adv: Optional[str] = typer.Option(None, "--norm-adv", help="advantage normalization: batch, task or none"),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", help="updates between checkpoints"),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML file with a \\[ppo] table of PPO options"),
    tensorboard: Optional[Path] = typer.Option(None, "--tensorboard", help="write TensorBoard logs to this directory"),
    eval_episodes: int = typer.Option(10, "--eval-episodes", min=1, max=10_000, help="evaluation episodes per task after training"),
    algo: AlgoOpt = "ppo",
):
    """Train a multi-task PPO (or, with --algo sac, SAC) meta-policy on a suite and print per-task returns."""
    from .tasks import load_suite

    _check_algo(algo)
    if algo == "sac" and norm_adv is not None:
        raise UserError("--norm-adv applies to --algo ppo only")
    s = load_suite(suite, tasks, suite_seed, profile, anchors)
    if algo == "sac":
        cfg = _sac_config(s, steps, seed, threads, envs_per_task, _hidden(hidden), checkpoint_every, config)
    else:
        cfg = _ppo_config(s, steps, seed, threads, envs_per_task, _hidden(hidden), norm_adv, checkpoint_every, config)
    from . import artifacts as art
    from . import outdir
    from .stages import train_meta_policy  # torch: imported once the options are known to be valid
    from .rl.evaluate import evaluate_policy

    if tensorboard is not None:  # before --out is claimed: a bad --tensorboard leaves nothing behind
        outdir.check_dir_path(tensorboard, "--tensorboard")
    outdir.lock_run_dir(out_dir)
    with art.interrupt_summary(out_dir):
        res = train_meta_policy(s, cfg, out_dir, tensorboard)
    ev = evaluate_policy(res.model, s, episodes=eval_episodes)
    out.print(returns_table(f"{s.name}: {res.global_step:,} steps, {res.steps_per_second:,.0f} steps/s", ev))
    out.print(f"checkpoints in {out_dir / 'checkpoints'}")


@app.command()
def evaluate(
    checkpoint: Path = typer.Argument(..., help="a checkpoint written by train or run"),
    episodes: int = typer.Option(10, "--episodes", min=1, max=10_000, help="episodes per task (all run in parallel)"),
    stochastic: bool = typer.Option(False, "--stochastic", help="sample actions instead of the greedy action"),
    seed: int = typer.Option(12345, "--seed", help="evaluation seed"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="preference suites: write a PNG of the policies' vector returns "
                                       "against the published Pareto front here"),
):
    """Per-task mean ± std return of a checkpoint (and success rate, for suites that define one; vector
    returns, hypervolume and expected utility for MO-Gymnasium preference suites, docs/morl.md)."""
    from .rl.checkpoint import load_checkpoint
    from .rl.evaluate import evaluate_policy

    from .config import MAX_SEED

    if not 0 <= seed <= MAX_SEED:  # before anything runs: a bad seed is the option's fault, not a task's
        raise UserError(f"--seed: must be a seed between 0 and {MAX_SEED}, got {seed}")
    model, s, _, ckpt = load_checkpoint(checkpoint)
    mo = "mo_env" in s.metadata
    if plot is not None and not mo:
        raise UserError(f"--plot: {checkpoint} is a checkpoint of suite {s.name!r}, which has no vector rewards; "
                        "--plot applies to MO-Gymnasium preference suites")
    if plot is not None and (plot.exists() or not plot.parent.is_dir()):  # never overwrite a file the user has
        raise UserError(f"--plot {plot}: " + ("already exists; choose a new path (a file policygradex did not write is never "
                                              "overwritten)" if plot.exists() else "its directory does not exist"))
    ev = evaluate_policy(model, s, episodes=episodes, deterministic=not stochastic, seed=seed)
    ind = None
    if mo:
        from .morl import front_plot, indicator_line, indicators

        vecs = {k: v["discounted_vector_mean"] for k, v in ev.items()}
        ind = indicators(s, vecs)
        if plot is not None:
            front_plot(s, vecs, plot)
    if as_json:
        keys = ("mean", "std", "success_rate", "vector_mean", "discounted_vector_mean", "vector_gamma")
        res = {k: {key: v[key] for key in keys if key in v} for k, v in ev.items()}
        print(json.dumps(res if ind is None else {"tasks": res, "indicators": ind}, indent=2))
    else:
        out.print(returns_table(f"{checkpoint} (step {ckpt['global_step']:,})", ev))
        if ind is not None:
            out.print(indicator_line(ind) + ("" if plot is None else f"\nplot: {plot}"), soft_wrap=True)



@app.command()
@with_run_options
def run(
    suite: str = typer.Option("cartpole", "--suite", help=SUITE_HELP),
    out_dir: Path = typer.Option(Path("runs/default"), "--out", help="run directory (artifacts, report.md)"),
    seed: int = typer.Option(0, "--seed", help="seed of training, collection, projection, subsets and null test"),
    tensorboard: Optional[Path] = typer.Option(None, "--tensorboard", help="TensorBoard logs of meta-training"),
    opts: RunOptions = None,
):
    """Train theta*, estimate task affinities with PolicyGradEx, and group the tasks."""
    from .tasks import load_suite

    s = load_suite(suite, opts.tasks, opts.suite_seed, opts.profile, opts.anchors)
    cfg = _run_config(s, seed, opts)
    from .pipeline import run as run_pipeline  # torch: imported once the options are known to be valid

    from .artifacts import interrupt_summary
    from .outdir import check_dir_path

    if tensorboard is not None:  # before --out is claimed: a bad --tensorboard leaves nothing behind
        check_dir_path(tensorboard, "--tensorboard")
    be = _backend(opts, cfg.group.replicates)
    try:
        with interrupt_summary(out_dir):
            res = run_pipeline(s, cfg, out_dir, tensorboard, backend=be)
    finally:
        be.close()
    from rich.markup import escape  # names from suite files are text, not markup

    from .report import signal_sentence, verdict_label, verdict_of

    g = res.groups
    # the headline and the lines under the table are plain lines, never wrapped to the terminal (or to
    # the table's width): the output reads the same at any width (README, benchmarks)
    out.print(f"[bold]{escape(s.name)}: k = {g['k']} groups ({escape(verdict_label(g))})[/]", soft_wrap=True)
    t = Table()
    t.add_column("group")
    t.add_column("tasks")
    for i, grp_ in enumerate(g["groups"]):
        t.add_row(str(i + 1), escape(", ".join(grp_)))
    out.print(t)
    if not g["distinguishable_from_noise"]:
        out.print("[bold red]warning:[/] these groups are not distinguishable from noise; see report.md", soft_wrap=True)
    elif not verdict_of(g)["calibrated"]:
        out.print(f"[yellow]note:[/] this verdict is not calibrated: {escape(verdict_of(g)['not_calibrated_because'])}", soft_wrap=True)
    signal = g.get("signal")
    sentence = signal_sentence(signal, max_names=10) if signal else None
    if sentence is not None:
        level = "[bold red]warning:[/]" if signal["run_level_collapsed"] else "[yellow]note:[/]"
        out.print(f"{level} {escape(sentence)}; see report.md", soft_wrap=True)
    if "nmi_vs_true_partition" in g:
        out.print(f"NMI vs the suite's known partition: {g['nmi_vs_true_partition']:.3f}", soft_wrap=True)
    out.print(f"delta median {g['delta']['median']:.3%} (target {g['delta']['target']:.2%}); "
              f"outputs: {escape(str(out_dir))}/groups.json, affinity.csv, affinity.png, report.md", soft_wrap=True)


def _run_config(s, seed: int, opts: RunOptions, command: str = "run"):
    """The RunConfig of `run`, `validate` and `compare` (validate and compare must name exactly the run that `run` makes)."""
    from .config import RunConfig, parse
    from .runfile import read_section

    _check_algo(opts.algo)
    o, config = opts, opts.config
    ppo = _ppo_config(s, o.steps, seed, o.threads, None, None, None, None, config)
    sac = _sac_config(s, o.steps, seed, o.threads, None, None, None, config) if o.algo == "sac" else None
    # the suite's profile presets (highway, Meta-World), then the --config tables, then the flags
    est_table = read_section(config, "estimate") if config else {}
    est = {**s.run_preset.get("estimate", {}), **est_table}
    grp = {**s.run_preset.get("group", {}), **(read_section(config, "group") if config else {})}
    est.update({k_: v for k_, v in dict(d=o.d, transitions_per_task=o.transitions, subset_size=o.subset_size, min_pair_coverage=o.coverage,
                                        subsets=o.subsets, target_delta=o.target_delta, evaluator=o.evaluator, checkpoint=o.checkpoint,
                                        min_return=o.min_return, projector=o.projector).items() if v is not None})
    est.setdefault("seed", seed); est.setdefault("projector_seed", seed); est.setdefault("subset_seed", seed)
    grp.update({k_: v for k_, v in dict(k=o.k, penalty_scale=o.penalty_scale, null_permutations=o.null_permutations,
                                        replicates=o.replicates, replicate_over=o.replicate_over, theta_window=o.theta_window).items()
                if v is not None})
    grp.setdefault("null_seed", seed)
    flags = {"estimate.d": "--d", "estimate.transitions_per_task": "--transitions", "estimate.subset_size": "--subset-size",
             "estimate.min_pair_coverage": "--coverage", "estimate.subsets": "--subsets", "estimate.target_delta": "--target-delta",
             "estimate.evaluator": "--evaluator", "estimate.checkpoint": "--checkpoint", "estimate.min_return": "--min-return", "estimate.projector": "--projector", "group.k": "--k",
             "group.penalty_scale": "--penalty-scale", "group.null_permutations": "--null-permutations",
             "group.replicates": "--replicates", "group.replicate_over": "--replicate-over", "group.theta_window": "--theta-window"}
    data = {"ppo": ppo.model_dump(), "estimate": est, "group": grp}
    if sac is not None:
        data.update(algo="sac", sac=sac.model_dump())
    if o.policy:
        from .rl.imported import imported_run_update

        data.update(imported_run_update(o.policy, o.policy_task_input, o.policy_tasks, seed, o.threads,
                                        read_section(config, "imported") if config else {}, grp,
                                        {"--algo": o.algo, "--steps": o.steps, "--checkpoint": o.checkpoint}, command))
    elif o.policy_task_input is not None or o.policy_tasks is not None:
        raise UserError(f"{'--policy-task-input' if o.policy_task_input is not None else '--policy-tasks'} needs --policy SPEC")
    cfg = parse(RunConfig, data, "options", flags)
    from .estimate.subsets import default_subset_size

    size = cfg.estimate.subset_size
    if size is not None and size == s.n and s.n > 2:
        # every subset would be the whole suite: all f(S, i) are measured on the same S, and the
        # affinity (with j vs without j) has nothing to contrast
        where = (f"--subset-size {size}" if o.subset_size is not None else
                 f"--config {config}: [estimate]: subset_size = {size}" if "subset_size" in est_table else f"subset_size {size}")
        raise UserError(f"{where} equals the number of tasks ({s.n}): every subset would be the whole suite and the "
                        f"affinities would carry no information; allowed: 2 to {s.n - 1}, or leave it out "
                        f"(default {default_subset_size(s.n)})")
    return cfg


@app.command()
@with_run_options
def validate(
    suite: str = typer.Option("cartpole", "--suite", help=SUITE_HELP),
    out_dir: Path = typer.Option(Path("runs/default"), "--out", help="run directory: the run is made (or reused) there, then validated"),
    finetune_steps: Optional[int] = typer.Option(None, "--finetune-steps", help="PPO environment steps of real fine-tuning per subset (default 8192)"),
    episodes: Optional[int] = typer.Option(None, "--episodes", help="evaluation episodes per task and subset for f_true (default 16)"),
    finetune_seeds: Optional[int] = typer.Option(None, "--finetune-seeds", help="fine-tuning repeats (seeds) averaged per subset (default 3)"),
    probes: Optional[int] = typer.Option(None, "--probes", help="Rademacher probes of the Hessian-trace estimate (default 32)"),
    hessian_subsets: Optional[int] = typer.Option(None, "--hessian-subsets", help="adapted theta_S at which the Hessian trace is estimated (default 3)"),
    random_draws: Optional[int] = typer.Option(None, "--random-draws", help="random groupings for the NMI floor (default 200)"),
    seed: int = typer.Option(0, "--seed", help="seed of the run, and of fine-tuning and evaluation"),
    opts: RunOptions = None,
):
    """Check a run against real fine-tuning on the same subsets: first-order error, ground-truth NMI, speedup."""
    from .config import ValidateConfig, parse
    from .pipeline import run as run_pipeline
    from .tasks import load_suite
    from .validate import validate as run_validation

    s = load_suite(suite, opts.tasks, opts.suite_seed, opts.profile, opts.anchors)
    cfg = _run_config(s, seed, opts, "validate")
    if cfg.algo != "ppo":  # the ground truth is PPO fine-tuning of theta*
        raise UserError(f"--algo {cfg.algo}: validate fine-tunes theta* with PPO and supports PPO runs only; "
                        "validate a PPO run, or compare SAC runs with `policygradex compare --algo sac`")
    vopts = dict(finetune_steps=finetune_steps, episodes=episodes, finetune_seeds=finetune_seeds, hessian_probes=probes,
                 hessian_subsets=hessian_subsets, random_draws=random_draws)
    vdata = dict(finetune_seed=seed, eval_seed=12345 + seed, hessian_seed=seed, random_seed=seed)
    if opts.config:
        from .runfile import read_section

        vdata.update(read_section(opts.config, "validate"))  # checked there, with the file's other tables
    vdata.update({k_: v for k_, v in vopts.items() if v is not None})
    vflags = {"finetune_steps": "--finetune-steps", "episodes": "--episodes", "finetune_seeds": "--finetune-seeds",
              "hessian_probes": "--probes", "hessian_subsets": "--hessian-subsets", "random_draws": "--random-draws"}
    vcfg = parse(ValidateConfig, vdata, "options", vflags)
    be = _backend(opts, cfg.group.replicates)
    from .artifacts import interrupt_summary

    try:
        with interrupt_summary(out_dir):
            run_pipeline(s, cfg, out_dir, backend=be)
            r = run_validation(out_dir, s, cfg, vcfg, backend=be)
    finally:
        be.close()

    t = Table(title=f"{s.name}: PolicyGradEx vs real fine-tuning ({r['subsets']['m']} subsets, "
                    f"{r['finetune']['env_steps_per_subset'][0]:,} steps each)")
    t.add_column("measure")
    t.add_column("value", justify="right")
    for label, b in r["approx_error"].items():
        t.add_row(f"first-order error at delta {label}", "-" if b["median"] is None else f"{b['median']:.2%} (n = {b['n']})")
    from .report import num

    t.add_row("NMI estimated vs ground truth", f"{r['nmi']:.3f} (random {r['random_nmi']:.3f})")
    t.add_row("ARI estimated vs ground truth", f"{r['ari']:.3f} (random {r['random_ari']:.3f})")
    t.add_row("Spearman f vs f_true (standardized)", num(r["spearman"], ".3f"))
    t.add_row("ground truth: k, null p", f"{r['ground_truth']['k']}, {r['ground_truth']['null_p']:.3f}")
    if "nmi_vs_true_partition" in r["ground_truth"]:
        t.add_row("NMI vs known partition: estimated / ground truth",
                  f"{r['estimated']['nmi_vs_true_partition']:.3f} / {r['ground_truth']['nmi_vs_true_partition']:.3f}")
    sur = r.get("surrogate_truth")
    if sur is not None:  # the ground truth from the real surrogate improvement (no rollout noise)
        t.add_row("NMI / ARI vs surrogate ground truth", f"{sur['nmi']:.3f} / {sur['ari']:.3f} (random NMI {sur['random_nmi']:.3f})")
        t.add_row("surrogate ground truth: k, null p, seed-to-seed ρ",
                  f"{sur['k']}, {sur['null_p']:.3f}, {num(sur['mean_between_seeds'], '.2f')}")
    sb = r["speedup_breakdown"]
    t.add_row("speedup (real route / PolicyGradEx route)",
              f"{num(r['speedup'], '.1f')}x ({num(sb['real_s']['total'], '.0f')} s / {num(sb['policygradex_s']['total'], '.0f')} s)")
    h0 = r["hessian_trace"][0] if r["hessian_trace"] else None
    if h0 is not None:
        t.add_row("Hessian trace at theta* (Hutchinson)", f"{num(h0['trace'], '.3g')} ± {num(h0['stderr'], '.2g')}")
    out.print(t)
    if not r["ground_truth"]["distinguishable_from_noise"]:
        rel = r["f_true_reliability"]["mean_between_seeds"]
        out.print("[bold red]warning:[/] the ground truth is weak: its grouping is not distinguishable from noise (null p "
                  f"{r['ground_truth']['null_p']:.3f}"
                  + (f", seed-to-seed Spearman of f_true {rel:.2f}" if rel is not None else "")
                  + "); read NMI and ARI against it with caution (more --finetune-seeds averages the noise down)"
                  + (f"; the surrogate ground truth is distinguishable from noise (p {sur['null_p']:.3f}): NMI {sur['nmi']:.3f} against it"
                     if sur is not None and sur["distinguishable_from_noise"] else ""))
    out.print(f"outputs: {out_dir}/validation.json, approx_error.png, estimated_vs_true.png, validate/")


@app.command()
@with_run_options
def compare(
    suite: str = typer.Option("cartpole", "--suite", help=SUITE_HELP),
    out_dir: Path = typer.Option(Path("runs/compare"), "--out", help="output directory (comparison.json/.csv/.png, per-unit cache, the run in DIR/run)"),
    methods: Optional[str] = typer.Option(None, "--methods", help="comma-separated methods (default: multitask, softmod, random, gradsim, pcgrad, tag, policygradex; meta-RL on held-out tasks: meta-maml, meta-policygradex, meta-multitask)"),
    seeds: Optional[int] = typer.Option(None, "--seeds", help="training seeds per method (default 3)"),
    steps_per_task: Optional[int] = typer.Option(None, "--steps-per-task", help="environment steps per task for every method (default 20480)"),
    episodes: Optional[int] = typer.Option(None, "--episodes", help="evaluation episodes per task (default 10)"),
    greedy: bool = typer.Option(False, "--greedy", help="evaluate with the greedy action (default: sampled actions, common random numbers)"),
    warm_start: bool = typer.Option(False, "--warm-start", help="start the MLP policies from theta* instead of from scratch"),
    arch: Optional[str] = typer.Option(None, "--arch", help="network of the per-group, multitask and pcgrad policies: mlp or softmod"),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="the PolicyGradEx run directory to make or reuse (default DIR/run)"),
    n_test: Optional[int] = typer.Option(None, "--n-test", help="meta-* methods: held-out test tasks (default 50)"),
    adapt_steps: Optional[int] = typer.Option(None, "--adapt-steps", help="meta-* methods: adaptation gradient steps per held-out task (default 20; paper 200)"),
    probe_episodes: Optional[int] = typer.Option(None, "--probe-episodes", help="meta-* methods: probe episodes per group policy to pick a held-out task's group (default 3)"),
    inner_steps: Optional[int] = typer.Option(None, "--inner-steps", help="meta-* methods: FOMAML inner-loop steps (default 1)"),
    inner_lr: Optional[float] = typer.Option(None, "--inner-lr", help="meta-* methods: SGD step size of the inner loop and of adaptation (default 0.1)"),
    seed: int = typer.Option(0, "--seed", help="seed of the PolicyGradEx run (downstream training uses seeds 0..N-1)"),
    opts: RunOptions = None,
):
    """Train one policy per group for every method under the same per-task budget; compare per-task returns."""
    from .compare import compare as run_compare, comparison_lines
    from .config import CompareConfig, parse
    from .tasks import load_suite

    s = load_suite(suite, opts.tasks, opts.suite_seed, opts.profile, opts.anchors)
    cfg = _run_config(s, seed, opts, "compare")
    cdata = dict(seeds=seeds, steps_per_task=steps_per_task, episodes=episodes, arch=arch, n_test=n_test, adapt_steps=adapt_steps,
                 probe_episodes=probe_episodes, inner_steps=inner_steps, inner_lr=inner_lr,
                 methods=None if methods is None else tuple(m.strip() for m in methods.split(",") if m.strip()))
    cdata = {k_: v for k_, v in cdata.items() if v is not None}
    cdata.update(deterministic=greedy, warm_start=warm_start)
    cflags = {"seeds": "--seeds", "steps_per_task": "--steps-per-task", "episodes": "--episodes", "arch": "--arch",
              "methods": "--methods", "n_test": "--n-test", "adapt_steps": "--adapt-steps", "probe_episodes": "--probe-episodes",
              "inner_steps": "--inner-steps", "inner_lr": "--inner-lr"}
    ccfg = parse(CompareConfig, cdata, "options", cflags)
    be = _backend(opts, cfg.group.replicates)
    try:
        r = run_compare(s, cfg, ccfg, out_dir, run_dir, backend=be)
    finally:
        be.close()
    for line in comparison_lines(r, s, ccfg.seeds):
        out.print(line, soft_wrap=True)
    out.print(f"outputs: {out_dir}/comparison.json, comparison.csv, comparison.png; trained policies in {out_dir}/compare/<method>/seed_<s>/")


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="a run directory (with groups.json)"),
    fmt: str = typer.Option("suite", "--format", help="suite: one suite file (TOML) per group, for training the groups with any tool"),
    out_dir: Path = typer.Option(..., "--out", help="directory for the files (existing files are never overwritten)"),
):
    """Write a run's groups as files other tools read: one suite file per group."""
    from .export import export_suites

    if fmt != "suite":
        raise UserError(f"--format {fmt!r}; allowed: suite")
    for path in export_suites(run_dir, out_dir):
        out.print(str(path), soft_wrap=True, markup=False, highlight=False)


def main(argv: list[str] | None = None) -> None:
    from . import artifacts as art
    from . import outdir

    quiet_gymnasium()  # its multi-line warnings: TaskEnv reports the same problems in one line
    args = list(sys.argv[1:] if argv is None else argv)
    code = 0
    # SIGTERM (batch schedulers, docker stop) stops a command as Ctrl-C does, then exits 143
    with art.sigterm_as_interrupt() as term:
        try:
            outdir.set_command(next((a for a in args if not a.startswith("-")), None))
            art.refuse_empty_paths(args)
            try:
                rv = app(args=args, standalone_mode=False)
            finally:
                term.disarm()
            code = rv if isinstance(rv, int) else 0
            if code == 130:  # typer turns Ctrl-C into exit code 130; say what was kept
                print(art.interruption_message(), file=sys.stderr)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            code = 2
        except typer.Exit as exc:
            code = exc.exit_code
        except (KeyboardInterrupt, typer.Abort) as exc:
            print(str(exc) if isinstance(exc, art.Interrupted) else art.interruption_message(), file=sys.stderr)
            code = 130
        except OSError as exc:  # disk full, read-only, vanished or bad output path met outside an atomic write
            if exc.errno not in art.DISK_FULL | art.NOT_WRITABLE | art.PATH_ERRORS:
                raise
            flag = art.option_of_path(args, exc.filename)
            print(f"error: {flag + ': ' if flag else ''}{art.os_error_message(exc, exc.filename or 'the output directory', flag or '--out')}",
                  file=sys.stderr)
            code = 2
        except typer.TyperException as exc:  # click-style usage errors (bad option, missing argument)
            if type(exc).__name__ == "NoArgsIsHelpError":
                print(exc.format_message())
                code = 0
            else:
                print(f"error: {' '.join(exc.format_message().split())}", file=sys.stderr)
                code = 2
    outdir.set_command(None)
    if term.interrupted:
        code = 143  # 128 + SIGTERM, as if the signal had ended the process
    sys.exit(code)


if __name__ == "__main__":
    main()
