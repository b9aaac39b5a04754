from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from toolchain.perf.timing import Timing, paired_interval, paired_ratio, race


def test_race_times_each_candidate_in_blocks_after_one_untimed_run() -> None:
    order: list[str] = []
    timings = race(
        [lambda: order.append("a"), lambda: order.append("b")],
        warmup=2,
        min_runs=10,
        min_seconds=0.0,
        block_seconds=0.0005,
        pause_seconds=0.0,
    )
    assert all(t.runs >= 10 and len(t.blocks) >= 3 for t in timings)
    blocks = [(name, len(list(group))) for name, group in itertools.groupby(order[4:])]
    assert {name for name, _ in blocks} == {"a", "b"}
    assert all(size >= 2 for _, size in blocks)  # the untimed settling run, then at least one timed
    assert order.count("a") == 2 + timings[0].runs + sum(1 for name, _ in blocks if name == "a")


def test_a_single_candidate_is_timed_without_pauses_or_settling_runs() -> None:
    calls: list[int] = []
    (timing,) = race([lambda: calls.append(1)], warmup=1, min_runs=5, min_seconds=0.0, block_seconds=0.0)
    assert len(calls) == 1 + timing.runs and timing.runs >= 5


def test_every_candidate_gets_several_rounds_however_fast_it_is() -> None:
    # a fast candidate used to fill its whole run budget in its first block: one block, no interleaving
    timings = race([lambda: None, lambda: None], min_seconds=0.02, min_rounds=4, pause_seconds=0.0)
    assert all(len(t.blocks) >= 4 for t in timings)
    assert timings[0].runs > 10 * len(timings[0].blocks)  # blocks of many runs, not run by run


def test_each_round_runs_the_candidates_in_a_new_order() -> None:
    # in a fixed order one candidate always followed the same other one and carried its after-effects
    order: list[str] = []
    names = "abcd"
    fns = [lambda n=n: order.append(n) for n in names]
    timings = race(fns, warmup=0, min_runs=1, min_seconds=0.0, min_rounds=12, block_seconds=0.0, pause_seconds=0.0)
    assert all(len(t.blocks) == 12 for t in timings)
    rounds = ["".join(n for n, _ in itertools.groupby(order[i : i + 8])) for i in range(0, len(order), 8)]
    assert all(sorted(r) == list(names) for r in rounds)  # one block each per round
    assert len(set(rounds)) > 3
    followers = {r[i + 1] for r in rounds for i in range(3) if r[i] == "a"}
    assert len(followers) == 3  # "a" was followed by each of the others in some round


def test_the_paired_ratio_cancels_drift_that_pooled_medians_do_not() -> None:
    # b is 10% slower than a; the host slowed 3x from round 3 on, just after a's block of that round
    a = _blocks([1.0, 1.0, 1.0, 3.0, 3.0])
    b = _blocks([1.1, 1.1, 3.3, 3.3, 3.3])
    assert paired_ratio(b, a) == pytest.approx(1.1)
    assert b.p50_ms / a.p50_ms == pytest.approx(3.3)  # pooled medians blame b for the host
    assert paired_ratio(Timing.of([2e-3] * 3), Timing.of([1e-3] * 3)) == pytest.approx(2.0)  # no blocks


def _blocks(ms: list[float]) -> Timing:
    return Timing.of([m / 1e3 for m in ms], blocks=[[m / 1e3] for m in ms])


def test_paired_interval_is_narrow_for_steady_rounds_and_wide_for_noisy_ones() -> None:
    base = Timing.of([1e-3] * 10, [[1e-3]] * 10)
    steady = Timing.of([0.8e-3] * 10, [[0.8e-3]] * 10)
    assert paired_interval(steady, base) == pytest.approx((0.8, 0.8))
    noisy = [0.85, 1.10, 0.90, 1.05, 0.88, 1.12, 0.91, 1.02, 0.86, 1.08]
    low, high = paired_interval(Timing.of([m / 1e3 for m in noisy], [[m / 1e3] for m in noisy]), base)
    assert low < 0.9 < 1.0 < high
    assert paired_interval(Timing.of([2e-3]), Timing.of([1e-3])) == (2.0, 2.0)  # no rounds: the pooled ratio


def test_race_goes_on_only_with_the_candidates_keep_names() -> None:
    def work(n: int) -> Callable[[], int]:
        return lambda: sum(range(n))

    calls: list[int] = []

    def keep(timings: list[Timing]) -> list[bool]:
        calls.append(len(timings[0].blocks))
        return [True, False, True]

    timings = race(
        [work(100), work(2000), work(100)], min_rounds=3, min_seconds=0.03, pause_seconds=0.0,
        keep=keep, extra_seconds=0.2,
    )  # fmt: skip
    assert len(timings[1].blocks) == 3 < len(timings[0].blocks) == len(timings[2].blocks)
    assert calls and calls[0] == 3
    assert paired_ratio(timings[1], timings[0]) > 1.0  # pairs the three rounds both ran
