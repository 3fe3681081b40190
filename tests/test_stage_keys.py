"""Every option enters exactly its own stage's cache key, and a change recomputes exactly that
stage and the ones downstream of it.

The first tests need no training: they perturb every field of every section of ``RunConfig``
(``ppo``, ``sac``, ``estimate``, ``group``, and ``algo``) one at a time and compare the seven
stage keys, with the upstream digests held fixed.  A new option that no stage config declares,
or that a stage reads without it being in its key, fails here.  The last test runs a tiny
pipeline and changes one option per stage for real.
"""

from __future__ import annotations

import shutil
import typing

import pytest
from pydantic import BaseModel

from conftest import seeded
from policygradex import pipeline
from policygradex.config import NOT_KEYED, GroupConfig, RunConfig, StageConfig
from policygradex.errors import UserError
from policygradex.stage import STAGES, stage_key
from policygradex.stages import COLLECT, EVALUATE, FEATURES, GROUP, SUBSETS, SURROGATE, TRAIN

DEFS = {d.name: d for d in (TRAIN, COLLECT, FEATURES, SUBSETS, SURROGATE, EVALUATE, GROUP)}
N_TASKS, SIZE = 8, 4  # the resolved subset size of an 8-task suite
FIXED = {name: f"digest-of-{name}" for name in ("suite", "replicates", *STAGES)}  # upstream digests held fixed


def _keys(cfg: RunConfig) -> dict[str, str]:
    size = cfg.estimate.subset_size or SIZE
    configs = pipeline.stage_configs(cfg, size)
    assert set(configs) == set(STAGES)
    return {name: stage_key(DEFS[name], configs[name], {u: FIXED[u] for u in DEFS[name].after}) for name in STAGES}


def _not_keyed(model: type[BaseModel], name: str) -> str | None:
    extra = model.model_fields[name].json_schema_extra
    return extra.get("not_keyed") if isinstance(extra, dict) else None


# Values for fields whose default has no obvious neighbour (None, or a bound).
OTHER = {"subset_size": 3, "checkpoint": 1000, "subsets": 40, "k": 2, "penalty": 0.5, "target_kl": 0.02,
         "target_entropy": -2.0, "min_return": 10.0, "hidden": (32, 32)}


def _other_value(model: type[BaseModel], name: str, value):
    """A valid value of ``model.name`` different from ``value``."""
    if name in OTHER:
        return OTHER[name]
    ann = model.model_fields[name].annotation
    if typing.get_origin(ann) is typing.Literal:
        return next(v for v in typing.get_args(ann) if v != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 0.5 if value else 0.01
    raise AssertionError(f"{model.__name__}.{name}: add a value other than {value!r} to OTHER")


def _leaf_fields(model: type[BaseModel], prefix: tuple[str, ...] = ()):
    """(path, owning model, field name) for every field, nested models expanded."""
    for name, f in model.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _leaf_fields(ann, prefix + (name,))
        else:
            yield prefix + (name,), model, name


def _with(cfg: RunConfig, path: tuple[str, ...], value) -> RunConfig:
    data = cfg.model_dump()
    node = data
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return RunConfig.model_validate(data)


def _cases():
    for section, algo in (("ppo", "ppo"), ("sac", "sac"), ("estimate", "ppo"), ("group", "ppo")):
        sub = RunConfig.model_fields[section].annotation
        for path, model, name in _leaf_fields(sub):
            yield pytest.param(algo, (section, *path), model, name, id=".".join((section, *path)))


@pytest.mark.parametrize("algo,path,model,name", list(_cases()))
def test_every_field_enters_exactly_its_stage_key(algo, path, model, name):
    base = RunConfig(algo=algo)
    if path[-2:-1] == ("net",) and name.startswith("softmod_"):  # used (and keyed) only by a softmod network
        base = _with(base, path[:-1] + ("arch",), "softmod")
    value = base
    for p in path:
        value = getattr(value, p)
    changed_cfg = _with(base, path, _other_value(model, name, value))
    before, after = _keys(base), _keys(changed_cfg)
    changed = {s for s in STAGES if before[s] != after[s]}
    why = _not_keyed(model, name)
    if why is not None:
        assert why in NOT_KEYED
        assert changed == set(), f"{'.'.join(path)} is marked not keyed ({why}) but changes the key of {changed}"
        return
    owners = {"ppo": {"train"}, "sac": {"train"}, "group": {"group"}}.get(path[0]) or {
        s for s, c in pipeline.stage_configs(base, SIZE).items() if s not in ("train", "group") and path[-1] in type(c).model_fields}
    assert len(owners) == 1, f"{'.'.join(path)} is declared by the configs of {owners or 'no stage'}"
    assert changed == owners, f"{'.'.join(path)} changes the keys of {changed}, expected exactly {owners}"


def test_algo_enters_the_train_key_only():
    before, after = _keys(RunConfig()), _keys(RunConfig(algo="sac"))
    assert {s for s in STAGES if before[s] != after[s]} == {"train"}


def test_every_estimate_option_belongs_to_one_stage_config():
    """The [estimate] table is the union of its stages' configs, with no field of its own."""
    from policygradex.config import EstimateConfig

    bases = [b for b in EstimateConfig.__bases__ if issubclass(b, StageConfig)]
    declared = [name for b in bases for name in b.model_fields]
    assert sorted(declared) == sorted(EstimateConfig.model_fields)
    assert len(declared) == len(set(declared)), "a field declared by two stage configs"
    assert issubclass(GroupConfig, StageConfig)


def test_upstream_digests_enter_the_key_and_the_suite_is_upstream_of_train_and_subsets():
    cfg = pipeline.stage_configs(RunConfig(), SIZE)
    for name, d in DEFS.items():
        for up in d.after:
            moved = {**FIXED, up: "another"}
            assert stage_key(d, cfg[name], {u: moved[u] for u in d.after}) != stage_key(d, cfg[name], {u: FIXED[u] for u in d.after})
    assert "suite" in TRAIN.after and "suite" in SUBSETS.after


def _downstream(stage: str) -> set[str]:
    out = {stage}
    for name in STAGES:  # in pipeline order: a stage's upstream stages come before it
        if any(u in out for u in DEFS[name].after):
            out.add(name)
    return out


# One keyed option per stage, and its new value (a tiny budget: the run trains a few seconds).
CHANGES = {"train": ("ppo", "learning_rate", 5e-4), "collect": ("estimate", "heldout_frac", 0.5),
           "features": ("estimate", "d", 24), "subsets": ("estimate", "subset_seed", 7),
           "surrogate": ("estimate", "target_delta", 0.02), "evaluate": ("estimate", "evaluator", "surrogate_loss"),
           "group": ("group", "alpha", 0.1)}


@pytest.mark.trains
def test_a_real_change_recomputes_its_stage_and_those_downstream_only(tmp_path):
    from policygradex.tasks import load_suite

    suite = load_suite("cartpole-planted", 6, seeded(0))
    cfg = RunConfig.model_validate({
        "ppo": {"total_steps": 3072, "envs_per_task": 2, "num_steps": 128, "update_epochs": 2, "checkpoint_every": 2,
                "seed": seeded(0), "net": {"hidden": [16]}},
        "estimate": {"probe_transitions": 64, "transitions_per_task": 256, "collect_envs_per_task": 4, "d": 16, "seed": seeded(0)},
        "group": {"null_permutations": 5, "bootstrap": 3, "replicates": 1}})
    out = tmp_path / "run"
    first = pipeline.run(suite, cfg, out)
    assert first.computed == list(STAGES)
    assert pipeline.run(suite, cfg, out).computed == []
    for stage, (section, field, value) in CHANGES.items():
        cfg = _with(cfg, (section, field), value)
        if stage == "train":  # checkpoints of another config are not overwritten: the run says so
            with pytest.raises(UserError, match="holds checkpoints of a different config"):
                pipeline.run(suite, cfg, out)
            shutil.rmtree(out / "train")
        res = pipeline.run(suite, cfg, out)
        assert set(res.computed) == _downstream(stage), f"changing {section}.{field} recomputed {res.computed}"
    assert pipeline.run(suite, cfg.model_copy(update={"ppo": cfg.ppo.model_copy(update={"threads": 2})}), out).computed == []


def test_a_checkpoint_resumes_under_other_execution_options_only():
    from policygradex.config import PPOConfig, SACConfig
    from policygradex.rl.checkpoint_io import same_training

    saved = PPOConfig(threads=1).model_dump(mode="json")
    assert same_training(saved, PPOConfig(threads=4, device="cpu"))
    assert not same_training(saved, PPOConfig(learning_rate=5e-4))
    assert not same_training(saved, SACConfig())
    assert not same_training({"no": "config"}, PPOConfig())
