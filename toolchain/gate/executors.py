"""Where the gate's per-model work runs: this process, a local process pool, or a Ray cluster.

Every executor takes the same function and task dicts and yields ``(index, result)`` as results
arrive. A task that raises or whose worker dies yields an error result; the others go on.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Protocol

from toolchain.core.errors import GateError, first_line

__all__ = ["EXECUTORS", "Executor", "InlineExecutor", "LocalExecutor", "RayExecutor", "make_executor"]

Work = Callable[[dict[str, Any]], dict[str, Any]]
EXECUTORS = ("local", "ray")


class Executor(Protocol):
    """Runs `fn` on every task and yields ``(index, result)`` in completion order."""

    @property
    def slots(self) -> int:
        """How many tasks run at once."""
        ...

    @property
    def threads(self) -> int:
        """Torch intra-op threads for each task (0: leave torch's default)."""
        ...

    def run(self, fn: Work, tasks: Sequence[dict[str, Any]]) -> Iterator[tuple[int, dict[str, Any]]]:
        """Yield each task's index and result as it finishes."""
        ...


def _crashed(error: BaseException) -> dict[str, Any]:
    return {"status": "error", "failed_stage": "error", "detail": f"the worker failed: {first_line(error)}"}


@dataclass(frozen=True)
class InlineExecutor:
    """One task after another in this process (``--jobs 0``): for debugging and the pytest plugin."""

    @property
    def slots(self) -> int:
        """One task at a time."""
        return 1

    @property
    def threads(self) -> int:
        """This process's own setting is left alone."""
        return 0

    def run(self, fn: Work, tasks: Sequence[dict[str, Any]]) -> Iterator[tuple[int, dict[str, Any]]]:
        """Yield each task's index and result as it finishes."""
        for index, task in enumerate(tasks):
            try:
                yield index, fn(task)
            except Exception as e:
                yield index, _crashed(e)


@dataclass(frozen=True)
class LocalExecutor:
    """A pool of `jobs` fresh worker processes on this machine.

    NOTE: processes, not threads: exporters swap the process's stdout/stderr file descriptors while
    they capture output, so two exports must never share a process. Workers start with ``spawn``
    (not ``fork``) so none inherits a half-initialised torch from the parent.
    """

    jobs: int = 1

    def __post_init__(self) -> None:
        if self.jobs < 1:
            raise GateError(f"the local pool needs at least 1 worker, got {self.jobs}")

    @property
    def slots(self) -> int:
        """The number of worker processes."""
        return self.jobs

    @property
    def threads(self) -> int:
        """The machine's CPUs shared among the workers, so that they do not oversubscribe it."""
        return max(1, (os.cpu_count() or 1) // self.jobs)

    def run(self, fn: Work, tasks: Sequence[dict[str, Any]]) -> Iterator[tuple[int, dict[str, Any]]]:
        """Yield each task's index and result as it finishes."""
        if not tasks:
            return
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(self.jobs, len(tasks)), mp_context=context) as pool:
            pending: dict[Future[dict[str, Any]], int] = {pool.submit(fn, t): i for i, t in enumerate(tasks)}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    index = pending.pop(future)
                    try:
                        yield index, future.result()
                    except Exception as e:  # NOTE: a worker killed by the OS (out of memory, segfault).
                        yield index, _crashed(e)


@dataclass(frozen=True)
class RayExecutor:
    """The same work as Ray tasks, one CPU each, on the cluster at `address` (empty: a local one).

    Ray is an optional extra (``pip install 'toolchain[ray]'``). The model code must be importable on
    every node: installed, or on a shared filesystem at the same path.
    """

    address: str = ""

    @property
    def slots(self) -> int:
        """The CPUs Ray reports (1 before Ray has started)."""
        ray = _import_ray()
        return max(1, int(ray.cluster_resources().get("CPU", 1))) if ray.is_initialized() else 1

    @property
    def threads(self) -> int:
        """One: each Ray task reserves one CPU."""
        return 1

    def run(self, fn: Work, tasks: Sequence[dict[str, Any]]) -> Iterator[tuple[int, dict[str, Any]]]:
        """Yield each task's index and result as it finishes."""
        if not tasks:
            return
        ray = _import_ray()
        started = not ray.is_initialized()
        if started:
            try:
                ray.init(address=self.address or None, log_to_driver=False, include_dashboard=False)
            except Exception as e:
                raise GateError(f"cannot start or reach a Ray cluster at {self.address or 'local'}: {e}") from e
        try:
            remote = ray.remote(num_cpus=1)(fn)
            pending = {remote.remote(task): i for i, task in enumerate(tasks)}
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                index = pending.pop(done[0])
                try:
                    yield index, ray.get(done[0])
                except Exception as e:
                    yield index, _crashed(e)
        finally:
            if started:
                ray.shutdown()


def make_executor(name: str, *, jobs: int = 1, address: str = "") -> Executor:
    """The executor called `name`: ``local`` (``jobs`` processes; 0 runs in this process) or ``ray``."""
    if name == "local":
        return InlineExecutor() if jobs == 0 else LocalExecutor(jobs)
    if name == "ray":
        _import_ray()  # NOTE: fail before any work when ray is missing.
        return RayExecutor(address)
    raise GateError(f"no executor named {name!r}; known: {', '.join(EXECUTORS)}")


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise GateError(f"the ray executor needs ray ({e}); install it with: pip install 'toolchain[ray]'") from e
    return ray
