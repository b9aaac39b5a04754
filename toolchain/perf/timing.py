"""Latency measurement: warm-up, then timed runs until enough time has passed, reported as percentiles.

`race` interleaves its candidates in short blocks, so a drift in the host's speed (another process, a
frequency change) lands on all of them alike and their ratio stays honest.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Timing", "measure", "measure_stable", "paired_ratio", "race"]


@dataclass(frozen=True)
class Timing:
    """Percentiles of the timed runs, in milliseconds."""

    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    spread: float
    """Half the inter-quartile range over the median: how far one run strays, as a fraction."""
    blocks: tuple[float, ...] = ()
    """Median of each block of runs, in milliseconds, in race order (see `race`, `paired_ratio`)."""

    @classmethod
    def of(cls, seconds: Sequence[float], blocks: Sequence[Sequence[float]] = ()) -> Timing:
        """Summarise per-run wall times (seconds), and per block when the runs came in `blocks`."""
        ms = np.asarray(seconds, dtype=np.float64) * 1e3
        p25, p50, p75, p90, p99 = np.percentile(ms, [25, 50, 75, 90, 99])
        spread = float((p75 - p25) / 2 / p50) if p50 > 0 else 0.0
        medians = tuple(float(np.median(b)) * 1e3 for b in blocks if len(b))
        return cls(len(ms), float(p50), float(p90), float(p99), spread, medians)

    def __str__(self) -> str:
        return f"p50 {self.p50_ms:.3f} ms (±{self.spread:.0%}, p90 {self.p90_ms:.3f}, {self.runs} runs)"

    def to_dict(self) -> dict[str, Any]:
        """JSON form, rounded for stable files."""
        return {
            "runs": self.runs,
            "p50_ms": round(self.p50_ms, 4),
            "p90_ms": round(self.p90_ms, 4),
            "p99_ms": round(self.p99_ms, 4),
            "spread": round(self.spread, 4),
        }


def measure(fn: Callable[[], Any], *, warmup: int = 3, min_runs: int = 10, min_seconds: float = 0.2) -> Timing:
    """Time `fn` alone: `warmup` untimed calls, then at least `min_runs` and `min_seconds` of timed ones."""
    return race([fn], warmup=warmup, min_runs=min_runs, min_seconds=min_seconds)[0]


def race(
    fns: Sequence[Callable[[], Any]],
    *,
    warmup: int = 3,
    min_runs: int = 10,
    min_seconds: float = 0.2,
    min_rounds: int = 3,
    block_seconds: float = 0.2,
    pause_seconds: float = 0.05,
    keep: Callable[[list[Timing]], Sequence[bool]] | None = None,
    extra_seconds: float = 0.0,
) -> list[Timing]:
    """Time several callables in interleaved blocks until each has `min_runs`, `min_seconds` and `min_rounds`.

    Each round every candidate runs one block of at least ``min(block_seconds, min_seconds / min_rounds)``
    (one run at least); before each block the host rests `pause_seconds` and the candidate runs once
    untimed. Switching candidates run by run was measured unfair on this 2-core host: thread pools
    (ONNX Runtime's, OpenMP's) keep spinning after a call and caches hold the previous candidate's
    weights, so a ResNet timed 2-5x slower behind other sessions than alone; with blocks the raced
    medians match the ones measured alone. The host's speed also drifts by up to 2x over seconds (a
    16 us model timed 16-45 us in consecutive windows), so every candidate gets several rounds and
    the drift lands on all of them alike. The pause was measured: after 5 ms, an ONNX Runtime session
    raced right after another one still ran 1.6-2x slower (ResNet, batch 16), so whichever candidate
    followed the other session in the race order lost; after 50 ms the order no longer matters.
    Each round still runs the candidates in a new (seeded) random order, so none always follows the
    same one: in a fixed order, the recommended face embedder (raced first, right after ONNX Runtime
    on a plain export) timed 0.96-0.98x that export in three runs, and 1.00x raced alone against it.

    Once those minimums are met, `keep` (given the timings so far) may name candidates to race on,
    for at most `extra_seconds` more: the others stop, and their rounds so far still pair with the
    same rounds of the rest (`paired_ratio` pairs the rounds both ran).
    """
    for fn in fns:
        for _ in range(warmup):
            fn()
    block_seconds = min(block_seconds, min_seconds / max(min_rounds, 1)) if min_seconds > 0 else block_seconds
    times: list[list[float]] = [[] for _ in fns]
    blocks: list[list[list[float]]] = [[] for _ in fns]
    spent = [0.0 for _ in fns]
    rounds, active, extra_until = 0, list(range(len(fns))), 0.0
    rng = random.Random(len(fns))  # NOTE: seeded, so a race is repeatable; the order only needs to vary.
    while True:
        if not (rounds < min_rounds or min(len(t) for t in times) < min_runs or min(spent) < min_seconds):
            if keep is None or extra_seconds <= 0:
                break
            extra_until = extra_until or time.perf_counter() + extra_seconds
            wanted = keep([Timing.of(t, b) for t, b in zip(times, blocks, strict=True)])
            active = [i for i in active if wanted[i]]
            if len(active) < 2 or time.perf_counter() > extra_until:
                break
        for i in rng.sample(active, len(active)):
            fn = fns[i]
            if len(fns) > 1:
                time.sleep(pause_seconds)
                fn()
            block: list[float] = []
            total = 0.0
            while total < block_seconds or not block:
                start = time.perf_counter()
                fn()
                elapsed = time.perf_counter() - start
                block.append(elapsed)
                total += elapsed
            times[i] += block
            blocks[i].append(block)
            spent[i] += total
        rounds += 1
    return [Timing.of(t, b) for t, b in zip(times, blocks, strict=True)]


def paired_ratio(a: Timing, b: Timing) -> float:
    """`a`'s latency over `b`'s, as the median over race rounds of their block medians' ratio.

    Two candidates of one `race` ran their k-th blocks moments apart, so the host's drift (up to 2x
    over seconds here) cancels in each round's ratio, where it does not cancel between pooled
    medians. Falls back to the pooled medians' ratio without blocks.
    """
    rounds = min(len(a.blocks), len(b.blocks))
    if not rounds:
        return a.p50_ms / b.p50_ms if b.p50_ms else float("inf")
    return float(np.median([x / y for x, y in zip(a.blocks[:rounds], b.blocks[:rounds], strict=True) if y > 0]))


def paired_interval(a: Timing, b: Timing, *, level: float = 0.95) -> tuple[float, float]:
    """Bootstrap interval (at `level`) of `paired_ratio(a, b)`: how sure a raced ratio is.

    Resamples the per-round ratios (seeded, so a report is reproducible); without blocks the
    interval is the pooled ratio alone.
    """
    rounds = min(len(a.blocks), len(b.blocks))
    if not rounds:
        ratio = paired_ratio(a, b)
        return ratio, ratio
    ratios = np.asarray(a.blocks[:rounds]) / np.asarray(b.blocks[:rounds])
    medians = np.median(np.random.default_rng(0).choice(ratios, size=(2000, rounds)), axis=1)
    low, high = np.percentile(medians, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def measure_stable(
    fn: Callable[[], Any],
    *,
    warmup: int = 5,
    window: int = 10,
    tolerance: float = 0.02,
    min_seconds: float = 0.3,
    max_seconds: float = 5.0,
) -> tuple[Timing, bool]:
    """Time `fn` until its median settles, or `max_seconds` pass; returns the timing and whether it settled.

    Settled: after at least `min_seconds`, adding the latest `window` runs moved the median of all runs
    by less than `tolerance` (a fraction).
    """
    for _ in range(warmup):
        fn()
    times: list[float] = []
    spent, previous = 0.0, float("inf")
    while spent < max_seconds:
        for _ in range(window):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        spent = sum(times)
        median = float(np.median(times))
        if spent >= min_seconds and abs(median - previous) <= tolerance * median:
            return Timing.of(times), True
        previous = median
    return Timing.of(times), False
