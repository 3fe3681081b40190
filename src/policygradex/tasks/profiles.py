"""Named profiles (budgets and defaults) of the built-in suites that have them (highway,
Meta-World): a profile's table turned into the PPO preset and the run defaults for n tasks."""

from __future__ import annotations

from ..errors import UserError


def profile_settings(profiles: dict[str, dict], profile: str, n: int, suite: str) -> tuple[dict, dict]:
    """(PPO preset, run preset) of a suite's ``profile`` for n tasks.

    ``profiles[name]`` holds ``steps_per_task`` (``total_steps`` = steps_per_task x n), ``ppo``
    (PPOConfig fields) and optional ``estimate`` / ``group`` tables (defaults of ``run``).
    """
    if profile not in profiles:
        raise UserError(f"--profile {profile!r}: suite {suite!r} has profiles {', '.join(profiles)}")
    p = profiles[profile]
    ppo = dict(p["ppo"], total_steps=p["steps_per_task"] * n)
    run = {k: dict(p[k]) for k in ("estimate", "group") if p.get(k)}
    return ppo, run
