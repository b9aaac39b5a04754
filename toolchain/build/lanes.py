"""A second process for an export: eager's reference outputs, then the paths that share nothing.

NOTE: an export is Python-bound and uses one core. On a host with a second one, a child forked
right after the samples are drawn (before the shared capture) computes eager's reference outputs while
this process captures and exports the first ONNX path (which needs only the export sample), then takes
the paths that need nothing from this process (the legacy ONNX, scripted and traced TorchScript paths,
and the ``.pt2`` one where it captures on its own: export, verification, their optimisation passes)
while this process verifies and optimises the ONNX one. A `held` path (the ``.pt2`` one fed from this
process's capture, which the child never sees) is the child's only once this process releases it.
The child inherits the model and samples through fork (nothing pickled on the way in) and sends the
reference and each path's result back pickled, with its progress lines; both processes judge
against the same reference outputs, the child's. A child that dies, or fails in a way that is not
the model's fault, leaves its work to this process, which does it as it would have without a lane:
a lane can make an export faster, never different.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any, Generic, TypeVar

from exporters._capture import OUTPUT_LOCK
from toolchain.build.paths import PathResult
from toolchain.core.errors import ToolchainError

__all__ = ["LANE_PATHS", "WORKERS_ENV", "Lane", "can_fork", "default_workers", "lane_paths"]

LANE_PATHS = (("onnx_legacy", "torchscript", "torchscript_trace"), ("exported_program",))
"""Paths the child may take, each capturing on its own, in units one process runs in this order.

NOTE: TorchScript numbers a class compiled twice in one process (``___torch_mangle_N``) in the order
it compiles them, and the legacy exporter's trace-backs compile too: those three stay in one process,
in the order a one-process export runs them, so their archives are the bytes it ships.
"""

WORKERS_ENV = "TOOLCHAIN_EXPORT_WORKERS"

R = TypeVar("R")
Tell = Callable[[str], None]


def default_workers() -> int:
    """Processes an export may use: ``$TOOLCHAIN_EXPORT_WORKERS``, else 2 where this process may use 2 cores."""
    value = os.environ.get(WORKERS_ENV, "")
    if value.strip().isdigit():
        return max(1, int(value))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 2 if cores >= 2 else 1


def can_fork(workers: int) -> bool:
    """Whether this export may fork its child."""
    # NOTE: Linux only: macOS forks are unsafe once system frameworks are loaded (the reason Python made
    # spawn its default there); a daemonic process (a multiprocessing pool's worker) may not have children.
    return (
        workers >= 2
        and sys.platform.startswith("linux")
        and "fork" in multiprocessing.get_all_start_methods()
        and not multiprocessing.current_process().daemon
    )


def lane_paths(candidates: Sequence[str], first_only: bool) -> tuple[tuple[str, ...], ...]:
    """The units of candidates the child may take: none when only the first path that passes is wanted."""
    if first_only:
        return ()
    units = (tuple(n for n in unit if n in candidates) for unit in LANE_PATHS)
    return tuple(unit for unit in units if unit)


class Lane(Generic[R]):
    """The reference and the paths of `units`, in a forked child (or here, when `fork` is false).

    Args:
        reference: computes eager's reference outputs (raises `ToolchainError` when eager fails).
        units: paths the child runs after the reference, unit by unit (a unit's paths in order); this
            process takes the units not yet started (`help`).
        job: runs one path given the reference and a progress callback.
        progress: receives every progress line, the child's included (from a reader thread).
        fork: start a child at all.
        held: paths whose unit the child may take only once this process `release`s it (this process
            takes it in any case); for a path that may need what this process makes after the fork.
    """

    def __init__(
        self,
        reference: Callable[[], R],
        units: Sequence[Sequence[str]],
        job: Callable[[str, R, Tell], PathResult],
        progress: Tell,
        *,
        fork: bool,
        held: Sequence[str] = (),
    ) -> None:
        self._compute, self._job, self._progress = reference, job, progress
        self._units = tuple(tuple(unit) for unit in units)
        self._fork = fork
        self._held = [any(name in held for name in unit) for unit in self._units]
        self.in_child = False
        """True in the forked child (its jobs run there)."""
        self._reference: list[R] = []
        self._error: list[ToolchainError] = []
        self._results: dict[str, PathResult] = {}
        self._settled = threading.Event()
        self._process: Any = None
        self._reader: threading.Thread | None = None
        self._taken: Any = None
        self._allowed: Any = None

    def start(self) -> None:
        """Fork the child (no-op without `fork`)."""
        if not self._fork:
            return
        context = multiprocessing.get_context("fork")
        # NOTE: shared memory: which units someone started, which ones the child may take (one lock for both).
        self._taken = context.Array("b", len(self._units))
        self._allowed = context.Array("b", [0 if held else 1 for held in self._held], lock=False)
        receive, send = context.Pipe(duplex=False)
        self._process = context.Process(target=self._child, args=(send,), daemon=True)
        self._process.start()
        send.close()
        self._reader = threading.Thread(target=self._read, args=(receive,), daemon=True)
        self._reader.start()

    def reference(self) -> R:
        """The child's reference outputs (waiting for them), or computed here; re-raises eager's error."""
        self._settled.wait() if self._process is not None else None
        if self._error:
            raise self._error[0]
        if not self._reference:
            self._reference.append(self._compute())
        return self._reference[0]

    def release(self, name: str) -> None:
        """Let the child take the held unit of path `name` (no-op without a child or when not held)."""
        if self._taken is None:
            return
        with self._taken.get_lock():
            for index, unit in enumerate(self._units):
                if name in unit:
                    self._allowed[index] = 1

    def _claim(self) -> tuple[str, ...]:
        """The first unit nobody has started (and, in the child, not held), claimed here (empty: none left)."""
        with self._taken.get_lock():
            for index, unit in enumerate(self._units):
                if not self._taken[index] and (not self.in_child or self._allowed[index]):
                    self._taken[index] = 1
                    return unit
        return ()

    def help(self) -> None:
        """Run here the paths the child has not started yet, until none is left (no-op without a child)."""
        if self._process is None:
            return
        reference = self.reference()
        while unit := self._claim():
            for name in unit:
                self._results[name] = self._job(name, reference, self._progress)

    def results(self) -> dict[str, PathResult]:
        """Wait for the child; every name's result, run here for those the child did not deliver."""
        if self._process is not None:
            self._process.join()
            assert self._reader is not None
            self._reader.join()
        reference = self.reference()
        out = {}
        for name in [n for unit in self._units for n in unit]:
            if name not in self._results:
                if self._process is not None:
                    self._progress(f"{name}: the export's worker process did not finish it; running it here")
                self._results[name] = self._job(name, reference, self._progress)
            out[name] = self._results[name]
        return out

    def close(self) -> None:
        """Stop a child still running (this process gave up on the export); no-op otherwise."""
        if self._process is not None and self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout=10)
        if self._reader is not None:
            self._reader.join(timeout=10)

    def _read(self, receive: Connection) -> None:
        try:
            while True:
                kind, name, payload = receive.recv()
                if kind == "progress":
                    with OUTPUT_LOCK:  # NOTE: never into an export's captured output in this process
                        self._progress(payload)
                elif kind == "reference":
                    self._reference.append(payload)
                    self._settled.set()
                elif kind == "reference-error":
                    self._error.append(payload)
                    self._settled.set()
                elif kind == "result":
                    self._results[name] = payload
        except (EOFError, OSError):
            pass  # NOTE: the child closed its end (done or dead): what arrived is all there is.
        finally:
            receive.close()
            self._settled.set()

    def _child(self, send: Connection) -> None:
        import torch

        self.in_child = True
        # NOTE: one intra-op thread: the parent keeps exporting on the other core, and an OpenMP pool
        # inherited through fork hangs the child that enters it with more than one thread.
        torch.set_num_threads(1)

        def tell(message: str) -> None:
            send.send(("progress", "", message))

        try:
            try:
                reference = self._compute()
            except ToolchainError as e:
                send.send(("reference-error", "", e))
                return
            send.send(("reference", "", reference))
            while unit := self._claim():
                for name in unit:
                    try:
                        result = self._job(name, reference, tell)
                    except BaseException:  # NOTE: the parent runs this path itself and meets the error there.
                        tell(f"{name}: the export's worker process failed: {traceback.format_exc(limit=-1)}")
                        break  # NOTE: the unit's later paths run there too, in order
                    send.send(("result", name, result))
        finally:
            send.close()
