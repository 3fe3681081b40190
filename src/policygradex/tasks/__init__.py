"""Tasks and task suites: a registry of built-in families, TOML files, and Python."""

from .base import Task, TaskSuite
from .builtin import SUITES, single_task
from .loader import load_suite

__all__ = ["Task", "TaskSuite", "SUITES", "single_task", "load_suite"]
