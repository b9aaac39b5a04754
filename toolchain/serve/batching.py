"""A bounded queue in front of one model version, with dynamic batching along the verified batch dim.

Requests wait in a queue of ``max_queue``; worker threads take them in order. With batching on,
requests that agree on every other dim are concatenated along the batch dim, but only up to a total
the package verified (the batch dim's verified range) and ``max_batch``; the outputs are split back.
A merged run that fails is retried request by request, so one bad request fails only itself.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from toolchain.core.errors import ToolchainError
from toolchain.core.signature import Signature

__all__ = ["BatchPlan", "Batcher", "Closed", "QueueFull", "batch_plan"]

_log = logging.getLogger("toolchain.serve")
Outputs = dict[str, np.ndarray]


class QueueFull(ToolchainError):
    """The version's queue is full; the client should retry later (503)."""


class Closed(ToolchainError):
    """The version stopped taking requests (swapped out); resolve the serving version again."""


@dataclass(frozen=True)
class BatchPlan:
    """How requests of a model may be merged: along axis 0, the symbolic dim `dim`, up to `limit` rows."""

    dim: str
    limit: int


def batch_plan(signature: Signature, *, max_batch: int) -> BatchPlan | None:
    """A plan when one symbolic dim leads every input and output and was verified up to > 1 rows.

    The merged batch stays within the sizes the package was verified at (its verified range) and
    `max_batch`; None when the model cannot be batched that way or batching is off (`max_batch` <= 1).
    """
    leads = {t.shape[0] if t.shape else None for t in (*signature.inputs, *signature.outputs)}
    if len(leads) != 1:
        return None
    dim = leads.pop()
    if not isinstance(dim, str) or dim == "?":
        return None
    verified = signature.verified_sizes.get(dim, ())
    limit = min(max(verified, default=1), max_batch)
    return BatchPlan(dim, limit) if limit > 1 else None


@dataclass
class _Item:
    feeds: Mapping[str, np.ndarray]
    rows: int
    key: tuple[Any, ...]
    future: Future[Outputs] | asyncio.Future[Outputs]
    deadline: float
    loop: asyncio.AbstractEventLoop | None = None
    """Set for `Batcher.submit_async`: `future` is that loop's, resolved there."""


Finished = list[tuple[_Item, "Outputs | BaseException"]]


class Batcher:
    """Runs requests on `run` from worker threads, merging them per `plan`.

    Args:
        run: the verified session's run (feeds -> outputs).
        plan: how to merge requests; None runs each request alone.
        max_queue: requests waiting or running; one more raises `QueueFull`.
        max_delay_s: how long a batch waits for more requests once the queue is empty (0: merge only
            what is already waiting). Adaptive: it waits only while requests arrive together (the
            previous run merged several), so a lone client never pays the delay.
        workers: threads running the model.
        observe_batch: receives the rows of every run (for the batch-size metric).
        observe_depth: receives the number of requests waiting or running after every change.
    """

    def __init__(
        self,
        run: Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]],
        *,
        plan: BatchPlan | None,
        max_queue: int,
        max_delay_s: float = 0.0,
        workers: int = 1,
        observe_batch: Callable[[int], None] = lambda rows: None,
        observe_depth: Callable[[int], None] = lambda depth: None,
    ) -> None:
        self._run = run
        self.plan = plan
        self.max_queue = max_queue
        self.max_delay_s = max_delay_s
        self._observe_batch = observe_batch
        self._observe_depth = observe_depth
        self._queue: collections.deque[_Item] = collections.deque()
        self._cond = threading.Condition()
        self._depth = 0
        self._closed = False
        self._merging = False
        self._threads = [
            threading.Thread(target=self._work, daemon=True, name="toolchain-serve") for _ in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def depth(self) -> int:
        """Requests waiting or running."""
        return self._depth

    def submit(self, feeds: Mapping[str, np.ndarray], *, deadline: float) -> Future[Outputs]:
        """Queue a checked request; its future holds the outputs. `deadline` is a `time.monotonic` time."""
        future: Future[Outputs] = Future()
        self._enqueue(feeds, deadline, future, None)
        return future

    def submit_async(self, feeds: Mapping[str, np.ndarray], *, deadline: float) -> asyncio.Future[Outputs]:
        """`submit` from a running event loop: the future is the loop's; cancel it to drop the request.

        NOTE: the requests of one run are resolved with one wake-up of the loop, not one each (a
        concurrent future wrapped for asyncio costs a thread-safe call per request: 80 us at 32 clients).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outputs] = loop.create_future()
        self._enqueue(feeds, deadline, future, loop)
        return future

    def _enqueue(
        self,
        feeds: Mapping[str, np.ndarray],
        deadline: float,
        future: Future[Outputs] | asyncio.Future[Outputs],
        loop: asyncio.AbstractEventLoop | None,
    ) -> None:
        rows, key = 0, ()  # type: tuple[int, tuple[Any, ...]]
        if self.plan is not None:
            rows = next(iter(feeds.values())).shape[0]
            key = tuple((k, v.dtype.str, v.shape[1:]) for k, v in feeds.items())
        item = _Item(feeds, rows, key, future, deadline, loop)
        with self._cond:
            if self._closed:
                raise Closed("this version stopped taking requests")
            if self._depth >= self.max_queue:
                raise QueueFull(f"{self._depth} requests are waiting or running (the limit)")
            self._depth += 1
            self._queue.append(item)
            self._cond.notify()
        self._observe_depth(self._depth)

    def close(self) -> None:
        """Take no more requests; the workers finish every queued one, then exit."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the workers to exit after `close`."""
        for thread in self._threads:
            thread.join(timeout)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                group = self._take(self._queue.popleft())
            if group:
                self._run_group(group)

    def _take(self, first: _Item) -> list[_Item]:
        """`first` and every waiting request that fits beside it (called holding the lock)."""
        group = [i for i in (first,) if self._start(i)]
        if not group or self.plan is None or first.rows >= self.plan.limit:
            return group
        # NOTE: waiting is worth it only under load; one client at a time would pay max_delay_s per request
        delay = self.max_delay_s if self._merging else 0.0
        rows, waited_until = first.rows, time.monotonic() + delay
        while rows < self.plan.limit:
            if not self._queue:
                remaining = waited_until - time.monotonic()
                if remaining <= 0 or self._closed:
                    break
                self._cond.wait(remaining)
                continue
            nxt = self._queue[0]
            if nxt.key != first.key or rows + nxt.rows > self.plan.limit:
                break
            self._queue.popleft()
            if self._start(nxt):
                group.append(nxt)
                rows += nxt.rows
        self._merging = len(group) > 1
        return group

    def _start(self, item: _Item) -> bool:
        """Mark `item` running; False (and forgotten) when it was cancelled or is past its deadline."""
        future = item.future
        if isinstance(future, Future):
            if time.monotonic() > item.deadline:
                future.cancel()
            if future.set_running_or_notify_cancel():
                return True
        elif not future.done() and time.monotonic() <= item.deadline:
            # NOTE: read from this thread without the loop: a waiter cancelled after this is skipped in `_resolve`
            return True
        self._depth -= 1
        return False

    def _run_group(self, group: list[_Item]) -> None:
        try:
            results = self._results(group)
        except BaseException as e:  # NOTE: a worker must never die with futures left unanswered
            results = [e] * len(group)
        self._finish(list(zip(group, results, strict=True)))

    def _results(self, group: list[_Item]) -> list[Outputs | BaseException]:
        if len(group) == 1:
            return [self._call(group[0].feeds, group[0].rows)]
        merged = {k: np.concatenate([i.feeds[k] for i in group]) for k in group[0].feeds}
        try:
            outputs = self._call(merged, sum(i.rows for i in group))
        except ToolchainError:
            # NOTE: one bad request (an id out of range) must not fail the others merged with it.
            return [self._call_safely(item) for item in group]
        offsets = np.cumsum([i.rows for i in group])[:-1]
        parts = {k: np.split(v, offsets) for k, v in outputs.items()}
        return [{k: np.ascontiguousarray(p[index]) for k, p in parts.items()} for index in range(len(group))]

    def _call(self, feeds: Mapping[str, np.ndarray], rows: int) -> Outputs:
        self._observe_batch(max(rows, 1))
        return dict(self._run(feeds))

    def _call_safely(self, item: _Item) -> Outputs | BaseException:
        try:
            return self._call(item.feeds, item.rows)
        except Exception as e:
            return e

    def _finish(self, finished: Finished) -> None:
        """Answer every request of a run: concurrent futures here, each event loop's with one call."""
        by_loop: dict[asyncio.AbstractEventLoop, Finished] = {}
        for item, result in finished:
            if item.loop is not None:
                by_loop.setdefault(item.loop, []).append((item, result))
            elif isinstance(result, BaseException):
                item.future.set_exception(result)
            else:
                item.future.set_result(result)
            if isinstance(result, BaseException) and not isinstance(result, ToolchainError):
                _log.error("model run failed: %r", result)
        for loop, answers in by_loop.items():
            with contextlib.suppress(RuntimeError):  # NOTE: the loop closed (server stopped): nobody waits
                loop.call_soon_threadsafe(_resolve, answers)
        with self._cond:
            self._depth -= len(finished)
        self._observe_depth(self._depth)


def _resolve(answers: Finished) -> None:
    """On the loop: set each waiter still waiting (one cancelled by its timeout is skipped)."""
    for item, result in answers:
        if item.future.done():
            continue
        if isinstance(result, BaseException):
            item.future.set_exception(result)
        else:
            item.future.set_result(result)
