from __future__ import annotations

import itertools

from toolchain.timing import race


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
    assert [t.runs for t in timings] == [timings[0].runs] * 2 and timings[0].runs >= 10
    blocks = [(name, len(list(group))) for name, group in itertools.groupby(order[4:])]
    assert {name for name, _ in blocks} == {"a", "b"}
    assert all(size >= 2 for _, size in blocks)  # the untimed settling run, then at least one timed
    assert order.count("a") == 2 + timings[0].runs + sum(1 for name, _ in blocks if name == "a")


def test_a_single_candidate_is_timed_without_pauses_or_settling_runs() -> None:
    calls: list[int] = []
    (timing,) = race([lambda: calls.append(1)], warmup=1, min_runs=5, min_seconds=0.0, block_seconds=0.0)
    assert len(calls) == 1 + timing.runs and timing.runs >= 5
