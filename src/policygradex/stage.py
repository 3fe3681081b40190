"""The stages of a run, by name, and what their manifests record about them."""

from __future__ import annotations

from pathlib import Path

from . import artifacts as art

__all__ = ["STAGES", "stage_seconds"]

#: The stages of ``policygradex run``, in order (each one's manifest is ``<name>.manifest.json``).
STAGES = ("train", "collect", "features", "subsets", "surrogate", "evaluate", "group")


def stage_seconds(run_dir: str | Path) -> dict[str, float]:
    """Wall time of every finished stage of a run, from the manifests."""
    out = {}
    for name in STAGES:
        m = art.read_manifest(run_dir, name)
        if m is not None:
            out[name] = float(m.get("extra", {}).get("seconds", float("nan")))
    return out
