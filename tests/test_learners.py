"""The learner interface (rl/learners.py): the registry, dispatch by name, config and model,
checkpoints loaded through the learner that wrote them, a third learner that plugs in, and no
algorithm switch outside ``rl/``."""

from __future__ import annotations

import ast
from pathlib import Path

import pydantic
import pytest
import torch
from torch import nn

from conftest import seeded
from policygradex.compare.methods import METHODS
from policygradex.config import NetConfig, PPOConfig, RunConfig, SACConfig
from policygradex.errors import UserError
from policygradex.estimate.collect import Collected, collect
from policygradex.rl import checkpoint_io
from policygradex.rl.checkpoint import LoadedCheckpoint, load_checkpoint
from policygradex.rl.learners import LEARNERS, Learner, learner_for, register
from policygradex.rl.ppo import PPOLearner
from policygradex.rl.sac import SACLearner, SACModel
from policygradex.tasks import load_suite
from test_sac import toy_suite

SRC = Path(__file__).resolve().parents[1] / "src" / "policygradex"


def test_ppo_and_sac_are_registered_under_their_names():
    assert list(LEARNERS)[:2] == ["ppo", "sac"]
    ppo, sac = LEARNERS["ppo"], LEARNERS["sac"]
    assert isinstance(ppo, PPOLearner) and isinstance(sac, SACLearner)
    assert (ppo.name, ppo.config_type, sac.name, sac.config_type) == ("ppo", PPOConfig, "sac", SACConfig)
    assert isinstance(ppo, Learner) and isinstance(sac, Learner)
    # RunConfig.algo takes exactly the registered names
    assert all(learner_for(RunConfig(algo=name).learner()).name == name for name in ("ppo", "sac"))


def test_learner_for_a_name_a_config_and_a_model():
    ppo, sac = LEARNERS["ppo"], LEARNERS["sac"]
    assert learner_for("ppo") is ppo and learner_for("sac") is sac
    assert learner_for(PPOConfig()) is ppo and learner_for(SACConfig()) is sac
    assert learner_for(PPOConfig) is ppo and learner_for(SACConfig) is sac
    suite = load_suite("cartpole", 2, 0)
    assert learner_for(ppo.build_model(suite, PPOConfig())) is ppo  # an ActorCritic has no algo: PPO
    reach = toy_suite((1.0, -1.0))
    model = sac.build_model(reach, SACConfig(net=NetConfig(hidden=(8,), activation="relu")))
    assert isinstance(model, SACModel) and learner_for(model) is sac


def test_unknown_learner_is_a_user_error_naming_the_registered_ones():
    with pytest.raises(UserError, match=r"unknown learner 'a2c'; allowed: ppo, sac"):
        learner_for("a2c")

    class Other(pydantic.BaseModel):
        pass

    with pytest.raises(UserError, match=r"no learner has the config type Other; allowed: ppo, sac"):
        learner_for(Other)


def test_sac_cannot_act_in_a_discrete_suite_and_ppo_can():
    suite = load_suite("cartpole", 2, 0)
    LEARNERS["ppo"].check_suite(suite)
    with pytest.raises(UserError, match="--algo sac needs a bounded 1-D Box action space"):
        LEARNERS["sac"].check_suite(suite)


def test_ppo_only_methods_follow_the_learner_names():
    assert [n for n, m in METHODS.items() if m.trains_with("sac")] == ["multitask", "softmod", "random", "policygradex",
                                                                      "recommended", "pertask"]
    assert all(m.trains_with("ppo") for m in METHODS.values())


# --------------------------------------------------------------------- a third learner plugs in


class FakeConfig(pydantic.BaseModel):
    width: int = 3


class FakeModel(nn.Module):
    algo = "fake"

    def __init__(self, in_dim: int, width: int):
        super().__init__()
        self.net = nn.Linear(in_dim, width)


class FakeLearner:
    """The least a learner needs: a name, a config model, and the five calls."""

    name = "fake"
    config_type = FakeConfig
    title = "Fake"

    def check_suite(self, suite) -> None:
        pass

    def progress_total(self, cfg, n_tasks: int) -> int:
        return n_tasks

    def train(self, suite, cfg, out_dir, tensorboard=None, on_progress=None):
        raise NotImplementedError

    def build_model(self, suite, cfg) -> FakeModel:
        return FakeModel(int(suite.observation_space.shape[0]) + suite.n, cfg.width)

    def collect(self, model, suite, cfg, transitions_per_task, envs_per_task, heldout_frac, seed, on_step=None) -> Collected:
        n = suite.n * transitions_per_task
        z = torch.zeros(n)
        return Collected(torch.zeros(n, model.net.in_features), z, z, z, torch.arange(n) % suite.n, z.bool())


@pytest.fixture
def fake():
    learner = register(FakeLearner())
    try:
        yield learner
    finally:
        del LEARNERS["fake"]


def test_a_new_learner_plugs_in(fake, tmp_path):
    assert learner_for("fake") is fake and learner_for(FakeConfig(width=2)) is fake and learner_for(FakeConfig) is fake
    suite = load_suite("cartpole", 2, 0)
    model = fake.build_model(suite, FakeConfig())
    assert learner_for(model) is fake
    with pytest.raises(UserError, match=r"allowed: ppo, sac, imported, fake"):
        learner_for("a2c")
    # the estimate stage collects theta*'s transitions through it
    c = collect(model, suite, FakeConfig(), 4, 2, 0.0, 0)
    assert c.x.shape == (8, model.net.in_features)
    # its checkpoints (the shared format, with its algo) load through it
    payload = {"format": checkpoint_io.FORMAT, "algo": "fake", "model": model.state_dict(), "config": {"width": 3},
               "suite": suite.to_dict(), "spaces": checkpoint_io.spaces_of(suite), "global_step": 0, "returns": {}}
    torch.save(payload, tmp_path / "step_000000000.pt")
    loaded = load_checkpoint(tmp_path / "step_000000000.pt")
    assert isinstance(loaded.model, FakeModel) and loaded.config == FakeConfig() and not loaded.model.training
    assert all(torch.equal(a, b) for a, b in zip(loaded.model.state_dict().values(), model.state_dict().values()))
    # a compare method open to every learner runs with it; a PPO-only one does not
    assert METHODS["multitask"].trains_with("fake") and not METHODS["pcgrad"].trains_with("fake")


def test_a_checkpoint_of_an_unregistered_learner_is_a_one_line_error(tmp_path):
    suite = load_suite("cartpole", 2, 0)
    payload = {"format": checkpoint_io.FORMAT, "algo": "gone", "model": {}, "config": {}, "suite": suite.to_dict()}
    torch.save(payload, tmp_path / "step_000000001.pt")
    with pytest.raises(UserError, match=r"step_000000001\.pt: unknown learner 'gone'; allowed: ppo, sac"):
        load_checkpoint(tmp_path / "step_000000001.pt")


# --------------------------------------------------------------------- training through the interface


def _train(learner, suite, cfg, out_dir) -> list[tuple[int, dict]]:
    calls = []
    learner.check_suite(suite)
    res = learner.train(suite, cfg, out_dir, on_progress=lambda k, info: calls.append((k, info)))
    assert sum(k for k, _ in calls) == learner.progress_total(cfg, suite.n) == res.global_step
    assert all(set(info["returns"]) == set(suite.names) for _, info in calls)
    return res


@pytest.mark.trains
def test_load_checkpoint_of_a_ppo_run(tmp_path):
    suite = load_suite("cartpole", 2, seeded(0))
    cfg = PPOConfig(total_steps=256, envs_per_task=2, num_steps=32, minibatch_size=64, update_epochs=1, checkpoint_every=1,
                    seed=seeded(11), device="cpu")
    res = _train(LEARNERS["ppo"], suite, cfg, tmp_path)
    loaded = load_checkpoint(res.checkpoints[-1])
    assert isinstance(loaded, LoadedCheckpoint) and isinstance(loaded, tuple) and len(loaded) == 4
    assert type(loaded.config) is PPOConfig and loaded.config == cfg and "algo" not in loaded.raw
    assert type(loaded.model) is type(res.model) and loaded.suite.to_dict() == suite.to_dict()
    model, suite2, cfg2, raw = loaded  # the 4-tuple every caller unpacks
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), res.model.state_dict().values()))
    assert raw["global_step"] == res.global_step


@pytest.mark.trains
def test_load_checkpoint_of_a_sac_run(tmp_path):
    suite = toy_suite((1.0, -1.0))
    cfg = SACConfig(total_steps=80, envs_per_task=2, learning_starts=40, batch_size=16, checkpoint_every=40, seed=seeded(13),
                    device="cpu", net=NetConfig(hidden=(16,), activation="relu"))
    res = _train(LEARNERS["sac"], suite, cfg, tmp_path)
    loaded = load_checkpoint(res.checkpoints[-1])
    assert isinstance(loaded, LoadedCheckpoint) and type(loaded.config) is SACConfig and loaded.config == cfg
    assert isinstance(loaded.model, SACModel) and learner_for(loaded.model).name == loaded.raw["algo"] == "sac"
    assert all(torch.equal(a, b) for a, b in zip(loaded.model.state_dict().values(), res.model.state_dict().values()))
    c = collect(loaded.model, loaded.suite, loaded.config, 8, 2, 0.5, 0)  # the SAC advantages, via the model's learner
    assert c.adv.shape == (2 * 8,) and c.heldout.any() and not c.heldout.all()


# --------------------------------------------------------------------- no algorithm switch outside rl/

#: modules that may name an algorithm: option parsing and the config models; the pipeline is
#: edited elsewhere and calls the learners itself
EXEMPT = {"config.py", "cli.py", "runfile.py", "pipeline.py"}


def _switches(tree: ast.AST) -> list[int]:
    """Lines that compare against the string "sac" or test isinstance/issubclass against SACConfig."""
    def is_sac(node) -> bool:
        if isinstance(node, ast.Constant) and node.value == "sac":
            return True
        return isinstance(node, (ast.Tuple, ast.List, ast.Set)) and any(is_sac(e) for e in node.elts)

    def names_sac_config(node) -> bool:
        return any((isinstance(n, ast.Name) and n.id == "SACConfig") or (isinstance(n, ast.Attribute) and n.attr == "SACConfig")
                   for n in ast.walk(node))

    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(is_sac(x) for x in (node.left, *node.comparators)):
            lines.append(node.lineno)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("isinstance", "issubclass")
              and len(node.args) == 2 and names_sac_config(node.args[1])):
            lines.append(node.lineno)
        elif isinstance(node, ast.match_case) and is_sac(getattr(node.pattern, "value", None)):
            lines.append(node.pattern.lineno)
    return sorted(lines)


def test_the_switch_finder_finds_switches():
    src = ('if cfg.algo == "sac": pass\n'
           'x = "sac" != a\n'
           'y = algo in ("ppo", "sac")\n'
           'z = isinstance(c, SACConfig)\n'
           'w = isinstance(c, (PPOConfig, config.SACConfig))\n'
           'ok = {"sac": 1}["sac"]; fine = isinstance(c, PPOConfig)\n')
    assert _switches(ast.parse(src)) == [1, 2, 3, 4, 5]


def test_no_algorithm_switch_outside_rl():
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        if rel.parts[0] == "rl" or str(rel) in EXEMPT:
            continue
        lines = _switches(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        if lines:
            found[str(rel)] = lines
    assert not found, (f"algorithm switches outside rl/ (lines): {found}; call the learner instead "
                       "(policygradex.rl.learners.learner_for)")


def test_a_rollout_record_is_checked_when_loaded():
    import torch

    from policygradex.errors import UserError
    from policygradex.rl.collected import Collected

    n = 6
    good = Collected(torch.zeros(n, 3), torch.zeros(n, dtype=torch.long), torch.zeros(n), torch.zeros(n),
                     torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.bool), [[1.0]]).to_dict()
    back = Collected.from_dict(good, "r.pt")
    assert torch.equal(back.x, good["x"]) and back.episode_returns == [[1.0]]
    with pytest.raises(UserError, match="r.pt is not a rollout record .no tensor 'adv'"):
        Collected.from_dict({k: v for k, v in good.items() if k != "adv"}, "r.pt")
    with pytest.raises(UserError, match="task has 5 rows, x has 6"):
        Collected.from_dict({**good, "task": good["task"][:5]}, "r.pt")
    with pytest.raises(UserError, match="wrong shape or type"):
        Collected.from_dict({**good, "heldout": good["heldout"].long()}, "r.pt")
