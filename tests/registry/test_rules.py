from __future__ import annotations

import dataclasses
import re

import pytest

from toolchain.registry.evidence import Evidence, Latency
from toolchain.registry.rules import Budgets, check_promotion


def _evidence(*, size: int = 1000, p50: float = 1.0, host: str = "hostA", outputs: str = "y") -> Evidence:
    return Evidence(
        name="m",
        package_version="1",
        created="2026-01-01T00:00:00+00:00",
        signature_sha256=outputs * 64,
        source="pkg:Model",
        source_sha256="",
        weights_sha256="w" * 64,
        kept=("onnx/model.onnx",),
        worst_ratio={"onnx/model.onnx": 0.1},
        sizes={"onnx/model.onnx": size},
        ops=5,
        latency={
            "1": Latency("onnx/model.onnx", "ort", p50, host),
            "16": Latency("onnx/model.onnx", "ort", p50 * 4, host),
        },
    )


def test_first_version_needs_only_to_verify() -> None:
    assert check_promotion("1", _evidence(), verified="", production=None)
    refused = check_promotion("1", _evidence(), verified="onnx/model.onnx: output 'y' too far", production=None)
    assert not refused
    assert "does not verify on this host" in refused.describe()


@pytest.mark.parametrize(
    ("candidate", "problem"),
    [
        (_evidence(size=1200), r"size 1200 B is 1\.20x production's 1000 B \(budget \+10%\)"),
        (_evidence(p50=1.5), r"p50 at batch 1 is 1\.5 ms, 1\.50x production's 1 ms"),
        (_evidence(outputs="z"), "signature zzzzzzzzzzzz differs from production's yyyyyyyyyyyy"),
    ],
)
def test_regression_beyond_budget_is_a_problem(candidate: Evidence, problem: str) -> None:
    check = check_promotion("2", candidate, verified="", production=("1", _evidence()))
    assert not check
    assert check.production == "1"
    assert len(check.problems) == (2 if "p50" in problem else 1)  # a slower model is slower at both batches
    assert any(re.search(problem, p) for p in check.problems), check.problems


def test_within_budget_and_budgets_are_data() -> None:
    current = ("1", _evidence())
    assert check_promotion("2", _evidence(size=1090, p50=1.09), verified="", production=current)
    assert not check_promotion("2", _evidence(size=1090), verified="", production=current, budgets=Budgets(size=0.05))
    assert check_promotion("2", _evidence(size=2000), verified="", production=current, budgets=Budgets(size=1.5))


def test_latency_from_another_host_is_noted_not_compared() -> None:
    check = check_promotion("2", _evidence(p50=9.0, host="hostB"), verified="", production=("1", _evidence()))
    assert check
    assert any("different hosts (hostB vs hostA)" in n for n in check.notes)


def test_evidence_round_trips_through_its_tags() -> None:
    evidence = _evidence()
    tags = evidence.tags()
    assert Evidence.from_tags(tags) == evidence
    assert tags["toolchain.latency_ms.batch16"] == "4"
    assert tags["toolchain.size_bytes"] == "1000"
    assert dataclasses.replace(evidence, sizes={"a": 1, "b": 2}).size_bytes == 3
