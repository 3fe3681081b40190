"""Pydantic models for every option, and the conversion of their errors into one line.

Field descriptions double as the CLI's help text. Every model forbids unknown fields, so a
typo in a suite or run file is an error naming the field rather than a silently ignored
option.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer, model_validator

from .errors import UserError


MAX_SEED = 2**32 - 1

# Upper bounds of sizes and coefficients.  Each is far beyond any sensible setting; above them a run
# does not finish on any machine, or its float32 arithmetic overflows into NaN and the run crashes
# long after the option was accepted (e.g. a clip coefficient above 3.4e38, a thread count that
# crashes the OpenMP runtime).
MAX_THREADS = 1024
MAX_ENVS = 4096  # environment copies per task
MAX_WIDTH = 4096  # units of a hidden layer
MAX_LAYERS = 32
MAX_ROWS = 10_000_000  # transitions per task held in memory
MAX_LR = 1.0  # Adam / SGD step sizes: the update moves every parameter by about this much
MAX_COEF = 1000.0  # loss coefficients and PPO's clip range


class Strict(BaseModel):
    # NaN and inf are refused in every float field: a NaN compares false with every bound
    model_config = ConfigDict(extra="forbid", frozen=False, allow_inf_nan=False)

    @field_validator("*")
    @classmethod
    def _seed_range(cls, v, info):
        """Every ``*seed`` field is a seed of numpy, torch and gymnasium: 0 .. 2**32 - 1."""
        if (info.field_name or "").endswith("seed") and isinstance(v, int) and not isinstance(v, bool) and not 0 <= v <= MAX_SEED:
            raise ValueError(f"must be a seed between 0 and {MAX_SEED}")
        return v


#: How a field that does not enter its stage's cache key is marked (``json_schema_extra``), and why:
#: ``execution`` changes how a stage runs, not what it makes (threads, device, chunk size); ``report``
#: only changes how report.md reads an artifact; ``check`` is a guard applied to an artifact after it
#: is made (``--min-return``).  Every other field enters the key of the stage whose config declares it.
NOT_KEYED = ("execution", "report", "check")


def not_keyed(why: str, default, **kwargs):
    """A ``Field`` left out of its stage's cache key (``why``: one of :data:`NOT_KEYED`)."""
    if why not in NOT_KEYED:
        raise ValueError(f"not_keyed: {why!r} is not one of {NOT_KEYED}")
    return Field(default, json_schema_extra={"not_keyed": why}, **kwargs)


class StageConfig(Strict):
    """The options of one stage of a run.  Its cache key is derived from the fields, never
    listed by hand: every field enters it except those declared with :func:`not_keyed`."""

    @classmethod
    def keyed_fields(cls) -> tuple[str, ...]:
        return tuple(name for name, f in cls.model_fields.items()
                     if not (isinstance(f.json_schema_extra, dict) and "not_keyed" in f.json_schema_extra))

    def cache_key(self) -> dict:
        """What of this config a stage's cache key holds: the keyed fields (nested models whole)
        and the config's type (a PPO and a SAC config never share a key)."""
        data = self.model_dump(mode="json", include=set(self.keyed_fields()))
        return {"type": type(self).__name__, **data}


class NetConfig(Strict):
    hidden: tuple[int, ...] = Field((64, 64, 64), description="hidden layer widths of actor and critic MLPs (default: 4 linear layers, as in the paper)")
    activation: Literal["tanh", "relu", "elu"] = Field("tanh", description="hidden activation")
    arch: Literal["mlp", "softmod"] = Field("mlp", description="actor and critic body: an MLP of `hidden` widths, or Soft Modularization (modules + task-conditioned routing, Yang et al. 2020)")
    softmod_modules: int = Field(4, ge=1, le=64, description="softmod: modules per layer")
    softmod_layers: int = Field(2, ge=1, le=MAX_LAYERS, description="softmod: module layers (routed between consecutive layers)")
    softmod_width: int = Field(32, ge=1, le=MAX_WIDTH, description="softmod: width of every module and of the state/task embeddings")

    @field_validator("hidden")
    @classmethod
    def _positive(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(h < 1 for h in v):
            raise ValueError("hidden must be a non-empty list of positive widths")
        if len(v) > MAX_LAYERS or any(h > MAX_WIDTH for h in v):
            raise ValueError(f"hidden allows at most {MAX_LAYERS} layers of at most {MAX_WIDTH} units each")
        return v

    @model_serializer(mode="wrap")
    def _omit_mlp_defaults(self, handler):
        # An MLP config dumps exactly as before `arch` existed, so the hashes of existing run
        # stages and the configs stored in existing checkpoints still match.
        data = handler(self)
        if self.arch == "mlp" and isinstance(data, dict):
            for key in ("arch", "softmod_modules", "softmod_layers", "softmod_width"):
                data.pop(key, None)
        return data


class LearnerConfig(StageConfig):
    """The config of a meta-trainer (the train stage): PPO's or SAC's."""

    @model_serializer(mode="wrap")
    def _omit_auto_device(self, handler):
        # the default device dumps as before the field existed: the configs in existing
        # checkpoints still match, and a run moved between a CPU and a GPU machine resumes
        data = handler(self)
        if getattr(self, "device", None) == "auto" and isinstance(data, dict):
            data.pop("device", None)
        return data


class PPOConfig(LearnerConfig):
    """Multi-task PPO hyperparameters (CleanRL names)."""

    total_steps: int = Field(200_000, ge=1, description="total environment steps over all tasks")
    envs_per_task: int = Field(4, ge=1, le=MAX_ENVS, description="parallel environments per task")
    num_steps: int = Field(64, ge=1, le=100_000, description="rollout length per environment per update")
    minibatch_size: int = Field(256, ge=1, description="PPO minibatch size")
    update_epochs: int = Field(10, ge=1, le=10_000, description="PPO epochs per update")
    learning_rate: float = Field(1e-3, gt=0, le=MAX_LR, description="Adam learning rate")
    anneal_lr: bool = Field(True, description="anneal the learning rate linearly to 0")
    gamma: float = Field(0.98, gt=0, le=1, description="discount factor")
    gae_lambda: float = Field(0.8, ge=0, le=1, description="GAE lambda")
    clip_coef: float = Field(0.2, gt=0, le=MAX_COEF, description="PPO clip coefficient")
    ent_coef: float = Field(0.0, ge=0, le=MAX_COEF, description="entropy bonus coefficient")
    vf_coef: float = Field(0.5, ge=0, le=MAX_COEF, description="value loss coefficient")
    max_grad_norm: float = Field(0.5, gt=0, description="gradient clipping norm")
    norm_adv: Literal["batch", "task", "none"] = Field("batch", description="advantage normalization: over the minibatch, per task over the rollout, or none")
    target_kl: float | None = Field(None, gt=0, description="stop the epoch loop early above this approximate KL")
    checkpoint_every: int = Field(10, ge=1, description="save a checkpoint every this many updates (and at the end)")
    seed: int = Field(0, description="random seed")
    threads: int = not_keyed("execution", 1, ge=1, le=MAX_THREADS, description="torch threads (1 is fastest for small networks)")
    device: Literal["auto", "cpu", "cuda"] = not_keyed("execution", "auto", description="device of the PPO updates and per-sample gradients: auto (cuda when available), cpu or cuda; rollouts always run on the CPU")
    net: NetConfig = Field(default_factory=NetConfig)

    def batch_size(self, n_tasks: int) -> int:
        return n_tasks * self.envs_per_task * self.num_steps

    def num_updates(self, n_tasks: int) -> int:
        return max(1, self.total_steps // self.batch_size(n_tasks))


class ImportedConfig(LearnerConfig):
    """``run --policy SPEC``: where theta* comes from and how its advantages are computed."""

    spec: str = Field("", description="the policy (set by --policy): module:PKG.MOD:FACTORY[:STATE_DICT] or sb3:PATH.zip[:STATS.pkl]")
    sha256: str = Field("", description="sha256 of the policy's files (recorded at import; a changed file is refused when the run is reused)")
    task_input: str = Field("onehot", description="sb3: how the policy sees the task: onehot (appended "
                            "to the observation), none (task-blind) or key:NAME (a dict observation: the task's index under NAME)")
    task_order: tuple[str, ...] | None = Field(None, description="the policy's task order by name (default: the suite's)")
    gamma: float = Field(0.99, gt=0, le=1, description="discount factor of the advantages")
    gae_lambda: float = Field(0.95, ge=0, le=1, description="GAE lambda (policies with a value function)")
    seed: int = Field(0, description="seed of the import's gradient check")
    more: tuple[str, ...] = Field((), description="the other replicates' policies (run --policy A --policy B ...): replicate i imports more[i - 1]")
    more_sha256: tuple[str, ...] = Field((), description="sha256 of each of `more`")
    threads: int = not_keyed("execution", 1, ge=1, le=MAX_THREADS, description="torch threads")
    device: Literal["auto", "cpu", "cuda"] = not_keyed("execution", "cpu", description="device of the per-sample gradients")

    @field_validator("task_input")
    @classmethod
    def _task_input(cls, v: str) -> str:
        if v not in ("onehot", "none") and not (v.startswith("key:") and len(v) > 4):
            raise ValueError(f"must be onehot, none or key:NAME, got {v!r}")
        return v


class SACConfig(LearnerConfig):
    """Multi-task SAC hyperparameters (``--algo sac``, ``[sac]`` table; rl/sac.py, docs/sac.md)."""

    total_steps: int = Field(200_000, ge=1, description="total environment steps over all tasks")
    envs_per_task: int = Field(1, ge=1, le=MAX_ENVS, description="parallel environments per task")
    buffer_size: int = Field(1_000_000, ge=1, description="replay buffer capacity in transitions (all tasks, with their task id)")
    batch_size: int = Field(512, ge=1, description="transitions per update, sampled uniformly from the buffer (tasks mixed)")
    learning_starts: int = Field(5_000, ge=0, description="environment steps (all tasks) of uniform random actions before the first update")
    gradient_steps: int = Field(1, ge=1, description="updates per vector-environment step (one step of every environment)")
    actor_lr: float = Field(3e-4, gt=0, le=MAX_LR, description="Adam learning rate of the actor")
    critic_lr: float = Field(3e-4, gt=0, le=MAX_LR, description="Adam learning rate of the twin Q critics")
    alpha_lr: float = Field(3e-4, gt=0, le=MAX_LR, description="Adam learning rate of the per-task log temperatures")
    gamma: float = Field(0.99, gt=0, le=1, description="discount factor")
    tau: float = Field(0.005, gt=0, le=1, description="Polyak coefficient of the target critics")
    init_alpha: float = Field(1.0, gt=0, le=MAX_COEF, description="initial entropy temperature of every task")
    target_entropy: float | None = Field(None, ge=-MAX_COEF, le=MAX_COEF, description="target entropy per task (default -|A|, minus the action dimension)")
    advantage_samples: int = Field(10, ge=1, le=10_000, description="actions of pi per state in V(s) = E[min Q - alpha log pi] for the advantages")
    advantage: Literal["soft", "q_minus_v"] = Field("soft", description="features' advantage: soft = Q(s,a) - alpha log pi(a|s) - V(s) (mean 0 under pi), q_minus_v = Q(s,a) - V(s) (mean -alpha H(pi): one-sided labels when Q is flat)")
    checkpoint_every: int = Field(10_000, ge=1, description="save a checkpoint every this many environment steps over all tasks (and at the end)")
    seed: int = Field(0, description="random seed")
    threads: int = not_keyed("execution", 1, ge=1, le=MAX_THREADS, description="torch threads (1 is fastest for small networks)")
    device: Literal["auto", "cpu", "cuda"] = not_keyed("execution", "auto", description="device of the SAC updates and per-sample gradients; rollouts run on the CPU")
    net: NetConfig = Field(default_factory=lambda: NetConfig(hidden=(256, 256), activation="relu"))

    @model_validator(mode="after")
    def _batch_fits_the_buffer(self):
        if self.batch_size > self.buffer_size:  # the buffer never holds a batch: not one update would run
            raise ValueError(f"batch_size {self.batch_size} exceeds buffer_size {self.buffer_size}: the replay buffer could "
                             "never fill one batch and SAC would never update; allowed: batch_size <= buffer_size")
        return self


ALGOS = ("ppo", "sac")


def validation_message(exc: ValidationError, source: str, labels: dict[str, str] | None = None) -> str:
    """One line naming the first offending field (or its CLI flag via ``labels``) and what is allowed."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if not loc:  # a rule over several fields (a model validator): its message names them
        return f"{source}: {msg}"
    if labels and loc in labels:
        return f"{labels[loc]}: {msg}"
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    return f"{source}: {loc}: {msg}"


def parse(model: type[BaseModel], data: dict, source: str, labels: dict[str, str] | None = None):
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise UserError(validation_message(exc, source, labels)) from None


class CollectConfig(StageConfig):
    """Stage 2 (collect): choose theta* among the checkpoints and roll it out."""

    checkpoint: int | None = Field(None, ge=0, description="pin theta* to the checkpoint at this step (default: newest with a healthy advantage signal)")
    probe_transitions: int = Field(1024, ge=16, le=MAX_ROWS, description="transitions per task when probing a checkpoint's advantage signal")
    min_adv_scale: float = Field(1e-3, ge=0, description="advantage signal collapsed below this mean|A| / mean|value target|")
    signal_keep: float = Field(0.5, ge=0, le=1, description="theta* keeps at least this fraction of the first checkpoint's advantage scale")
    signal_reference: Literal["first", "first_healthy"] = Field(
        "first", description="whose advantage scale signal_keep is a fraction of: the first checkpoint's, or the first "
        "checkpoint with a healthy signal's (screened, not the default: docs/decisions.md)")
    progress_cap: float = Field(0.5, ge=0, le=1, description="theta* no later than the newest checkpoint whose mean training "
                                "return has made at most this fraction of the training's improvement (first checkpoint to best; "
                                "1: no limit)")
    min_label_frac: float = Field(0.02, ge=0, lt=0.5, description="advantage labels one-sided when either sign is rarer than this")
    min_healthy_frac: float = Field(0.8, ge=0, le=1, description="fraction of tasks whose signal must be healthy to accept a checkpoint")
    min_return: float | None = not_keyed("check", None, description="refuse theta* whose mean per-task return is below this (weak meta-policy)")
    transitions_per_task: int = Field(8192, ge=64, le=MAX_ROWS, description="transitions of theta* collected per task (8,192: see docs/decisions.md)")
    collect_envs_per_task: int = Field(8, ge=2, le=MAX_ENVS, description="environment copies per task during collection")
    heldout_frac: float = Field(0.25, gt=0, le=0.5, description="fraction of each task's environment copies held out for evaluation "
                                "(at most half: the surrogates are fitted on the copies that are not held out)")
    seed: int = Field(0, description="seed of collection")


class FeaturesConfig(StageConfig):
    """Stage 3 (features): projected per-sample gradients of theta*'s log-probabilities."""

    adv_scaling: Literal["none", "task"] = Field("task", description="divide each task's advantages by their mean |A| before fitting (keeps signs)")
    projector: Literal["dense", "structured"] = Field("structured", description="random projection of gradients: structured (per-layer Khatri-Rao, d split by gradient energy; ~2x one forward+backward, docs/projector.md) or dense (seeded Gaussian P, ~50-150x; 'gaussian' is accepted as an alias)")
    d: int = Field(400, ge=1, le=100_000, description="projection dimension")
    projector_seed: int = Field(0, description="seed of the random projection")
    chunk_size: int = not_keyed("execution", 512, ge=1, le=1_000_000, description="transitions per per-sample-gradient chunk")

    @field_validator("projector", mode="before")
    @classmethod
    def _projector_alias(cls, v):
        return "dense" if v == "gaussian" else v  # the dense projector's spec kind, accepted as an alias


class SubsetsConfig(StageConfig):
    """Stage 4 (subsets): the sampled task subsets."""

    subset_size: int | None = Field(None, ge=2, description="tasks per sampled subset (default: about n/2)")
    min_pair_coverage: int = Field(3, ge=1, le=10_000, description="every pair of tasks appears together in at least this many subsets")
    subsets: int | None = Field(None, ge=1, le=100_000, description="number of subsets m (default: enough for the pair coverage; raised if needed)")
    subset_seed: int = Field(0, description="seed of the subset sampler")


class SurrogateConfig(StageConfig):
    """Stage 5 (surrogate): one weighted logistic regression per subset."""

    target_delta: float = Field(0.01, gt=0, le=0.5, description="target relative distance ||P u|| / ||theta*|| of the surrogate solutions")


class EvaluateConfig(StageConfig):
    """Stage 6 (evaluate): the performance estimate f(S, i)."""

    evaluator: Literal["first_order_ppo", "surrogate_loss", "rollout_return"] = Field("first_order_ppo", description="performance estimate f(S, i)")
    rollout_episodes: int = Field(8, ge=1, le=10_000, description="episodes per task and subset for the rollout_return evaluator")


class EstimateConfig(EvaluateConfig, SurrogateConfig, SubsetsConfig, FeaturesConfig, CollectConfig):
    """The ``[estimate]`` table: the options of stages 2-6 in one flat table, each declared by its
    stage's config above (bases listed last stage first, so the fields come in stage order);
    :meth:`stage` gives one stage's part."""

    def stage(self, config: type[StageConfig]) -> StageConfig:
        """This table's part for one stage, e.g. ``est.stage(FeaturesConfig)``."""
        return config.model_validate(self.model_dump(include=set(config.model_fields)))


class GroupConfig(StageConfig):
    """Stage 7 (group): affinity, SDP grouping, the null test and the self-checks."""

    k: int | None = Field(None, ge=1, description="fixed number of groups (default: chosen by the trace penalty)")
    penalty: float | None = Field(None, ge=0, description="price per group in auto-k mode (default: penalty_scale x mean |off-diagonal U|)")
    penalty_scale: float = Field(4.0, ge=0, le=1e6, description="multiplier of the default penalty rule")
    solver: Literal["auto", "clarabel", "scs"] = Field("auto", description="SDP solver (auto: Clarabel for n <= 40, else SCS)")
    null_permutations: int = Field(200, ge=1, le=1_000_000, description="permutations of the null test")
    null_seed: int = Field(0, description="seed of the null test")
    alpha: float = Field(0.05, gt=0, lt=1, description="groups are reported as distinguishable from noise when null p < alpha")
    bootstrap: int = Field(50, ge=1, le=100_000, description="bootstrap resamples of the subsets for each task's group stability (one replicate)")
    replicates: int = Field(3, ge=1, le=1000, description="independent estimates of the affinity whose consensus gives the groups; with 2 or more "
                            "independent training seeds the verdict is calibrated (3: the trust scoreboard, docs/decisions.md; "
                            "docs/reliability.md)")
    replicate_over: Literal["seeds", "checkpoints", "projection"] = Field("seeds", description="what differs between replicates: seeds (independent "
                            "meta-training, rollouts, projection and subsets: a calibrated verdict), checkpoints (other checkpoints of one "
                            "training) or projection (other projections and subsets of one theta*); the last two share one training, so "
                            "their verdict is not calibrated")
    theta_window: int = Field(2, ge=1, le=10, description="checkpoints of each training whose affinities are averaged into its estimate: "
                              "theta* and the next theta_window - 1 (earlier ones when theta* is among the newest); with "
                              "--replicate-over seeds (the default) only (2: the trust scoreboard, docs/decisions.md)")
    min_stability: float = not_keyed("report", 0.8, ge=0, le=1, description="the report flags tasks whose bootstrap stability is below this")
    max_approx_error: float = not_keyed("report", 0.1, gt=0, description="the report flags a first-order error above this at the surrogate's delta")


class RunConfig(Strict):
    ppo: PPOConfig = Field(default_factory=PPOConfig)
    estimate: EstimateConfig = Field(default_factory=EstimateConfig)
    group: GroupConfig = Field(default_factory=GroupConfig)
    algo: Literal["ppo", "sac", "imported"] = Field("ppo", description="meta-trainer: ppo (multi-task PPO), sac (multi-task SAC, continuous actions) or imported (a policy trained elsewhere: run --policy)")
    sac: SACConfig = Field(default_factory=SACConfig)
    imported: ImportedConfig | None = Field(None, description="algo = imported: the policy and its advantages (rl.imported)")

    @model_serializer(mode="wrap")
    def _omit_ppo_algo(self, handler):
        # a PPO run dumps exactly as before `algo` existed (config.json, hashes of whole configs)
        data = handler(self)
        if self.algo == "ppo" and isinstance(data, dict):
            data.pop("algo", None)
            data.pop("sac", None)
        if isinstance(data, dict) and data.get("imported", 0) is None:
            data.pop("imported")  # runs without --policy dump as before the field existed
        return data

    @model_validator(mode="after")
    def _imported_needs_policy(self):
        if self.algo == "imported" and self.imported is None:
            raise ValueError("algo = imported needs the imported policy's config (run --policy SPEC)")
        return self

    def learner(self) -> "PPOConfig | SACConfig | ImportedConfig":
        """The meta-trainer's config: ``sac`` for ``algo = "sac"``, ``imported`` for an imported policy, else ``ppo``."""
        if self.algo == "imported":
            return self.imported
        return self.sac if self.algo == "sac" else self.ppo


class ValidateConfig(Strict):
    """``policygradex validate``: real fine-tuning on the run's subsets and the comparisons (docs/validation.md)."""

    finetune_steps: int = Field(8192, ge=1, description="PPO environment steps of real fine-tuning per subset (whole iterations, at least one)")
    finetune_seed: int = Field(0, description="seed of the fine-tuning (the same for every subset: common random numbers)")
    finetune_seeds: int = Field(3, ge=1, le=1000, description="fine-tuning repeats per subset (seeds finetune_seed, +1, ...); f_true averages them")
    episodes: int = Field(16, ge=1, le=10_000, description="evaluation episodes per task and subset for f_true (sampled actions)")
    eval_seed: int = Field(12345, description="seed of the evaluation rollouts (the same for every subset: common random numbers)")
    buckets: tuple[float, ...] = Field((0.001, 0.005, 0.01, 0.05), description="relative distances at which the first-order error is reported")
    approx_snapshots: int = Field(8, ge=2, le=1000, description="fine-tuning snapshots per path where the first-order error is measured (iterations 1, 2, 4, ... and the last)")
    hessian_probes: int = Field(32, ge=1, le=10_000, description="Rademacher probes of the Hutchinson Hessian-trace estimate")
    hessian_subsets: int = Field(3, ge=0, description="adapted theta_S (first subsets) at which the Hessian trace is estimated, besides theta*")
    hessian_rows: int = Field(8192, ge=1, le=MAX_ROWS, description="training rows (random sample) in the loss whose Hessian trace is estimated")
    hessian_seed: int = Field(0, description="seed of the Hutchinson probes, the row sample and the random-direction control")
    random_draws: int = Field(200, ge=1, le=1_000_000, description="random groupings (same group sizes) for the NMI floor")
    random_seed: int = Field(0, description="seed of the random groupings")

    @field_validator("buckets")
    @classmethod
    def _buckets(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v or any(not (0 < b < 1) for b in v):
            raise ValueError("buckets must be a non-empty list of relative distances in (0, 1)")
        return tuple(sorted(v))


class CompareConfig(Strict):
    """``policygradex compare``: downstream training of every method under one budget rule (docs/compare.md)."""

    methods: tuple[str, ...] = Field(("multitask", "softmod", "random", "gradsim", "pcgrad", "tag", "policygradex"),
                                     description="methods to compare, in table order (see policygradex.compare.methods.METHODS)")
    seeds: int = Field(3, ge=1, le=1000, description="training seeds per method (0, 1, ..., seeds - 1)")
    steps_per_task: int = Field(20_480, ge=1, description="environment steps per task for every method (a group of s tasks trains for s x this); rounded up to whole PPO iterations")
    episodes: int = Field(10, ge=1, le=10_000, description="evaluation episodes per task")
    deterministic: bool = Field(False, description="evaluate with the greedy action instead of sampled actions")
    eval_seed: int = Field(12345, description="seed of the evaluation episodes (the same for every method and seed: common random numbers)")
    warm_start: bool = Field(False, description="start every MLP policy from theta* (the run's meta-policy) instead of from scratch")
    arch: Literal["mlp", "softmod"] = Field("mlp", description="network of the per-group policies and of the multitask/pcgrad policies (the softmod method always uses softmod)")
    minibatches: Literal["same_count", "preset_size"] = Field("same_count", description="same_count: every policy makes as many minibatch steps per epoch as the all-task policy (minibatch size scaled with the group's batch); preset_size: the preset's minibatch size for every policy (smaller groups then make fewer optimizer steps)")
    tag_checkpoints: int = Field(5, ge=1, le=1000, description="tag: meta-training checkpoints (evenly spaced) at which lookahead affinities are measured and averaged")
    tag_transitions: int = Field(2048, ge=64, le=MAX_ROWS, description="tag: transitions per task collected at each checkpoint")
    tag_delta: float = Field(0.01, gt=0, le=0.5, description="tag: lookahead step size as a relative distance ||eta g|| / ||theta|| (mean over tasks)")
    n_test: int = Field(50, ge=1, le=1000, description="meta-*: held-out test tasks drawn from the training family's parameter ranges")
    adapt_steps: int = Field(20, ge=0, le=100_000, description="meta-*: gradient steps of test-time adaptation per held-out task, one fresh rollout each (paper: 200)")
    probe_episodes: int = Field(3, ge=1, le=10_000, description="meta-*: episodes per group policy on a held-out task to pick its group (best mean probe return)")
    inner_steps: int = Field(1, ge=1, le=10_000, description="meta-*: FOMAML inner-loop adaptation steps per task and meta-iteration")
    inner_lr: float = Field(0.1, gt=0, le=MAX_LR, description="meta-*: SGD step size of the inner loop and of test-time adaptation")
    meta_lr: float = Field(1e-2, gt=0, le=MAX_LR, description="meta-*: Adam step size of the FOMAML outer update")
    meta_envs: int = Field(4, ge=1, le=MAX_ENVS, description="meta-*: environments per rollout (meta-training and adaptation)")
    meta_rollout_steps: int = Field(64, ge=1, le=100_000, description="meta-*: steps per environment per rollout (one rollout = meta_envs x this transitions)")

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("methods must name at least one method")
        dup = sorted({m for m in v if v.count(m) > 1})
        if dup:
            raise ValueError(f"methods are listed twice: {', '.join(dup)}")
        return v
