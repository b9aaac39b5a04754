"""Exploration before promotion: a candidate version shadows production or answers a declared share.

Shadow: every answered request is copied to the candidate's queue after production answered it; the
candidate's answer is compared with production's and dropped, never returned. Share: a declared
fraction of requests is answered by the candidate, and a copy of each goes to production for the
comparison. Either way the copy runs on the other version's workers, off the response path, and a
full queue drops the copy (counted), never the request. Per candidate, `Explorer.snapshot` gives the
requests compared, the p50 of both versions on the same requests, and the worst drift against
production: max absolute and relative error and the worst error as a share of production's tolerance.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from toolchain.core.errors import ToolchainError
from toolchain.core.parity import Tolerance
from toolchain.serve.repository import Model, ModelVersion, Repository

__all__ = ["SHADOW", "SHARE", "Exploration", "Explorer", "drift"]

_log = logging.getLogger("toolchain.serve")
SHADOW = "shadow"
SHARE = "share"
_KEEP = 10_000
"""Latencies kept per version for the p50 (the most recent ones)."""


@dataclass(frozen=True)
class Exploration:
    """What one candidate showed against production since this server started.

    Args:
        model: model name.
        version: the candidate version.
        against: the production version it was compared with; when production changes, every count
            starts again (a comparison with the old version says nothing about the new one).
        mode: ``shadow`` or ``share``.
        requests: requests answered by both and compared.
        dropped: copies not run (the other version's queue was full, it stopped, or it failed).
        beyond: compared requests whose drift exceeded production's tolerance.
        p50_ms: the candidate's median latency over those requests (its queue and run).
        production_p50_ms: production's median over the same requests.
        max_abs: worst absolute error against production, over every output and request.
        max_rel: worst relative error (``|a - p| / |p|``, where production's value is not 0).
        worst_ratio: worst error as a share of production's allowed error (1 is the limit).
    """

    model: str
    version: str
    against: str
    mode: str
    requests: int = 0
    dropped: int = 0
    beyond: int = 0
    p50_ms: float = 0.0
    production_p50_ms: float = 0.0
    max_abs: float = 0.0
    max_rel: float = 0.0
    worst_ratio: float = 0.0


def drift(
    candidate: Mapping[str, np.ndarray], production: Mapping[str, np.ndarray], tolerance: Tolerance
) -> tuple[float, float, float]:
    """``(max_abs, max_rel, worst_ratio)`` of `candidate` against `production` over their outputs.

    A missing output, a different shape, or a non-finite value where production's is finite (or the
    reverse) is infinite drift.
    """
    worst = [0.0, 0.0, 0.0]
    for name, expected in production.items():
        actual = candidate.get(name)
        if actual is None or actual.shape != expected.shape:
            return (float("inf"),) * 3
        a, e = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
        finite = np.isfinite(e)
        if not np.array_equal(finite, np.isfinite(a)) or not np.array_equal(a[~finite], e[~finite], equal_nan=True):
            return (float("inf"),) * 3
        if not finite.any():
            continue
        error = np.abs(a[finite] - e[finite])
        scale = np.abs(e[finite])
        atol, rtol = tolerance.for_output(name)
        allowed = atol + rtol * scale
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(scale > 0, error / np.where(scale > 0, scale, 1.0), 0.0)
            ratio = np.where(allowed > 0, error / np.where(allowed > 0, allowed, 1.0), np.where(error > 0, np.inf, 0.0))
        worst = [max(worst[0], float(error.max())), max(worst[1], float(rel.max())), max(worst[2], float(ratio.max()))]
    return worst[0], worst[1], worst[2]


class _Tally:
    """Running totals of one candidate (under the explorer's lock)."""

    def __init__(self) -> None:
        self.against = ""
        self.requests = self.dropped = self.beyond = 0
        self.max_abs = self.max_rel = self.worst_ratio = 0.0
        self.candidate_s: deque[float] = deque(maxlen=_KEEP)
        self.production_s: deque[float] = deque(maxlen=_KEEP)


class Explorer:
    """Runs candidates beside production for the models of one `Repository` (set as its ``explorer``).

    Args:
        repository: the server's repository; the explorer installs itself on it.
        mode: ``shadow`` (copies, never answers) or ``share`` (answers `share` of the requests).
        share: the fraction of requests a candidate answers in ``share`` mode (0 < share <= 1).
        seed: seeds the choice of which requests the candidate answers (None: from the OS).
    """

    def __init__(self, repository: Repository, *, mode: str = SHADOW, share: float = 0.0, seed: int | None = None):
        if mode not in (SHADOW, SHARE):
            raise ToolchainError(f"exploration mode {mode!r}: expected {SHADOW!r} or {SHARE!r}")
        if mode == SHARE and not 0 < share <= 1:
            raise ToolchainError(f"--share {share}: expected a fraction of requests above 0 and at most 1 (e.g. 0.1)")
        self.repository, self.mode, self.share = repository, mode, share
        self._random = random.Random(seed)
        self._candidates: dict[str, str] = {}
        self._tallies: dict[tuple[str, str], _Tally] = {}
        self._lock = threading.Lock()
        repository.explorer = self

    def set_candidate(self, model: str, version: str) -> None:
        """Explore `version` of `model` from now on ('' stops exploring that model)."""
        with self._lock:
            if version:
                self._candidates[model] = version
                self._tallies.setdefault((model, version), _Tally())
            else:
                self._candidates.pop(model, None)

    def candidate(self, model: Model) -> ModelVersion | None:
        """The model's candidate when it is loaded, ready and not the version serving."""
        name = self._candidates.get(model.name)
        chosen = model.versions.get(name) if name else None
        if chosen is None or chosen is model.serving or chosen.state != "ready" or chosen.batcher is None:
            return None
        return chosen

    def route(self, model: Model, serving: ModelVersion | None) -> ModelVersion | None:
        """The version to answer an unpinned request: in ``share`` mode the candidate for its share."""
        if self.mode != SHARE or serving is None:
            return serving
        chosen = self.candidate(model)
        if chosen is None or self._random.random() >= self.share:
            return serving
        return chosen

    def observe(
        self, answered: ModelVersion, feeds: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray], seconds: float
    ) -> None:
        """Record an answered request and queue its copy on the other version for the comparison."""
        model = self.repository.models.get(answered.spec.model)
        chosen = self.candidate(model) if model is not None else None
        serving = model.serving if model is not None else None
        if chosen is None or serving is None:
            return
        if answered is chosen:
            self._copy(serving, feeds, lambda result, s: self._compare(chosen, serving, outputs, seconds, result, s))
        elif answered is serving and self.mode == SHADOW:
            self._copy(chosen, feeds, lambda result, s: self._compare(chosen, serving, result, s, outputs, seconds))

    def snapshot(self) -> list[Exploration]:
        """What every candidate explored so far showed (one entry per model and candidate version)."""
        with self._lock:
            return [
                Exploration(
                    model,
                    version,
                    t.against,
                    self.mode,
                    t.requests,
                    t.dropped,
                    t.beyond,
                    _p50_ms(t.candidate_s),
                    _p50_ms(t.production_s),
                    t.max_abs,
                    t.max_rel,
                    t.worst_ratio,
                )
                for (model, version), t in self._tallies.items()
            ]

    def _copy(self, other: ModelVersion, feeds: Mapping[str, np.ndarray], done: Any) -> None:
        batcher = other.batcher
        started = time.monotonic()
        try:
            if batcher is None:
                raise ToolchainError("not loaded")
            future = batcher.submit(feeds, deadline=started + self.repository.options.limits.timeout_s)
        except ToolchainError:  # NOTE: QueueFull or Closed: the copy is dropped, never the request
            self._drop(other)
            return

        def finished(f: Future[Any]) -> None:
            try:
                result = f.result()
            except Exception:
                self._drop(other)
                return
            done(result, time.monotonic() - started)

        future.add_done_callback(finished)

    def _drop(self, other: ModelVersion) -> None:
        model = other.spec.model
        with self._lock:
            version = self._candidates.get(model, "")
            tally = self._tallies.get((model, version))
            if tally is not None:
                tally.dropped += 1

    def _compare(
        self,
        candidate: ModelVersion,
        production: ModelVersion,
        candidate_out: Mapping[str, np.ndarray],
        candidate_s: float,
        production_out: Mapping[str, np.ndarray],
        production_s: float,
    ) -> None:
        runner = production.runner
        tolerance = runner.tolerance if runner is not None else Tolerance()
        max_abs, max_rel, ratio = drift(candidate_out, production_out, tolerance)
        with self._lock:
            key = (candidate.spec.model, candidate.name)
            tally = self._tallies.setdefault(key, _Tally())
            if tally.against and tally.against != production.name:
                # NOTE: production changed (a promotion): evidence against the old one says nothing about the new
                tally = self._tallies[key] = _Tally()
            tally.against = production.name
            tally.requests += 1
            tally.beyond += ratio > 1
            tally.max_abs, tally.max_rel = max(tally.max_abs, max_abs), max(tally.max_rel, max_rel)
            tally.worst_ratio = max(tally.worst_ratio, ratio)
            tally.candidate_s.append(candidate_s)
            tally.production_s.append(production_s)


def _p50_ms(seconds: deque[float]) -> float:
    return float(np.median(np.fromiter(seconds, float))) * 1000 if seconds else 0.0
