"""policygradex: which RL tasks to train together (PolicyGradEx, AAAI 2026).

Python API (the CLI calls the same functions)::

    from policygradex import load_suite, RunConfig, run
    suite = load_suite("cartpole-planted")
    result = run(suite, RunConfig(), "runs/planted")
    result.groups["groups"]
"""

__version__ = "0.1.0"

_API = {
    "load_suite": ("policygradex.tasks", "load_suite"),
    "Task": ("policygradex.tasks", "Task"),
    "TaskSuite": ("policygradex.tasks", "TaskSuite"),
    "RunConfig": ("policygradex.config", "RunConfig"),
    "PPOConfig": ("policygradex.config", "PPOConfig"),
    "EstimateConfig": ("policygradex.config", "EstimateConfig"),
    "GroupConfig": ("policygradex.config", "GroupConfig"),
    "ValidateConfig": ("policygradex.config", "ValidateConfig"),
    "run": ("policygradex.pipeline", "run"),
    "train_meta_policy": ("policygradex.stages", "train_meta_policy"),
    "groups_of": ("policygradex.export", "groups_of"),
    "export_suites": ("policygradex.export", "export_suites"),
    "ImportedConfig": ("policygradex.config", "ImportedConfig"),
    "OneHotTaskEnv": ("policygradex.rl.imported_env", "OneHotTaskEnv"),
}
__all__ = list(_API)


def __getattr__(name: str):
    if name in _API:
        import importlib

        mod, attr = _API[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'policygradex' has no attribute {name!r}")
