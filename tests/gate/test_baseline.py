from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from toolchain.core.errors import GateError
from toolchain.gate.baseline import (
    BaselinePolicy,
    compare_entry,
    entry_for,
    load_baseline,
    stable_float,
    write_baseline,
)
from toolchain.gate.runner import judge


def _path(
    exporter: str, status: str = "kept", ratio: float = 0.01, ops: dict[str, int] | None = None
) -> dict[str, Any]:
    samples = {
        s: {"passed": status == "kept", "error": "", "max_abs": ratio * 1e-5, "worst_ratio": ratio}
        for s in ("export", "batch-1")
    }
    ops = ops if ops is not None else {"Gemm": 2, "Relu": 1}
    return {
        "exporter": exporter,
        "format": "onnx" if exporter.startswith("onnx") else exporter,
        "status": status,
        "reason": "" if status == "kept" else "parity failed on sample 'batch-1'",
        "localization": "",
        "samples": samples,
        "table": "sample 'export': passed",
        "nodes": sum(ops.values()) if exporter == "onnx" else None,
        "ops": ops if exporter == "onnx" else {},
    }


def _result(name: str = "m.one", *paths: dict[str, Any], status: str = "passed") -> dict[str, Any]:
    paths = paths or (_path("onnx"),)
    return {
        "name": name,
        "source": "m:One",
        "status": status,
        "failed_stage": "" if status == "passed" else "export",
        "detail": "",
        "seconds": 1.0,
        "formats": [p["exporter"] for p in paths],
        "kept": [p["exporter"] for p in paths if p["status"] == "kept"],
        "paths": list(paths),
    }


def test_stable_float_rounds_to_three_significant_digits() -> None:
    assert stable_float(0.000123456) == 0.000123
    assert stable_float(12345.6) == 12300.0
    assert stable_float(float("inf")) == "inf"
    assert stable_float(None) is None


def test_writing_is_deterministic_and_sorted(tmp_path: Path) -> None:
    results = [_result("z.last", _path("onnx", ratio=0.0123456)), _result("a.first")]
    write_baseline(tmp_path / "one.json", results)
    write_baseline(tmp_path / "two.json", list(reversed(results)))
    text = (tmp_path / "one.json").read_text()
    assert text == (tmp_path / "two.json").read_text()
    assert text.index('"a.first"') < text.index('"z.last"')
    assert '"worst_ratio": 0.0123' in text
    assert load_baseline(tmp_path / "one.json")["z.last"]["artifacts"]["onnx"]["ops"] == {"Gemm": 2, "Relu": 1}


def test_update_keeps_other_entries_unless_pruned(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    write_baseline(path, [_result("a.old")])
    previous = load_baseline(path)
    assert set(write_baseline(path, [_result("b.new")], previous=previous)["models"]) == {"a.old", "b.new"}
    assert set(write_baseline(path, [_result("b.new")], previous=previous, prune=True)["models"]) == {"b.new"}


@pytest.mark.parametrize("content", ["not json", json.dumps({"schema": 99, "models": {}}), json.dumps([1])])
def test_malformed_baseline_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "b.json"
    path.write_text(content)
    with pytest.raises(GateError, match=r"b\.json"):
        load_baseline(path)


@pytest.mark.parametrize(
    ("before", "after", "regression"),
    [
        (0.01, 0.019, False),  # grew < 2x
        (0.1, 0.19, False),
        (0.1, 0.25, True),  # grew 2.5x, still within tolerance: a regression all the same
        (0.001, 0.04, False),  # 40x but below the noise floor (5% of the allowed error)
        (0.0, 0.3, True),
    ],
)
def test_error_growth_beyond_the_factor_is_a_regression(before: float, after: float, regression: bool) -> None:
    entry = entry_for(_result("m.one", _path("onnx", ratio=before)))
    changes = compare_entry(_result("m.one", _path("onnx", ratio=after)), entry, BaselinePolicy())
    assert [c.kind for c in changes if c.regression] == (["error-growth"] * 2 if regression else [])


def test_growth_factor_is_a_policy_field() -> None:
    entry = entry_for(_result("m.one", _path("onnx", ratio=0.1)))
    result = _result("m.one", _path("onnx", ratio=0.25))
    assert not [c for c in compare_entry(result, entry, BaselinePolicy(growth=3.0)) if c.regression]
    with pytest.raises(GateError, match="factor >= 1"):
        BaselinePolicy(growth=0.5)


def test_kept_path_now_rejected_fails_and_known_rejection_does_not() -> None:
    baseline = {"m.one": entry_for(_result("m.one", _path("onnx"), _path("torchscript", "rejected")))}
    same = judge([_result("m.one", _path("onnx"), _path("torchscript", "rejected"))], baseline=baseline)
    assert same
    assert [c.outcome for c in same.cases] == ["passed", "known"]
    worse = judge([_result("m.one", _path("onnx", "rejected"), _path("torchscript", "rejected"))], baseline=baseline)
    assert not worse
    assert [(c.artifact, c.outcome) for c in worse.failed] == [("onnx", "failed")]
    assert worse.failed[0].message.startswith("kept in the baseline, now rejected")


def test_model_that_now_fails_is_a_regression() -> None:
    baseline = {"m.one": entry_for(_result("m.one"))}
    failed = _result("m.one", _path("onnx", "rejected"), status="failed")
    kinds = {c.kind for c in compare_entry(failed, baseline["m.one"], BaselinePolicy())}
    assert kinds == {"now-fails", "path-rejected"}


def test_notes_do_not_fail_the_gate() -> None:
    baseline = {"m.one": entry_for(_result("m.one", _path("onnx"), _path("torchscript", "rejected")))}
    moved = _result("m.one", _path("onnx", ops={"Gemm": 2, "Relu": 1, "Mul": 1}), _path("torchscript"))
    outcome = judge([moved], baseline=baseline)
    assert outcome
    assert {c.kind: c.message for c in outcome.notes} == {
        "graph-changed": "ONNX graph changed: 3 -> 4 nodes (Mul +1)",
        "path-kept": "rejected in the baseline, now kept; update the baseline",
    }


def test_new_model_needs_an_entry_unless_allowed() -> None:
    assert not judge([_result("m.new")], baseline={})
    assert judge([_result("m.new")], baseline={}, policy=BaselinePolicy(allow_new=True))
    assert judge([_result("m.new")])  # no baseline at all: nothing to be missing from
