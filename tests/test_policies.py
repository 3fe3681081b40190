"""run --policy: a policy trained elsewhere as theta* (policygradex.rl.imported, docs/policies.md)."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch

from conftest import assert_one_line, run_main, seeded
from policygradex.config import ImportedConfig
from policygradex.errors import UserError
from policygradex.rl.imported import OneHotTaskEnv, _fitted_baseline, check_gradients, load_policy
from policygradex.rl.collected import Collected
from policygradex.tasks import load_suite

POLICY_MODULE = textwrap.dedent('''
    import torch, torch.nn as nn

    class Policy(nn.Module):
        """Categorical policy with a value head; the task enters as a row of an identity matrix."""
        def __init__(self, obs_dim, n_actions, n_tasks, value=True):
            super().__init__()
            self.register_buffer("eye", torch.eye(n_tasks))
            self.pi = nn.Sequential(nn.Linear(obs_dim + n_tasks, 16), nn.Tanh(), nn.Linear(16, n_actions))
            self.v = nn.Sequential(nn.Linear(obs_dim + n_tasks, 16), nn.Tanh(), nn.Linear(16, 1)) if value else None
        def forward(self, obs, task):
            x = torch.cat([obs, self.eye[task]], -1)
            dist = torch.distributions.Categorical(logits=self.pi(x))
            return (dist, self.v(x).squeeze(-1)) if self.v is not None else dist

    class Gaussian(nn.Module):
        def __init__(self, obs_dim, act_dim, n_tasks):
            super().__init__()
            self.emb = nn.Embedding(n_tasks, 4)
            self.mu = nn.Linear(obs_dim + 4, act_dim)
            self.log_std = nn.Parameter(torch.full((act_dim,), -0.5))
        def forward(self, obs, task):
            mean = self.mu(torch.cat([obs, self.emb(task)], -1))
            return torch.distributions.Normal(mean, self.log_std.exp().expand_as(mean))

    def make(observation_space, action_space, n_tasks):
        torch.manual_seed(0)
        return Policy(observation_space.shape[0], action_space.n, n_tasks)

    def make1(observation_space, action_space, n_tasks):
        torch.manual_seed(1)
        return Policy(observation_space.shape[0], action_space.n, n_tasks)

    def make2(observation_space, action_space, n_tasks):
        torch.manual_seed(2)
        return Policy(observation_space.shape[0], action_space.n, n_tasks)

    def no_value(observation_space, action_space, n_tasks):
        torch.manual_seed(0)
        return Policy(observation_space.shape[0], action_space.n, n_tasks, value=False)

    def gaussian(observation_space, action_space, n_tasks):
        torch.manual_seed(0)
        return Gaussian(observation_space.shape[0], action_space.shape[0], n_tasks)

    def frozen(observation_space, action_space, n_tasks):
        p = make(observation_space, action_space, n_tasks)
        for q in p.parameters():
            q.requires_grad_(False)
        return p

    class Item(Policy):
        def forward(self, obs, task):
            if obs.sum().item() > 1e9:      # a Python branch on a tensor value: not vmap-able
                return None
            return super().forward(obs, task)

    def item(observation_space, action_space, n_tasks):
        return Item(observation_space.shape[0], action_space.n, n_tasks)

    def beta(observation_space, action_space, n_tasks):
        class B(nn.Module):
            def __init__(self):
                super().__init__()
                self.l = nn.Linear(observation_space.shape[0], action_space.n)
            def forward(self, obs, task):
                return torch.distributions.Beta(self.l(obs).exp(), self.l(obs).exp())
        return B()

    def not_a_module(observation_space, action_space, n_tasks):
        return 42

    def half_frozen(observation_space, action_space, n_tasks):
        p = make(observation_space, action_space, n_tasks)
        p.pi[0].requires_grad_(False)
        return p

    def three_actions(observation_space, action_space, n_tasks):
        return Policy(observation_space.shape[0], 3, n_tasks)
''')

SMALL = ("--transitions", "128", "--null-permutations", "10", "--d", "16", "--subsets", "8")


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """The user's policy module, importable as ``userpolicy`` (the working directory)."""
    import sys

    (tmp_path / "userpolicy.py").write_text(POLICY_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("userpolicy", None)
    yield tmp_path
    sys.modules.pop("userpolicy", None)


def _small_config(tmp_path):
    cfg = tmp_path / "small.toml"
    cfg.write_text("[estimate]\nprobe_transitions = 64\n[group]\nbootstrap = 5\n")
    return str(cfg)


def test_module_policy_gradients_match_autograd_on_the_original_module(user_module):
    """Per-sample gradients as the estimate computes them (torch.func under vmap, through the
    adapter) equal autograd on the user's own module, for a categorical and a Gaussian policy."""
    from policygradex.estimate.features import exact_grads

    for suite_name, factory in (("cartpole-planted", "make"), ("env:Pendulum-v1", "gaussian")):
        suite = load_suite(suite_name)
        model = load_policy(suite, ImportedConfig(spec=f"module:userpolicy:{factory}"))
        assert check_gradients(model, suite, "spec") < 1e-5
        obs_dim = model.actor.obs_dim
        gen = torch.Generator().manual_seed(3)
        x = torch.cat([torch.randn(6, obs_dim, generator=gen), torch.eye(suite.n)[torch.arange(6) % suite.n]], 1)
        a, _, _ = model.act(x, generator=gen)
        g = exact_grads(model.actor, x, a)
        user = model.actor.policy  # the object the factory returned
        for i in range(6):
            out = user(x[i:i + 1, :obs_dim], torch.tensor([i % suite.n]))
            dist = out[0] if isinstance(out, tuple) else out
            lp = dist.log_prob(a[i:i + 1]).sum()
            ref = torch.autograd.grad(lp, list(user.parameters()), allow_unused=True)
            ref = torch.cat([(r if r is not None else torch.zeros_like(p)).reshape(-1) for r, p in zip(ref, user.parameters())])
            assert torch.allclose(g[i], ref, atol=1e-6, rtol=1e-5)


def test_task_order_maps_suite_tasks_to_the_policys(user_module):
    suite = load_suite("cartpole-planted")
    order = tuple(reversed(suite.names))
    model = load_policy(suite, ImportedConfig(spec="module:userpolicy:make", task_order=order))
    assert model.actor.task_map.tolist() == list(reversed(range(suite.n)))
    with pytest.raises(UserError, match="--policy-tasks"):
        load_policy(suite, ImportedConfig(spec="module:userpolicy:make", task_order=order[:-1]))


def test_fitted_baseline_removes_what_the_observation_explains():
    """MC returns that are a quadratic function of the observation leave no advantage."""
    gen = torch.Generator().manual_seed(0)
    n = 400
    obs = torch.randn(n, 3, generator=gen)
    task = torch.arange(n) % 2
    x = torch.cat([obs, torch.nn.functional.one_hot(task, 2).float()], 1)
    ret = (2 * obs[:, 0] - obs[:, 1] ** 2 + 3 * task).double()
    c = Collected(x, torch.zeros(n, dtype=torch.long), ret.clone(), ret, task, torch.arange(n) % 5 == 0)
    adv = ret - _fitted_baseline(c, 3, 2)
    assert float(adv.abs().max()) < 0.05 * float(ret.abs().mean())


def test_one_hot_task_env_is_reproducible_from_its_seed():
    suite = load_suite("cartpole-planted")
    firsts = []
    for _ in range(2):
        env = OneHotTaskEnv(suite)
        obs = [env.reset(seed=0)[0]] + [env.reset()[0] for _ in range(suite.n)]
        firsts.append(np.stack(obs))
        env.close()
    assert np.array_equal(firsts[0], firsts[1])


def test_one_hot_task_env_cycles_tasks():
    suite = load_suite("cartpole-planted")
    env = OneHotTaskEnv(suite)
    assert env.observation_space.shape == (4 + suite.n,)
    for ep in range(suite.n + 1):
        obs, info = env.reset(seed=ep)
        assert info["task"] == ep % suite.n and obs[4 + ep % suite.n] == 1.0 and obs[4:].sum() == 1.0
        assert env.observation_space.contains(obs)
    env.close()


@pytest.mark.trains
def test_module_policy_through_the_cli(user_module):
    out = user_module / "run"
    code, err = run_main("run", "--suite", "cartpole-planted", "--policy", "module:userpolicy:make", "--seed", str(seeded(0)),
                         *SMALL, "--config", _small_config(user_module), "--out", str(out))
    assert code == 0, err
    g = json.loads((out / "groups.json").read_text())
    src = g["meta_policy"]["imported"]
    assert src["spec"] == "module:userpolicy:make" and len(src["sha256"]) == 64 and src["advantages"].startswith("gae")
    assert src["gradient_check_rel_error"] < 1e-5
    assert g["verdict"]["calibrated"] is False and "--policy A --policy B" in g["verdict"]["not_calibrated_because"]
    assert sorted(x for grp in g["groups"] for x in grp) == sorted(load_suite("cartpole-planted").names)
    assert "Imported, not trained here: `module:userpolicy:make`" in (out / "report.md").read_text()
    assert [p.name for p in (out / "train" / "checkpoints").iterdir()] == ["step_000000000.pt"]  # imported, not trained


@pytest.mark.trains
def test_policy_without_a_value_gets_monte_carlo_advantages(user_module):
    out = user_module / "run"
    code, err = run_main("run", "--suite", "cartpole-planted", "--policy", "module:userpolicy:no_value", *SMALL,
                         "--config", _small_config(user_module), "--out", str(out))
    assert code == 0, err
    g = json.loads((out / "groups.json").read_text())
    assert g["meta_policy"]["imported"]["advantages"] == "monte_carlo_minus_fitted_baseline"
    assert "Monte-Carlo returns minus a fitted baseline" in (out / "report.md").read_text()


@pytest.mark.trains
def test_three_policies_are_replicates_with_a_calibrated_verdict(user_module):
    out = user_module / "run"
    code, err = run_main("run", "--suite", "cartpole-planted", *[a for f in ("make", "make1", "make2") for a in ("--policy", f"module:userpolicy:{f}")],
                         *SMALL, "--workers", "1", "--config", _small_config(user_module), "--out", str(out))
    assert code == 0, err
    g = json.loads((out / "groups.json").read_text())
    assert g["verdict"]["replicates"] == 3 and g["verdict"]["calibrated"] is True
    reps = json.loads((out / "replicates.json").read_text())["replicates"]
    assert len(reps) == 3
    srcs = [json.loads((out / d / "train" / "train_history.json").read_text())["imported"]["spec"]
            for d in (".", "replicates/r1", "replicates/r2")]
    assert srcs == ["module:userpolicy:make", "module:userpolicy:make1", "module:userpolicy:make2"]


@pytest.mark.parametrize("args, needles", [
    (("--policy", "module:userpolicy:nope"), ("has no callable 'nope'",)),
    (("--policy", "module:nosuchmodule_xyz:make"), ("cannot import 'nosuchmodule_xyz'",)),
    (("--policy", "module:userpolicy"), ("module:PKG.MOD:FACTORY",)),
    (("--policy", "module:userpolicy:make:missing.pt"), ("missing.pt does not exist",)),
    (("--policy", "module:userpolicy:frozen"), ("no parameters that require gradients",)),
    (("--policy", "module:userpolicy:item"), ("vmap",)),
    (("--policy", "module:userpolicy:beta"), ("Beta distribution", "allowed: Categorical")),
    (("--policy", "module:userpolicy:not_a_module"), ("not a torch.nn.Module",)),
    (("--policy", "module:userpolicy:half_frozen"), ("pi.0.weight", "do not require gradients")),
    (("--policy", "module:userpolicy:three_actions"), ("probabilities has shape [4, 3]", "needs [4, 2]")),
    (("--policy", "module:userpolicy:make", "--replicates", "3", "--replicate-over", "checkpoints"), ("one checkpoint",)),
    (("--policy", "sb3:model:stats.pkl"), ("sb3:PATH.zip[:STATS.pkl]",)),
    (("--policy", "onnx:model.onnx"), ("unknown kind 'onnx'", "allowed")),
    (("--policy", "sb3:missing.zip"), ("missing.zip does not exist",)),
    (("--policy", "module:userpolicy:make", "--steps", "1000"), ("--steps", "nothing is trained with --policy")),
    (("--policy", "module:userpolicy:make", "--replicates", "3"), ("--replicates 3 with one --policy",)),
    (("--policy", "module:userpolicy:make", "--policy", "module:userpolicy:make"), ("given twice",)),
    (("--policy-tasks", "a,b"), ("--policy-tasks needs --policy",)),
    (("--policy", "module:userpolicy:make", "--policy-task-input", "none"), ("applies to sb3",)),
    (("--policy", "module:userpolicy:make", "--policy-tasks", "a,b"), ("--policy-tasks", "allowed: a permutation")),
])
def test_bad_policy_specs_are_one_line_errors(user_module, args, needles):
    out = user_module / "out"
    code, err = run_main("run", "--suite", "cartpole-planted", *args, "--out", str(out))
    assert_one_line(code, err, *needles)
    assert not (out / "groups.json").exists()


@pytest.mark.parametrize("command", ["validate", "compare"])
def test_validate_and_compare_refuse_an_imported_policy(user_module, command):
    code, err = run_main(command, "--suite", "cartpole-planted", "--policy", "module:userpolicy:make", "--out", str(user_module / "o"))
    assert_one_line(code, err, "--policy", f"{command} a run of the project's meta-policy")


def test_a_wrong_archive_is_a_one_line_error(user_module):
    pytest.importorskip("stable_baselines3")
    (user_module / "fake.zip").write_text("not a zip")
    code, err = run_main("run", "--suite", "cartpole-planted", "--policy", "sb3:fake.zip", "--out", str(user_module / "o"))
    assert_one_line(code, err, "fake.zip is not a Stable-Baselines3 archive")


# ----------------------------------------------------------------------------- Stable-Baselines3


def _sb3_model(tmp_path, suite_name="cartpole-planted", steps=512, normalize=False, onehot=True, seed=0):
    """A small SB3 PPO trained in the test on the suite's tasks behind OneHotTaskEnv."""
    sb3 = pytest.importorskip("stable_baselines3")
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    suite = load_suite(suite_name)
    env = make_vec_env(lambda: OneHotTaskEnv(suite) if onehot else suite.tasks[0].make(), n_envs=2, seed=seed)
    if normalize:
        env = VecNormalize(env, norm_reward=False)
    model = sb3.PPO("MlpPolicy", env, n_steps=128, batch_size=64, n_epochs=2, seed=seed, device="cpu",
                    policy_kwargs={"net_arch": [16]})
    model.learn(steps)
    path = tmp_path / f"sb3_{seed}_{int(normalize)}_{int(onehot)}.zip"
    model.save(path)
    return model, path, env


@pytest.mark.trains
def test_sb3_ppo_model_grouped_through_the_cli(tmp_path):
    model, path, _ = _sb3_model(tmp_path)
    out = tmp_path / "run"
    code, err = run_main("run", "--suite", "cartpole-planted", "--policy", f"sb3:{path}", *SMALL,
                         "--config", _small_config(tmp_path), "--out", str(out))
    assert code == 0, err
    g = json.loads((out / "groups.json").read_text())
    src = g["meta_policy"]["imported"]
    assert src["kind"] == "sb3" and "stable_baselines3" in src["library"] and src["task_input"] == "onehot"
    assert src["advantages"].startswith("gae")


@pytest.mark.trains
def test_sb3_log_probs_and_gradients_match_sb3s_own(tmp_path):
    """The adapter's log-probabilities equal SB3's evaluate_actions on the same inputs, and the
    per-sample gradients (vmap) equal autograd through SB3's own policy object."""
    from policygradex.estimate.features import exact_grads

    model, path, _ = _sb3_model(tmp_path)
    suite = load_suite("cartpole-planted")
    imported = load_policy(suite, ImportedConfig(spec=f"sb3:{path}"))
    x = torch.cat([torch.randn(5, 4), torch.eye(suite.n)[torch.tensor([0, 1, 2, 3, 7])]], 1)
    a = torch.tensor([0, 1, 1, 0, 1])
    pol = imported.actor.policy.sb3  # the SB3 policy loaded with SB3's own loader
    _, ref_lp, _ = pol.evaluate_actions(x, a)
    assert torch.allclose(imported.actor.log_prob(x, a), ref_lp, atol=1e-5)
    g = exact_grads(imported.actor, x, a)
    params = list(imported.actor.parameters())
    for i in range(5):
        _, lp, _ = pol.evaluate_actions(x[i:i + 1], a[i:i + 1])
        ref = torch.autograd.grad(lp.sum(), params, allow_unused=True)
        ref = torch.cat([(r if r is not None else torch.zeros_like(p)).reshape(-1) for r, p in zip(ref, params)])
        assert torch.allclose(g[i], ref, atol=1e-5, rtol=1e-4)


@pytest.mark.trains
def test_sb3_vecnormalize_statistics_applied_or_refused(tmp_path):
    model, path, venv = _sb3_model(tmp_path, normalize=True)
    code, err = run_main("run", "--suite", "cartpole-planted", "--policy", f"sb3:{path}", "--out", str(tmp_path / "o"))
    assert_one_line(code, err, "trained with VecNormalize", "no statistics")
    venv.save(str(tmp_path / "vecnormalize.pkl"))
    suite = load_suite("cartpole-planted")
    imported = load_policy(suite, ImportedConfig(spec=f"sb3:{path}"))
    raw = np.concatenate([np.random.default_rng(0).normal(size=(4, 4)), np.eye(suite.n)[:4]], 1).astype(np.float32)
    normed = torch.as_tensor(venv.normalize_obs(raw))
    a = torch.tensor([0, 1, 0, 1])
    _, ref_lp, _ = model.policy.evaluate_actions(normed, a)
    assert torch.allclose(imported.actor.log_prob(torch.as_tensor(raw), a), ref_lp, atol=1e-5)


@pytest.mark.trains
def test_sb3_a_stray_vecnormalize_file_is_not_applied(tmp_path):
    """Statistics next to a model trained without VecNormalize are not its own: ignored when
    found, refused when named."""
    model, path, _ = _sb3_model(tmp_path, steps=128)
    (tmp_path / "other").mkdir()
    _, _, venv = _sb3_model(tmp_path / "other", steps=128, normalize=True)
    venv.save(str(tmp_path / "vecnormalize.pkl"))
    suite = load_suite("cartpole-planted")
    imported = load_policy(suite, ImportedConfig(spec=f"sb3:{path}"))
    assert imported.actor.policy.normalize is False
    x = torch.cat([torch.randn(3, 4), torch.eye(suite.n)[:3]], 1)
    a = torch.tensor([0, 1, 0])
    assert torch.allclose(imported.actor.log_prob(x, a), model.policy.evaluate_actions(x, a)[1], atol=1e-5)
    code, err = run_main("run", "--suite", "cartpole-planted", "--policy", f"sb3:{path}:{tmp_path / 'vecnormalize.pkl'}",
                         "--out", str(tmp_path / "o"))
    assert_one_line(code, err, "not trained with VecNormalize")


def test_sb3_spaces_that_do_not_fit_are_one_line_errors(tmp_path):
    _, path, _ = _sb3_model(tmp_path, steps=128, onehot=False)  # trained on the bare observation: 4 values
    code, err = run_main("run", "--suite", "cartpole-planted", "--policy", f"sb3:{path}", "--out", str(tmp_path / "o"))
    assert_one_line(code, err, "observation space", "12", "--policy-task-input onehot")
    code, err = run_main("run", "--suite", "lunarlander", "--policy", f"sb3:{path}", "--policy-task-input", "none",
                         "--out", str(tmp_path / "o2"))
    assert_one_line(code, err, "observation space")


@pytest.mark.trains
def test_a_changed_policy_file_is_imported_again(user_module):
    """The policy's sha256 keys the train stage: new weights in the same file re-import them, and
    a checkpoint whose files changed since it was written is refused when it is loaded."""
    from policygradex.rl.checkpoint import load_checkpoint

    import userpolicy

    suite = load_suite("cartpole-planted")
    weights = user_module / "w.pt"
    torch.save(userpolicy.Policy(4, 2, suite.n).state_dict(), weights)
    out = user_module / "run"
    args = ("run", "--suite", "cartpole-planted", "--policy", f"module:userpolicy:make:{weights}", *SMALL,
            "--config", _small_config(user_module), "--out", str(out))
    assert run_main(*args)[0] == 0
    first = json.loads((out / "groups.json").read_text())["meta_policy"]["imported"]["sha256"]
    ckpt = out / "train" / "checkpoints" / "step_000000000.pt"
    torch.manual_seed(7)
    torch.save(userpolicy.Policy(4, 2, suite.n).state_dict(), weights)
    with pytest.raises(UserError, match="changed since the checkpoint was written"):
        load_checkpoint(ckpt)
    code, err = run_main(*args)
    assert code == 0, err
    second = json.loads((out / "groups.json").read_text())["meta_policy"]["imported"]["sha256"]
    assert first != second and load_checkpoint(ckpt).raw["config"]["sha256"] == second


# ----------------------------------------------------------------------------- export


def _fake_run(tmp_path):
    """A run directory's config.json and groups.json, as run writes them (no training needed)."""
    from policygradex import artifacts as art

    suite = load_suite("cartpole-planted")
    run = tmp_path / "run"
    run.mkdir()
    art.write_json(run / "config.json", {"suite": suite.to_dict()})
    names = suite.names
    groups = [[n for n in names if n.startswith("normal")], [n for n in names if n.startswith("mirrored")]]
    art.write_json(run / "groups.json", {"groups": groups, "null_p": 0.005, "verdict": {"p": 0.005, "calibrated": True}})
    return run, suite, groups


def test_export_writes_one_suite_file_per_group_that_reads_back(tmp_path):
    from conftest import run_cli

    from policygradex import export_suites, groups_of

    run, suite, groups = _fake_run(tmp_path)
    assert groups_of(run) == groups
    paths = export_suites(run, tmp_path / "suites")
    assert [p.name for p in paths] == ["cartpole-planted-group1.toml", "cartpole-planted-group2.toml"]
    for path, names in zip(paths, groups):
        back = load_suite(str(path))
        assert back.names == names
        assert [t.model_dump() for t in back.tasks] == [t.model_dump() for t in suite.tasks if t.name in names]
        assert back.ppo_preset == suite.ppo_preset
    # existing files are never overwritten: one line, nothing written
    before = paths[0].read_bytes()
    proc = run_cli("export", str(run), "--out", str(tmp_path / "suites"))
    assert_one_line(proc.returncode, proc.stderr, "cartpole-planted-group1.toml already exists")
    assert paths[0].read_bytes() == before
    proc = run_cli("export", str(run), "--out", str(tmp_path / "other"))
    assert proc.returncode == 0 and "cartpole-planted-group2.toml" in proc.stdout


def test_export_bad_inputs(tmp_path):
    code, err = run_main("export", str(tmp_path), "--out", str(tmp_path / "o"))
    assert_one_line(code, err, "no groups.json")
    run, _, _ = _fake_run(tmp_path)
    code, err = run_main("export", str(run), "--format", "yaml", "--out", str(tmp_path / "o"))
    assert_one_line(code, err, "--format 'yaml'", "allowed: suite")


@pytest.mark.trains
def test_sb3_dict_observation_with_a_task_key(tmp_path):
    """--policy-task-input key:task: a MultiInputPolicy on {observation, task}; the adapter's
    log-probabilities equal SB3's on the same dict observations, and the CLI groups from it."""
    sb3 = pytest.importorskip("stable_baselines3")
    from stable_baselines3.common.env_util import make_vec_env

    suite = load_suite("cartpole-planted")
    env = make_vec_env(lambda: OneHotTaskEnv(suite, task_key="task"), n_envs=2, seed=0)
    model = sb3.PPO("MultiInputPolicy", env, n_steps=64, batch_size=64, n_epochs=1, seed=0, device="cpu",
                    policy_kwargs={"net_arch": [16]})
    model.learn(128)
    path = tmp_path / "dict.zip"
    model.save(path)
    imported = load_policy(suite, ImportedConfig(spec=f"sb3:{path}", task_input="key:task"))
    x = torch.cat([torch.randn(4, 4), torch.eye(suite.n)[torch.tensor([0, 2, 5, 7])]], 1)
    a = torch.tensor([1, 0, 1, 0])
    _, ref_lp, _ = model.policy.evaluate_actions({"observation": x[:, :4], "task": torch.tensor([0, 2, 5, 7])}, a)
    assert torch.allclose(imported.actor.log_prob(x, a), ref_lp, atol=1e-5)
    assert check_gradients(imported, suite, "spec") < 1e-4
    out = tmp_path / "run"
    code, err = run_main("run", "--suite", "cartpole-planted", "--policy", f"sb3:{path}", "--policy-task-input", "key:task",
                         *SMALL, "--config", _small_config(tmp_path), "--out", str(out))
    assert code == 0, err
    assert json.loads((out / "groups.json").read_text())["meta_policy"]["imported"]["task_input"] == "key:task"
    code, err = run_main("run", "--suite", "cartpole-planted", "--policy", f"sb3:{path}", "--policy-task-input", "key:tid",
                         "--out", str(tmp_path / "o2"))
    assert_one_line(code, err, "observation keys", "'tid'")
    code, err = run_main("run", "--suite", "cartpole-planted", "--policy", f"sb3:{path}", "--policy-task-input", "key",
                         "--out", str(tmp_path / "o3"))
    assert_one_line(code, err, "--policy-task-input", "key:NAME")
