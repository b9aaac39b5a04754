from __future__ import annotations

from toolchain.registry.rules import EXPLORE_TAG, Budgets, PromotionCheck, check_exploration, explored
from toolchain.serve.follow import exploration_record
from toolchain.serve.shadow import Exploration


def test_a_minimum_of_shadowed_requests_is_a_promotion_rule() -> None:
    passing = PromotionCheck("2", "1", (), ("a note",))
    rule = Budgets(min_shadowed=100)
    short = check_exploration(passing, {"requests": "99"}, rule)
    assert not short and short.notes == ("a note",)
    assert short.problems == (
        "answered 99 request(s) beside production, the rule asks for 100 (serve it with --shadow or --share first)",
    )
    assert check_exploration(passing, {"requests": "100"}, rule) is passing
    assert not check_exploration(passing, {"requests": "many"}, rule)
    assert not check_exploration(passing, {}, rule)
    assert check_exploration(passing, {}, Budgets()) is passing
    first = PromotionCheck("1", "", (), ())
    assert check_exploration(first, {}, rule) is first  # NOTE: nothing to shadow before a first production


def test_the_exploration_record_adds_to_what_the_registry_held() -> None:
    tags = {EXPLORE_TAG + "requests": "40", EXPLORE_TAG + "max_abs": "0.5", "toolchain.kept": "x"}
    base = explored(tags)
    assert base == {"requests": "40", "max_abs": "0.5"}
    found = Exploration("m", "2", "1", "shadow", requests=10, dropped=1, p50_ms=2.0, max_abs=0.25, worst_ratio=3.0)
    record = exploration_record(found, base)
    assert record["requests"] == 50 and record["dropped"] == 1 and record["max_abs"] == 0.5
    assert record["worst_ratio"] == 3.0 and record["p50_ms"] == 2.0 and record["against"] == "1"
    idle = exploration_record(Exploration("m", "2", "", "shadow", dropped=2), {**base, "p50_ms": "7", "against": "1"})
    assert idle["p50_ms"] == 7.0 and idle["against"] == "1" and idle["requests"] == 40


def test_the_exploration_record_starts_again_against_a_new_production() -> None:
    base = {"requests": "40", "beyond": "3", "max_abs": "0.5", "worst_ratio": "2", "against": "1"}
    found = Exploration("m", "3", "2", "shadow", requests=10, max_abs=0.25, worst_ratio=0.5)
    record = exploration_record(found, base)
    assert (record["requests"], record["beyond"], record["max_abs"], record["worst_ratio"]) == (10, 0, 0.25, 0.5)
    assert record["against"] == "2"
