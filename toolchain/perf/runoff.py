"""The run-off: the candidates near the fastest, raced side by side until the ranking is settled."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from toolchain.perf.rows import RUNOFF_MARGIN, TIE_MARGIN, BenchRow, exactness
from toolchain.perf.timing import Timing, paired_interval, paired_ratio, race

__all__ = ["HEAT_SECONDS", "RUNOFF_EXTRA_SECONDS", "RUNOFF_TIE", "runoff"]

HEAT_SECONDS = 0.3
"""Each candidate's time in the heat (3 rounds) that picks who enters the run-off."""
RUNOFF_EXTRA_SECONDS = 3.0
"""After 10 rounds the run-off races on, this long at most, the candidates it cannot yet tell from the
leader: on a CTC model at batch 1 the legacy ONNX file ran 5-8% slower than the torch.export one in
30-round races, and 10 rounds picked it about half the time."""
RUNOFF_TIE = 0.02
"""Candidates surely within this of the leader are a tie the run-off need not settle."""


def runoff(rows: list[BenchRow], runs: Mapping[int, Callable[[], Any]]) -> None:
    """Race the candidates within `RUNOFF_MARGIN` of the fastest side by side; store their timings.

    Who is within the margin is decided in a short heat of every candidate, raced side by side, not
    by the rows' own timings: those were taken one after another, and under the host's drift an int8
    file timed alone in a fast window came within the margin while the others did not, and was
    recommended although 18-46% slower than the fp32 ones raced side by side (GBDT model, batch 1).
    """
    if len(runs) < 2:
        return
    every = list(runs)
    heat = race([runs[i] for i in every], warmup=1, min_seconds=HEAT_SECONDS, min_rounds=3)
    lead = _leader(heat)
    close = [i for i, t in zip(every, heat, strict=True) if paired_ratio(t, lead) <= 1 + RUNOFF_MARGIN]
    if len(close) < 2:  # the heat's leader stands alone: it is the one raced row, so it is recommended
        rows[close[0]] = replace(rows[close[0]], runoff=lead, runoff_ratio=1.0)
        return
    ranks = [exactness(rows[i]) for i in close]
    timings = race(
        [runs[i] for i in close],
        min_seconds=1.0,
        min_rounds=10,
        keep=lambda timings: _undecided(timings, ranks),
        extra_seconds=RUNOFF_EXTRA_SECONDS,
    )
    fastest = _leader(timings)
    for i, timing in zip(close, timings, strict=True):
        rows[i] = replace(rows[i], runoff=timing, runoff_ratio=paired_ratio(timing, fastest))


def _leader(timings: Sequence[Timing]) -> Timing:
    """The fastest raced timing, by paired ratio to the first (every candidate ran the first rounds)."""
    return min(timings, key=lambda t: paired_ratio(t, timings[0]))


def _undecided(timings: list[Timing], exactness: Sequence[int] = ()) -> list[bool]:
    """Race on the leader and whoever is undecided against it (95% interval of the paired ratio).

    Undecided: may still beat the leader or lose to it by more than `RUNOFF_TIE`; or, for a more
    exact variant than the leader (`exactness`, lower is more exact), may lose by more or by less
    than `TIE_MARGIN`, which decides whether its precision wins (`_most_exact_of_raced`). Without
    that second rule an fp32 file 9% slower than the int8 leader left the race after 10 rounds with
    the interval [1.029, 1.184] and was recommended over it.
    """
    leader = _leader(timings)
    rank = list(exactness) or [0] * len(timings)
    top = rank[next(i for i, t in enumerate(timings) if t is leader)]
    keep = []
    for t, exact in zip(timings, rank, strict=True):
        low, high = paired_interval(t, leader)
        may_win = low <= 1.0 and high >= 1 + RUNOFF_TIE
        may_tie = exact < top and low <= 1 + TIE_MARGIN < high
        keep.append(t is leader or may_win or may_tie)
    if sum(keep) < 2:
        return [False] * len(timings)
    return keep
