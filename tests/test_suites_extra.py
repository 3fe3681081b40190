"""The highway and Meta-World suites (tasks/highway.py, tasks/metaworld.py): construction,
seeding, spaces, the success metric, profiles, PPO on them and `policygradex run` end to end.

Budgets are tiny: these tests check that the suites work, not that the policies learn."""

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import assert_user_error, run_cli, seeded

from policygradex.config import PPOConfig
from policygradex.errors import UserError
from policygradex.rl.checkpoint import build_model
from policygradex.rl.device import resolve_device
from policygradex.rl.evaluate import evaluate_policy
from policygradex.rl.networks import ActorCritic
from policygradex.rl.ppo import train
from policygradex.rl.rollout import MultiTaskEnv
from policygradex.tasks import Task, TaskSuite, load_suite

highway_mod = pytest.importorskip("policygradex.tasks.highway")
mw = pytest.importorskip("policygradex.tasks.metaworld")


@pytest.fixture(scope="module")
def mt10():
    return load_suite("metaworld-mt10")


def mw_task(name: str, goals, horizon: int = mw.HORIZON) -> Task:
    return Task(name=name, env_id=mw.ENV_ID, kwargs={"task_name": name, "goals": goals, "max_path_length": horizon})


# ---------------------------------------------------------------------------------------------
# highway


def test_highway_suite_is_seeded_with_documented_ranges_and_shared_spaces():
    s = load_suite("highway")
    assert s.n == 10 and s.profile == "quick" and s.success_key is None
    assert s.observation_space == gym.spaces.Box(-np.inf, np.inf, (25,), np.float32)
    assert s.action_space == gym.spaces.Discrete(5)
    for p in s.params:
        for key, (lo, hi) in highway_mod.RANGES.items():
            assert lo <= p[key] <= hi, (key, p[key])
    assert {p["lanes_count"] for p in s.params} == {2, 3, 4}
    assert load_suite("highway", 4, seed=1).to_dict() == load_suite("highway", 4, seed=1).to_dict()
    assert load_suite("highway", 4, seed=1).to_dict() != load_suite("highway", 4, seed=2).to_dict()
    for task in s.tasks:  # every task really has the suite's spaces
        env = task.make()
        assert (env.observation_space, env.action_space) == (s.observation_space, s.action_space)
        env.close()


@pytest.mark.parametrize("observation", [highway_mod.OBSERVATION, {"type": "Kinematics"}])
def test_fast_kinematics_equals_highway_env_observation(observation):
    from highway_env.envs.common.observation import KinematicObservation

    cfg = {**highway_mod.task_config(3, 10, 1.5, -1.0, 0.4, -0.1), "observation": dict(observation)}
    env = gym.make(highway_mod.ENV_ID, config=cfg)
    raw = env.unwrapped
    assert type(raw.observation_type).__name__ == "FastKinematicObservation"
    reference = KinematicObservation(raw, **cfg["observation"])
    obs, _ = env.reset(seed=3)
    rng = np.random.default_rng(0)
    for _ in range(60):
        np.testing.assert_array_equal(obs, reference.observe())
        obs, _, term, trunc, _ = env.step(int(rng.integers(5)))
        if term or trunc:
            obs, _ = env.reset()
    env.close()


def test_lane_change_reward_is_charged_on_lane_change_actions():
    c, hs, rl, lc = -1.5, 0.5, 0.1, -0.2
    env = gym.make(highway_mod.ENV_ID, config=highway_mod.task_config(3, 6, 1.0, c, hs, lc))
    env.reset(seed=0)
    raw = env.unwrapped
    assert raw._rewards(0)["lane_change_reward"] == 1.0 and raw._rewards(2)["lane_change_reward"] == 1.0
    assert raw._rewards(1)["lane_change_reward"] == 0.0 and raw._rewards(3)["lane_change_reward"] == 0.0
    # same state, the only difference is the lane-change term, normalized like the others
    assert raw._reward(0) - raw._reward(1) == pytest.approx(lc / (hs + rl - c))
    env.close()


def _episode(task: Task, seed: int, actions: list[int]):
    env = task.make()
    obs, _ = env.reset(seed=seed)
    out, rewards = [obs], []
    for a in actions:
        obs, r, term, trunc, _ = env.step(a)
        out.append(obs)
        rewards.append(r)
        if term or trunc:
            break
    env.close()
    return np.array(out), np.array(rewards)


def test_highway_reset_seed_makes_episodes_reproducible():
    task = load_suite("highway", 2, seed=0).tasks[0]
    actions = [int(a) for a in np.random.default_rng(1).integers(5, size=30)]
    a, b = _episode(task, 7, actions), _episode(task, 7, actions)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(_episode(task, 8, actions[:1])[0][0], a[0][0])


def test_async_vector_env_gives_the_same_rollout_as_sync():
    suite = load_suite("highway", 2, seed=0)
    rng = np.random.default_rng(0)
    actions = rng.integers(5, size=(12, 2))
    runs = []
    for asynchronous in (False, True):
        env = MultiTaskEnv(suite, 1, seed=3, asynchronous=asynchronous)
        obs = [env.reset()]
        for a in actions:
            obs.append(env.step(a)[0])
        env.close()
        runs.append(np.array(obs))
    np.testing.assert_array_equal(runs[0], runs[1])


# ---------------------------------------------------------------------------------------------
# Meta-World


def test_mt10_suite(mt10):
    assert mt10.names == ["reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3",
                          "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3"]
    assert mt10.observation_space == gym.spaces.Box(-np.inf, np.inf, (39,), np.float64)
    assert mt10.action_space == gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    assert mt10.success_key == "success"
    assert mt10.metadata["reward_function_version"] == "v2" and mt10.metadata["horizon"] == 500
    assert "v2" in mt10.description
    for task in mt10.tasks:
        goals = np.array(task.kwargs["goals"])
        assert goals.shape[0] == 50 and len(np.unique(goals, axis=0)) == 50
    # --tasks k runs the benchmark's own goal computation on its first k classes: same goals
    first3 = load_suite("metaworld-mt10", 3)
    assert [t.model_dump() for t in first3.tasks] == [t.model_dump() for t in mt10.tasks[:3]]
    # a checkpoint's suite dict rebuilds the same suite, success key included
    again = TaskSuite.from_dict(first3.to_dict())
    assert again.success_key == "success" and again.to_dict() == first3.to_dict()


def test_mt50_and_custom_lists():
    s = load_suite("metaworld-mt50", 1, seed=1)
    assert s.names == mw.MT50_NAMES[:1] and len(mw.MT50_NAMES) == 50 and set(mw.MT10_NAMES) < set(mw.MT50_NAMES)
    c = load_suite("metaworld:reach-v3,window-close-v3", seed=0, profile="paper")
    assert c.names == ["reach-v3", "window-close-v3"] and c.name == "metaworld:reach-v3,window-close-v3"
    assert c.ppo_preset["total_steps"] == 2 * mw.PROFILES["paper"]["steps_per_task"]
    assert all(len(t.kwargs["goals"]) == 50 for t in c.tasks)


def test_metaworld_env_reproduces_metaworld_and_shares_compiled_models(mt10):
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    task = mt10.tasks[1]  # push-v3
    envs = [task.make(), task.make()]  # the second copy uses the cached compiled model
    ref = ALL_V3_ENVIRONMENTS["push-v3"]()
    obs = [e.reset(seed=11)[0] for e in envs]
    ref.set_task(envs[0].unwrapped.tasks[envs[0].unwrapped.goal_index])
    ref_obs, _ = ref.reset()
    rng = np.random.default_rng(0)
    for _ in range(40):
        np.testing.assert_array_equal(obs[0], ref_obs)
        np.testing.assert_array_equal(obs[1], ref_obs)
        a = rng.uniform(-1, 1, 4).astype(np.float32)
        steps = [e.step(a) for e in envs]
        ref_obs, ref_r, *_ = ref.step(a)
        obs = [s[0] for s in steps]
        assert steps[0][1] == steps[1][1] == ref_r
    for e in envs:
        e.close()


def test_metaworld_goal_per_episode_is_seeded(mt10):
    env = mt10.tasks[0].make()

    def goals(seed):
        out = [env.reset(seed=seed)[1]["goal_index"]]
        out += [env.reset()[1]["goal_index"] for _ in range(9)]
        return out

    a = goals(5)
    assert a == goals(5) and a != goals(6) and len(set(a)) > 1
    env.close()


def scripted_reach():
    """Meta-World's scripted reach controller, as an actor's ``mode`` (input: observation ++ one-hot)."""
    from metaworld.policies import SawyerReachV3Policy

    policy = SawyerReachV3Policy()
    return lambda x: torch.as_tensor(np.stack([policy.get_action(o) for o in x[:, :39].numpy()]), dtype=torch.float32)


def test_success_rate_of_a_scripted_reach_matches_the_episodes(mt10):
    import warnings

    suite = TaskSuite("reach", [mw_task("reach-v3", mt10.tasks[0].kwargs["goals"], horizon=200)], success_key="success")
    model = ActorCritic(39 + 1, suite.action_space)
    model.actor.mode = scripted_reach()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the scripted policy warns that its gains exceed [-1, 1]
        ev = evaluate_policy(model, suite, episodes=2, seed=4)["reach-v3"]
        # by hand: the same episodes (the evaluator's seeds), success at any step
        env = suite.tasks[0].make()
        hand = []
        for copy in range(2):
            obs, _ = env.reset(seed=4 * 100_003 + copy)
            ok, first, done = False, None, False
            t = 0
            while not done:
                obs, r, term, trunc, info = env.step(np.clip(model.actor.mode(torch.as_tensor(obs[None], dtype=torch.float32)).numpy()[0], -1, 1))
                ok |= bool(info["success"])
                first = t if ok and first is None else first
                done, t = term or trunc, t + 1
            hand.append((ok, first))
    assert ev["successes"] == [h[0] for h in hand] == [True, True]
    assert ev["success_rate"] == 1.0 and all(f < 199 for _, f in hand)


class _Blink(gym.Env):
    """Ten steps; ``info["success"]`` is 1 only at step ``at`` (never, if None)."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, at=None):
        self.at, self.t = at, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.zeros(1, np.float32), 1.0, False, self.t >= 10, {"success": float(self.t == self.at)}


def test_success_counts_any_step_not_only_the_last():
    if "pgx-test/Blink-v0" not in gym.registry:
        gym.register("pgx-test/Blink-v0", entry_point=_Blink)
    tasks = [Task(name=n, env_id="pgx-test/Blink-v0", kwargs={"at": at}) for n, at in (("mid", 3), ("last", 10), ("never", None))]
    suite = TaskSuite("blink", tasks, success_key="success")
    ev = evaluate_policy(ActorCritic(1 + 3, suite.action_space), suite, episodes=3)
    assert {k: v["success_rate"] for k, v in ev.items()} == {"mid": 1.0, "last": 1.0, "never": 0.0}
    assert ev["mid"]["mean"] == 10.0
    # suites without a success key keep the old result shape
    plain = TaskSuite("blink", tasks)
    assert "success_rate" not in evaluate_policy(ActorCritic(1 + 3, plain.action_space), plain, episodes=1)["mid"]


# ---------------------------------------------------------------------------------------------
# profiles, device, PPO


def test_profiles_and_run_presets(tmp_path):
    from policygradex.cli import RunOptions, _run_config

    quick, paper = load_suite("highway", 3), load_suite("highway", 3, profile="paper")
    assert quick.ppo_preset["total_steps"] == 3 * highway_mod.PROFILES["quick"]["steps_per_task"]
    assert paper.ppo_preset["total_steps"] == 3 * highway_mod.PROFILES["paper"]["steps_per_task"]
    cfg = _run_config(quick, 0, RunOptions())
    assert cfg.estimate.transitions_per_task == 256 and cfg.group.null_permutations == 100
    cfg = _run_config(quick, 0, RunOptions(steps=96, replicates=1, transitions=128, null_permutations=7))
    assert (cfg.ppo.total_steps, cfg.estimate.transitions_per_task, cfg.group.null_permutations) == (96, 128, 7)
    with pytest.raises(UserError, match="quick, paper"):
        load_suite("highway", 2, profile="huge")
    with pytest.raises(UserError, match="no profiles"):
        load_suite("cartpole", 2, profile="quick")
    # suites without the new fields serialize as before (stage hashes and checkpoints unchanged)
    assert set(load_suite("cartpole", 2).to_dict()) == {"name", "tasks", "true_partition", "description", "ppo_preset"}


def test_device_is_automatic_and_auto_is_not_serialized():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA"):
            resolve_device("cuda")
    assert "device" not in PPOConfig().model_dump() and PPOConfig(device="cpu").model_dump()["device"] == "cpu"


@pytest.mark.trains
@pytest.mark.parametrize("spec,n", [("highway", 3), ("metaworld-mt10", 2)])
def test_ppo_trains_a_few_updates_on_each_suite(tmp_path, spec, n):
    suite = load_suite(spec, n, seeded(0))
    pre = suite.ppo_preset
    cfg = PPOConfig(**{**pre, "total_steps": 2 * n * pre["envs_per_task"] * 16, "num_steps": 16, "minibatch_size": 16,
                       "checkpoint_every": 1, "seed": seeded(pre.get("seed", 0))})
    torch.manual_seed(cfg.seed)
    before = build_model(suite, cfg).state_dict()
    res = train(suite, cfg, tmp_path)
    assert res.global_step == cfg.num_updates(n) * cfg.batch_size(n) and len(res.checkpoints) == cfg.num_updates(n)
    assert next(res.model.parameters()).device.type == "cpu"
    assert any(not torch.equal(before[k], v) for k, v in res.model.state_dict().items())
    ev = evaluate_policy(res.model, suite, episodes=1, tasks=[0], seed=seeded(12345))
    assert np.isfinite(ev[suite.names[0]]["mean"])
    assert ("success_rate" in ev[suite.names[0]]) == (suite.success_key is not None)


# ---------------------------------------------------------------------------------------------
# the CLI (in this process, to share imports and the Meta-World goals; the error format of a
# fresh process is checked once with a subprocess)


def cli_main(capsys, *args: str) -> tuple[int, str, str]:
    from policygradex.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(list(args))
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


@pytest.mark.trains
@pytest.mark.parametrize("suite", ["highway", "metaworld-mt10"])
def test_cli_run_writes_groups_json(tmp_path, capsys, suite):
    out = tmp_path / "run"
    seeds = ["--seed", str(seeded(0)), "--suite-seed", str(seeded(0))]
    code, _, err = cli_main(capsys, "run", "--suite", suite, "--tasks", "3", *seeds, "--replicates", "1", "--steps", "96", "--transitions", "64",
                            "--null-permutations", "10", "--out", str(out))
    assert code == 0, err
    g = json.loads((out / "groups.json").read_text())
    names = load_suite(suite, 3, seeded(0)).names if suite == "highway" else mw.MT10_NAMES[:3]
    assert g["tasks"] == names
    assert sorted(t for grp in g["groups"] for t in grp) == sorted(names)
    assert g["k"] == len(g["groups"]) and 0.0 <= g["null_p"] <= 1.0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["suite"]["profile"] == "quick" and cfg["config"]["estimate"]["probe_transitions"] > 0
    if suite == "metaworld-mt10":  # success rates of a run's checkpoint, from the CLI
        ckpt = sorted((out / "train" / "checkpoints").glob("step_*.pt"))[-1]
        code, stdout, err = cli_main(capsys, "evaluate", str(ckpt), "--episodes", "1", "--json")
        assert code == 0, err
        assert set(json.loads(stdout)["reach-v3"]) == {"mean", "std", "success_rate"}

    # validate and compare work on the suite, on the same run (its options repeated)
    same = ["--suite", suite, "--tasks", "3", *seeds, "--replicates", "1", "--steps", "96", "--transitions", "64", "--null-permutations", "10"]
    code, _, err = cli_main(capsys, "validate", *same, "--finetune-steps", "32", "--finetune-seeds", "1", "--episodes", "1",
                            "--probes", "2", "--hessian-subsets", "0", "--random-draws", "5", "--out", str(out))
    assert code == 0, err
    v = json.loads((out / "validation.json").read_text())
    assert set(v["approx_error"]) == {"0.1%", "0.5%", "1%", "5%"} and 0.0 <= v["surrogate_truth"]["nmi"] <= 1.0
    code, _, err = cli_main(capsys, "compare", *same, "--methods", "multitask,random", "--seeds", "1", "--steps-per-task", "32",
                            "--episodes", "1", "--run-dir", str(out), "--out", str(tmp_path / "cmp"))
    assert code == 0, err
    c = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert c["budget"]["equal_across_methods"] and set(c["methods"]) == {"multitask", "random"}
    if suite == "metaworld-mt10":
        assert 0.0 <= c["methods"]["multitask"]["success_rate"]["mean"] <= 1.0


def test_bad_metaworld_task_name_is_a_one_line_user_error(tmp_path):
    proc = run_cli("train", "--suite", "metaworld:reach-v3,nope-v3", "--steps", "64", "--out", str(tmp_path / "o"))
    assert_user_error(proc, "nope-v3", "allowed", "reach-v3", "window-close-v3")


@pytest.mark.parametrize("args,needles", [
    (["--suite", "metaworld:"], ["metaworld:reach-v3,push-v3"]),
    (["--suite", "metaworld:reach-v3,reach-v3"], ["twice", "reach-v3"]),
    (["--suite", "metaworld-mt10", "--tasks", "11"], ["--tasks 11", "10 tasks"]),
    (["--suite", "highway", "--profile", "fast"], ["--profile", "quick, paper"]),
    (["--suite", "cartpole", "--profile", "quick"], ["--profile", "no profiles", "highway"]),
])
def test_bad_suite_options_are_user_errors(tmp_path, capsys, args, needles):
    code, _, err = cli_main(capsys, "train", *args, "--steps", "64", "--out", str(tmp_path / "o"))
    lines = [l for l in err.splitlines() if l.strip()]
    assert code == 2 and len(lines) == 1, err
    for n in needles:
        assert n in lines[0], (n, lines[0])
