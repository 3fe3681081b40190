"""One runner for every cached stage of a run directory.

A stage is a :class:`StageDef`: a name, the stages whose artifacts it reads (``after``), a
``compute`` function that writes its artifacts and returns their paths, and a ``load`` function
that reads them back as the stage's typed output.  :class:`Runner` keys each stage by

- the digests of the upstream stages it names (each digest hashes that stage's key and the
  checksums of its files, so a change anywhere upstream reaches every stage below it), and
- exactly the keyed fields of its config (:meth:`policygradex.config.StageConfig.cache_key`:
  derived from the config model, never listed by hand),

and computes the stage only when its manifest does not match that key; it records the files'
checksums and the wall time in the manifest (``<name>.manifest.json``).  A killed run therefore
resumes where it stopped, and a changed option recomputes its stage and those downstream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generic, TypeVar

from . import artifacts as art
from .config import StageConfig

__all__ = ["STAGES", "StageDef", "Runner", "stage_seconds"]

#: The stages of ``policygradex run``, in order (each one's manifest is ``<name>.manifest.json``).
STAGES = ("train", "collect", "features", "subsets", "surrogate", "evaluate", "group")

T = TypeVar("T")


@dataclass(frozen=True)
class StageDef(Generic[T]):
    """A cached stage: ``compute(run_dir, cfg, **inputs) -> [written paths relative to run_dir]``
    and ``load(run_dir) -> T``.

    ``after`` names the upstream stages whose digests enter the key (``"suite"`` stands for the
    task suite's description).  ``version`` is bumped when the artifact's format changes, so that
    run directories of an older format recompute the stage once."""

    name: str
    after: tuple[str, ...]
    compute: Callable[..., list[str]]
    load: Callable[[Path], T]
    version: int = 1


@dataclass
class Runner:
    """Runs :class:`StageDef` s in ``run_dir``, each only when its key changed.

    ``suite_digest`` is the digest of the task suite (the ``"suite"`` upstream of the stages that
    depend on the tasks themselves).  ``computed`` lists the stages computed (not reused) by this
    runner, in order."""

    run_dir: Path
    suite_digest: str
    digests: dict[str, str] = field(default_factory=dict)
    computed: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        self.digests.setdefault("suite", self.suite_digest)

    def key(self, stage: StageDef, cfg: StageConfig | None) -> str:
        """The cache key of ``stage`` with ``cfg`` under the current upstream digests."""
        return stage_key(stage, cfg, {name: self.digests[name] for name in stage.after})

    def reuse(self, name: str, digests: dict[str, str], output: T) -> T:
        """Take stage ``name``'s output from another runner (``digests``: that runner's) instead of
        computing it here: its digest becomes the upstream digest of this runner's stages."""
        self.digests[name] = digests[name]
        return output

    def __call__(self, stage: StageDef[T], cfg: StageConfig | None, **inputs: Any) -> T:
        """``stage``'s output: computed with ``cfg`` and ``inputs`` if its artifacts are missing
        or stale, then loaded from the run directory."""
        st = art.Stage(self.run_dir, stage.name, self.key(stage, cfg))
        if not st.current:
            files = stage.compute(self.run_dir, cfg, **inputs)
            st.done(sorted(files))
            self.computed.append(stage.name)
        self.digests[stage.name] = st.digest
        return stage.load(self.run_dir)


def stage_key(stage: StageDef, cfg: StageConfig | None, upstream: dict[str, str]) -> str:
    """Hash of a stage's name and format version, its upstream digests and its config's keyed fields."""
    return art.config_hash({"stage": stage.name, "version": stage.version, "after": upstream,
                            "config": cfg.cache_key() if cfg is not None else None})


def stage_seconds(run_dir: str | Path) -> dict[str, float]:
    """Wall time of every finished stage of a run, from the manifests."""
    out = {}
    for name in STAGES:
        m = art.read_manifest(run_dir, name)
        if m is not None:
            out[name] = float(m.get("extra", {}).get("seconds", float("nan")))
    return out
