import pytest

from policygradex.errors import UserError
from policygradex.tasks import Task, TaskSuite, load_suite


def test_builtin_suites_build_with_shared_spaces():
    for name, n in (("cartpole", 10), ("cartpole-planted", 8), ("lunarlander", 10)):
        s = load_suite(name)
        assert s.n == n and len(set(s.names)) == n


def test_suites_are_seeded():
    assert load_suite("cartpole", 4, seed=1).to_dict() == load_suite("cartpole", 4, seed=1).to_dict()
    assert load_suite("cartpole", 4, seed=1).to_dict() != load_suite("cartpole", 4, seed=2).to_dict()


def test_planted_partition_is_by_force_sign():
    s = load_suite("cartpole-planted", 10, seed=3)
    assert sorted(len(g) for g in s.true_partition) == [5, 5]
    force = {t.name: t.overrides["force_mag"] for t in s.tasks}
    signs = [{force[name] > 0 for name in group} for group in s.true_partition]
    assert sorted(map(tuple, signs)) == [(False,), (True,)]
    labels = s.true_labels()
    assert [labels[s.names.index(n)] for n in s.true_partition[1]] == [1] * 5


def test_overrides_recompute_derived_quantities():
    env = Task(name="t", env_id="CartPole-v1", overrides={"length": 0.25, "masspole": 0.3}).make()
    raw = env.unwrapped
    assert raw.length == 0.25 and raw.polemass_length == pytest.approx(0.075)
    assert raw.total_mass == pytest.approx(1.3)


def test_mismatched_spaces_name_the_task_and_both_spaces():
    with pytest.raises(UserError) as e:
        TaskSuite("mix", [Task(name="cp", env_id="CartPole-v1"), Task(name="acro", env_id="Acrobot-v1")])
    msg = str(e.value)
    assert "'acro'" in msg and "'cp'" in msg and "Box" in msg


@pytest.mark.parametrize("task,needle", [
    (dict(name="x", env_id="NoSuchEnv-v0"), "NoSuchEnv-v0"),
    (dict(name="x", env_id="CartPole-v1", overrides={"no_attr": 1.0}), "no_attr"),
    (dict(name="x", env_id="CartPole-v1", overrides={"length": True}), "length"),
    (dict(name="x", env_id="LunarLander-v3", kwargs={"bogus": 1}), "bogus"),
])
def test_bad_tasks_raise_user_errors(task, needle):
    with pytest.raises(UserError, match=needle):
        Task(**task).make()


def test_single_task_suite():
    s = load_suite("env:CartPole-v1")
    assert s.n == 1 and s.ppo_preset["envs_per_task"] == 8
