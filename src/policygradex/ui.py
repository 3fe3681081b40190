"""Progress display: one rich progress bar per long step (steps/s, ETA), on stderr."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

from rich.console import Console
from rich.table import Table
from rich.text import Text
from rich.progress import BarColumn, ProgressColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


class Bar:
    def __init__(self, progress: Progress | None, task_id, unit: str):
        self._p, self._id, self.unit = progress, task_id, unit

    def advance(self, n: float = 1, info: str | None = None) -> None:
        if self._p is not None:
            kw = {"info": info} if info is not None else {}
            self._p.update(self._id, advance=n, **kw)


@contextlib.contextmanager
def progress_bar(total: float, description: str, unit: str = "steps") -> Iterator[Bar]:
    """A progress bar with rate and ETA; silent when POLICYGRADEX_QUIET is set."""
    if os.environ.get("POLICYGRADEX_QUIET"):
        yield Bar(None, None, unit)
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
               _RateColumn(unit), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
               TextColumn("{task.fields[info]}")]
    with Progress(*columns, console=console, transient=False, disable=not sys.stderr.isatty() and not os.environ.get("POLICYGRADEX_FORCE_PROGRESS")) as p:
        tid = p.add_task(description, total=total, info="")
        yield Bar(p, tid, unit)


class _RateColumn(ProgressColumn):
    """Items per second in the bar's own unit (rich's TransferSpeedColumn speaks bytes)."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} {self.unit}/s" if speed else f"- {self.unit}/s", style="cyan")


def quiet_gymnasium() -> None:
    """Silence gymnasium's warnings (several lines each: its passive env checker, Box bound
    precision, async worker errors) in this process: ``rl.rollout.TaskEnv`` checks the same things
    and names the task and the call.  gymnasium installs a warning filter of its own when imported,
    so it is imported first.  The CLI calls this at start, and every worker process of a backend."""
    import warnings

    import gymnasium.logger  # noqa: F401

    warnings.filterwarnings("ignore", module=r"gymnasium(\.|$)")


def returns_table(title: str, rows: dict[str, dict]) -> Table:
    """Per-task mean ± std return (and success rate, discounted vector return where every row has them)."""
    t = Table(title=title)
    t.add_column("task")
    t.add_column("mean return", justify="right")
    t.add_column("± std", justify="right")
    success = all("success_rate" in r for r in rows.values())  # suites with a success_key (Meta-World)
    if success:
        t.add_column("success", justify="right")
    vector = all("discounted_vector_mean" in r for r in rows.values())  # MO-Gymnasium preference suites
    if vector:
        t.add_column(f"discounted vector return (gamma {next(iter(rows.values()))['vector_gamma']})")
    for name, r in rows.items():
        t.add_row(name, f"{r['mean']:.1f}", f"{r['std']:.1f}", *([f"{r['success_rate']:.0%}"] if success else []),
                  *(["(" + ", ".join(f"{x:.2f}" for x in r["discounted_vector_mean"]) + ")"] if vector else []))
    return t
