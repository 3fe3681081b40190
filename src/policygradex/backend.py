"""Execution backends for the independent units of work: in-process, a process pool, or Ray.

A *unit* is a piece of work whose result depends only on its own inputs (e.g. the real PPO
fine-tuning of one subset with one seed in ``validate``).  A backend runs a function over many
units and yields ``(unit, result)`` as the units finish, in completion order, so the caller can
store every finished unit at once (atomically) and a killed run resumes from them.  The units
of the project: ``validate``'s fine-tuning per (subset, seed), ``run``'s features per task, the
null test's SDP solves (chunks of permutations, ``group/null.py``) and ``compare``'s training
and evaluation per (method, seed) (``compare/runner.py``)::

    from policygradex.backend import Resources, Unit, make_backend

    units = [Unit(key=f"s{s}", payload=s, tasks=("cartpole-00", "cartpole-03")) for s in range(8)]
    with make_backend("ray") as be:                 # or "local" (serial), make_backend("local", workers=4)
        for unit, result in be.map(work, units, shared=big_inputs, setup=prepare, resources=Resources(cpus=1)):
            save(unit.key, result)

    def prepare(shared):            # once per worker process, not once per unit
        return build_model(shared)
    def work(ctx, payload):         # ctx = prepare(shared) (or shared itself without setup)
        return ...

``work`` and ``prepare`` must be module-level functions (they are sent to other processes by
reference).  ``shared`` is sent once: Ray puts it in its object store once (``ray.put``) and
every worker process fetches and prepares it once; a process pool hands it to each worker
process once, at start-up.  Units never carry it.

Results never depend on the backend: a unit must seed itself from its own payload (never from
global state or execution order) and set its own torch thread count; the backends also start
every worker with ``torch.set_num_threads(resources.cpus)`` (1 by default).

Failures.  A unit that raises, or whose worker process dies, is retried up to ``retries``
times (default 2, so 3 attempts); a unit that still fails raises :class:`UnitFailed` naming
the unit and the tasks it concerned (a :class:`UserError` when the last cause was one, e.g. an
environment that raises, so the CLI prints one line and exits 2).  Units already yielded are
the caller's to keep; interrupting (Ctrl-C) cancels the units still running.

Backends:

* ``local`` (default): ``workers = 1`` runs the units in this process, one after the other;
  ``workers = N > 1`` a pool of N worker processes (``forkserver`` on Linux, ``spawn``
  elsewhere), e.g. ``N = os.cpu_count()``.
* ``ray``: every unit is a Ray task with the declared ``num_cpus`` / ``num_gpus`` and
  ``max_retries = retries`` (application errors included).  Without an address a local Ray
  instance is started (all cores, no dashboard) and shut down at :meth:`Backend.close`; with
  ``address`` (``auto``, ``HOST:6379`` of a ``ray start --head`` cluster, or
  ``ray://HOST:10001``) the existing cluster is used.  A local instance runs its workers at
  normal priority (``RAY_worker_niceness=0`` unless set; Ray's own default is nice 15).  An already initialized Ray (``ray.init``
  called by the caller) is used as it is.  Needs ``pip install "policygradex[ray]"``.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import traceback
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from .errors import UserError
from .ui import quiet_gymnasium

__all__ = ["Resources", "Unit", "UnitFailed", "Backend", "LocalBackend", "RayBackend", "BACKENDS", "make_backend"]

#: Backend names accepted by :func:`make_backend` and the CLI's ``--backend``.
BACKENDS = ("local", "ray")

RAY_INSTALL_HINT = 'pip install "policygradex[ray]"  (or: pip install "ray[client]>=2.9")'


@dataclass(frozen=True)
class Resources:
    """What one unit needs: CPU cores (also its torch thread count) and GPUs (fractions allowed on Ray)."""

    cpus: float = 1.0
    gpus: float = 0.0

    def __post_init__(self):
        if not self.cpus > 0 or self.gpus < 0:
            raise ValueError(f"Resources need cpus > 0 and gpus >= 0, got cpus={self.cpus}, gpus={self.gpus}")

    @property
    def threads(self) -> int:
        return max(1, int(self.cpus))


@dataclass(frozen=True)
class Unit:
    """One independent piece of work.

    ``key``: a stable identifier (unique within a :meth:`Backend.map` call; callers use it to
    cache the result); ``payload``: the unit's own (small, picklable) inputs, passed to the
    function; ``tasks``: the task names it concerns (named when it fails); ``label``: a short
    human description (``"subset 3 seed 1"``); ``cost``: its size in the caller's progress unit.
    """

    key: str
    payload: Any = None
    tasks: tuple[str, ...] = ()
    label: str = ""
    cost: float = 1.0

    def describe(self) -> str:
        what = self.label or self.key
        return f"{what} (tasks: {', '.join(self.tasks)})" if self.tasks else what


class UnitFailed(RuntimeError):
    """A unit still failed after its retries.  ``unit``, ``attempts`` and ``cause`` (the last
    error's text, with its traceback where known) say which, how often and why."""

    def __init__(self, unit: Unit, attempts: int, cause: str, backend: str):
        self.unit, self.attempts, self.cause, self.backend = unit, attempts, cause, backend
        last = cause.strip().splitlines()[-1] if cause.strip() else "unknown error"
        super().__init__(f"{unit.describe()} failed {attempts} time{'s' if attempts != 1 else ''} "
                         f"on the {backend} backend: {last}")

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.unit.tasks


class UnitUserError(UnitFailed, UserError):
    """:class:`UnitFailed` whose cause is a user error (e.g. an environment that raises)."""

    def __init__(self, unit: Unit, attempts: int, cause: str, backend: str):
        UnitFailed.__init__(self, unit, attempts, cause, backend)
        self.args = (" ".join(str(self).split()),)


def _failed(unit: Unit, attempts: int, exc: BaseException | None, text: str, backend: str) -> UnitFailed:
    cls = UnitUserError if isinstance(exc, UserError) else UnitFailed
    err = cls(unit, attempts, text, backend)
    if exc is not None:
        err.__cause__ = exc
    return err


def _format(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def _check_units(units: Iterable[Unit], seen: set | None = None) -> list[Unit]:
    """``units`` as a list, after checking that no key repeats (nor one of ``seen``, the keys of
    the same map call so far, which it then adds)."""
    units = list(units)
    keys = [u.key for u in units] + list(seen or ())
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"unit keys must be unique within one map call; repeated: {dup[:5]}")
    if seen is not None:
        seen.update(u.key for u in units)
    return units


def _follow(then, unit: Unit, result: Any, seen: set) -> list[Unit]:
    """The units that ``then`` adds once ``unit`` finished with ``result`` (none without ``then``)."""
    return [] if then is None else _check_units(then(unit, result) or (), seen)


class Backend(ABC):
    """Runs a function over independent units; see the module docstring."""

    name: str = "?"

    def __init__(self, retries: int = 2):
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise UserError(f"retries must be an integer >= 0, got {retries!r}")
        self.retries = retries

    @abstractmethod
    def map(self, fn: Callable[[Any, Any], Any], units: Iterable[Unit], *, shared: Any = None,
            setup: Callable[[Any], Any] | None = None, resources: Resources = Resources(),
            then: Callable[[Unit, Any], Iterable[Unit]] | None = None) -> Iterator[tuple[Unit, Any]]:
        """Yield ``(unit, fn(ctx, unit.payload))`` for every unit as it finishes, with
        ``ctx = setup(shared)`` computed once per worker process (``shared`` when no setup).
        ``then(unit, result)``, called in this process as each unit finishes, returns the units
        that may start now that it is done (e.g. a replicate's estimates once its training
        finished); they join the same map, run with the same ``fn``, and are yielded as well.
        Raises :class:`UnitFailed` for a unit that failed ``retries + 1`` times (units still
        running are cancelled)."""

    @property
    def parallelism(self) -> int:
        """How many units run at once (at most)."""
        return 1

    def describe(self) -> dict:
        return {"backend": self.name, "parallelism": self.parallelism, "retries": self.retries}

    def close(self) -> None:
        """Release workers (and a Ray instance this backend started)."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ============================================================================ local


_CTX: dict[str, Any] = {}


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(int(threads))


def _pool_init(setup, shared, threads: int) -> None:
    quiet_gymnasium()  # as the CLI does in the main process
    _set_threads(threads)
    _CTX["ctx"] = setup(shared) if setup is not None else shared


def _pool_call(fn, payload):
    return fn(_CTX["ctx"], payload)


class LocalBackend(Backend):
    """``workers = 1``: in this process, one unit after the other (the default).
    ``workers = N``: a pool of N worker processes (see :func:`_mp_context`)."""

    name = "local"

    def __init__(self, workers: int = 1, retries: int = 2):
        super().__init__(retries)
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise UserError(f"--workers must be an integer >= 1, got {workers!r}")
        self.workers = workers

    @property
    def parallelism(self) -> int:
        return self.workers

    def describe(self) -> dict:
        return {**super().describe(), "workers": self.workers}

    def map(self, fn, units, *, shared=None, setup=None, resources=Resources(), then=None):
        seen: set = set()
        units = _check_units(units, seen)
        if not units:
            return
        if self.workers == 1:
            yield from self._serial(fn, units, shared, setup, then, seen)
        else:
            yield from self._pool(fn, units, shared, setup, resources, then, seen)

    def _serial(self, fn, units, shared, setup, then, seen):
        ctx = setup(shared) if setup is not None else shared
        queue = list(units)
        while queue:
            unit = queue.pop(0)
            for attempt in range(1, self.retries + 2):
                try:
                    result = fn(ctx, unit.payload)
                    break
                except Exception as exc:  # noqa: BLE001 - retried, then reported with the unit's tasks
                    if attempt > self.retries or not getattr(exc, "transient", True):  # a rerun would fail the same way
                        raise _failed(unit, attempt, exc, _format(exc), self.name) from exc
            queue.extend(_follow(then, unit, result, seen))
            yield unit, result

    def _pool(self, fn, units, shared, setup, resources, then, seen):
        attempts = {u.key: 0 for u in units}
        todo = list(units)
        ctx = _mp_context()
        while todo:
            # with ``then`` more units may follow: every worker, not one per unit in hand
            workers = self.workers if then is not None else min(self.workers, len(todo))
            pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                                          initializer=_pool_init, initargs=(setup, shared, resources.threads))
            broken = False
            try:
                futures = {}
                for u in todo:
                    attempts[u.key] += 1
                    futures[pool.submit(_pool_call, fn, u.payload)] = u
                todo = []
                pending = set(futures)
                while pending:
                    done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                    for fut in done:
                        unit = futures[fut]
                        try:
                            result = fut.result()
                        except cf.process.BrokenProcessPool as exc:
                            # a worker died (killed, out of memory): every unit in flight is lost
                            broken = True
                            self._retry_or_raise(unit, attempts, exc, "a worker process died (killed or crashed)", todo)
                            continue
                        except Exception as exc:  # noqa: BLE001
                            self._retry_or_raise(unit, attempts, exc, _format(exc), todo)
                            continue
                        for u in _follow(then, unit, result, seen):  # start at once, before the caller's turn
                            attempts[u.key] = 0
                            if broken:
                                todo.append(u)  # to the next pool, with the units lost here
                                continue
                            attempts[u.key] = 1
                            f = pool.submit(_pool_call, fn, u.payload)
                            futures[f] = u
                            pending.add(f)
                        yield unit, result
                    if broken:
                        for fut in pending:
                            self._retry_or_raise(futures[fut], attempts, None, "a worker process died (killed or crashed)", todo)
                        pending = set()
                    elif todo:  # resubmit failed units to the live pool
                        for u in todo:
                            attempts[u.key] += 1
                            f = pool.submit(_pool_call, fn, u.payload)
                            futures[f] = u
                            pending.add(f)
                        todo = []
            except BaseException:
                _terminate(pool)
                raise
            if broken:
                _terminate(pool)
            else:
                pool.shutdown(wait=True)

    def _retry_or_raise(self, unit: Unit, attempts: dict, exc: BaseException | None, text: str, todo: list) -> None:
        if attempts[unit.key] > self.retries or not getattr(exc, "transient", True):  # a rerun would fail the same way
            raise _failed(unit, attempts[unit.key], exc, text, self.name)
        todo.append(unit)


def _mp_context():
    """``forkserver`` where available (workers fork from a clean server process that has torch
    imported already: fast to start, safe with threads), ``spawn`` elsewhere.  Either way a
    script that uses a pool must guard its entry point with ``if __name__ == "__main__":``."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["__main__", "torch", "policygradex.backend"])
        return ctx
    return mp.get_context("spawn")


def _terminate(pool: cf.ProcessPoolExecutor) -> None:
    """Stop a pool now: cancel queued units and end its worker processes (interrupt, failure)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        try:
            if p.is_alive():
                p.terminate()
            p.join(timeout=5)
        except Exception:  # noqa: BLE001 - best effort
            pass


# ============================================================================ Ray


_RAY_CTX: dict[str, Any] = {}


def _ray_call(fn, setup, box, threads, payload):
    """Runs inside a Ray worker: prepare the shared input once per worker process, then the unit."""
    key = None if box is None else box[0].hex()
    if key not in _RAY_CTX:
        import ray

        quiet_gymnasium()
        _set_threads(threads)
        value = None if box is None else ray.get(box[0])
        _RAY_CTX.clear()  # keep one shared input per worker process
        _RAY_CTX[key] = setup(value) if setup is not None else value
    try:
        return fn(_RAY_CTX[key], payload)
    except Exception as exc:  # noqa: BLE001 - an error a rerun would repeat goes back as a value: Ray must not retry it
        if getattr(exc, "transient", True):
            raise
        return _Final(exc, _format(exc))


@dataclass(frozen=True)
class _Final:
    """A unit's non-transient error (``transient = False``), returned by a Ray worker instead of
    raised so that Ray's exception retries do not run it again; the driver raises it."""

    exc: BaseException
    text: str


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError(f"--backend ray needs Ray, which is not installed; install it with: {RAY_INSTALL_HINT}") from None
    return ray


class RayBackend(Backend):
    """Units as Ray tasks; see the module docstring."""

    name = "ray"

    def __init__(self, address: str | None = None, retries: int = 2, num_cpus: int | None = None):
        super().__init__(retries)
        ray = import_ray()
        self._ray = ray
        self._started = False
        self.address = address
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      "configure_logging": True, "logging_level": "warning"}
            if address:
                kwargs = {"address": address, "log_to_driver": False, "logging_level": "warning"}
            else:
                if num_cpus is not None:
                    kwargs["num_cpus"] = int(num_cpus)
                # Ray starts its workers at nice 15; a local instance standing in for the process
                # pool runs them at normal priority, as the pool does (RAY_worker_niceness wins)
                os.environ.setdefault("RAY_worker_niceness", "0")
            if address:
                _probe(address)
            try:
                ray.init(**kwargs)
            except ConnectionError as exc:
                raise UserError(f"--ray-address {address}: cannot connect to a Ray cluster there ({_first_line(exc)}); "
                                "start one with `ray start --head` or omit --ray-address for a local instance") from None
            except (ValueError, RuntimeError) as exc:
                where = f"--ray-address {address}" if address else "--backend ray"
                hint = ' (ray:// addresses need: pip install "ray[client]")' if address and address.startswith("ray://") else ""
                raise UserError(f"{where}: Ray could not start or connect ({_first_line(exc)}){hint}") from None
            self._started = True
        self._remote = ray.remote(_ray_call)

    @property
    def parallelism(self) -> int:
        try:
            return max(1, int(self._ray.cluster_resources().get("CPU", 1)))
        except Exception:  # noqa: BLE001
            return 1

    def describe(self) -> dict:
        return {**super().describe(), "address": self.address or "local instance"}

    def map(self, fn, units, *, shared=None, setup=None, resources=Resources(), then=None):
        ray = self._ray
        seen: set = set()
        units = _check_units(units, seen)
        if not units:
            return
        box = None if shared is None else [ray.put(shared)]  # once, in the object store; never per unit
        task = self._remote.options(num_cpus=resources.cpus, num_gpus=resources.gpus, max_retries=self.retries,
                                    retry_exceptions=True)
        refs = {task.remote(fn, setup, box, resources.threads, u.payload): u for u in units}
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    unit = refs[ref]
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayTaskError as exc:
                        cause = getattr(exc, "cause", None)
                        raise _failed(unit, self.retries + 1, cause if isinstance(cause, BaseException) else None,
                                      str(exc), self.name) from None
                    except ray.exceptions.RayError as exc:  # worker died, node lost, object lost
                        raise _failed(unit, self.retries + 1, None, f"{type(exc).__name__}: {_first_line(exc)}",
                                      self.name) from None
                    if isinstance(result, _Final):
                        raise _failed(unit, 1, result.exc, result.text, self.name) from None
                    for u in _follow(then, unit, result, seen):
                        ref = task.remote(fn, setup, box, resources.threads, u.payload)
                        refs[ref] = u
                        pending.append(ref)
                    yield unit, result
        finally:
            for ref in pending:  # interrupted or failed: stop what is still queued or running
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - best effort
                    pass

    def close(self) -> None:
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
        self._started = False


def _probe(address: str, timeout: float = 5.0) -> None:
    """Fail fast on a ``HOST:PORT`` or ``ray://HOST:PORT`` address nobody listens on (Ray itself
    keeps retrying for minutes); ``auto`` is left to Ray."""
    import socket

    rest = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        if address != "auto":
            raise UserError(f"--ray-address {address!r}: expected auto, HOST:PORT or ray://HOST:PORT")
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise UserError(f"--ray-address {address}: cannot connect to a Ray cluster there ({exc.strerror or type(exc).__name__}); "
                        "start one with `ray start --head` or omit --ray-address for a local instance") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ============================================================================ factory


def make_backend(name: str = "local", *, workers: int | None = None, address: str | None = None,
                 retries: int = 2) -> Backend:
    """The backend called ``name`` (``local`` or ``ray``); user mistakes raise :class:`UserError`."""
    if name not in BACKENDS:
        raise UserError(f"--backend {name!r}: unknown backend; allowed: {', '.join(BACKENDS)}")
    if name == "local":
        if address:
            raise UserError("--ray-address needs --backend ray")
        return LocalBackend(1 if workers is None else workers, retries)
    if workers is not None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise UserError(f"--workers must be an integer >= 1, got {workers!r}")
        if address:
            raise UserError("--workers sets the size of a local Ray instance; it cannot be combined with --ray-address")
    return RayBackend(address=address, retries=retries, num_cpus=workers)
