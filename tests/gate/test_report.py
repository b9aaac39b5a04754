from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from tests.gate.test_baseline import _path, _result
from toolchain.gate.baseline import entry_for
from toolchain.gate.report import render_json, render_junit, render_markdown
from toolchain.gate.runner import judge


def _outcome():
    baseline = {
        "a.fine": entry_for(_result("a.fine")),
        "b.known": entry_for(_result("b.known", _path("onnx"), _path("torchscript", "rejected"))),
        "z.worse": entry_for(_result("z.worse", _path("onnx", ratio=0.1))),
    }
    results = [
        _result("a.fine"),
        _result("b.known", _path("onnx"), _path("torchscript", "rejected")),
        _result("z.worse", _path("onnx", ratio=0.9)),
    ]
    return judge(results, baseline=baseline, seconds=2.5)


def test_junit_has_one_case_per_model_and_path() -> None:
    root = ET.fromstring(render_junit(_outcome()))
    assert root.get("tests") == "4" and root.get("failures") == "1" and root.get("skipped") == "1"
    cases = {(c.get("classname"), c.get("name")): c for c in root.iter("testcase")}
    assert list(cases) == [("a.fine", "onnx"), ("b.known", "onnx"), ("b.known", "torchscript"), ("z.worse", "onnx")]
    failure = cases[("z.worse", "onnx")].find("failure")
    assert failure is not None and failure.text is not None
    assert failure.get("message", "").startswith("error on sample 'batch-1' grew 9x")
    assert "sample 'export': passed" in failure.text  # the parity table
    assert cases[("b.known", "torchscript")].find("skipped") is not None


def test_markdown_puts_regressions_first() -> None:
    markdown = render_markdown(_outcome())
    lines = markdown.splitlines()
    assert lines[0].startswith("## :x: parity gate FAILED (1 of 3 models)")
    assert lines.index("### Regressions and failures") < lines.index("### Models")
    rows = [line for line in lines if line.startswith("| `")]
    assert rows[0].startswith("| `z.worse` | onnx | error on sample 'batch-1' grew 9x")
    models = markdown.split("### Models")[1]
    assert models.index("z.worse") < models.index("a.fine") < models.index("b.known")
    assert "| `z.worse` | **FAILED** | onnx | 0.9 | 3 |" in models


def test_json_is_standard_and_complete() -> None:
    data = json.loads(render_json(_outcome()))
    assert data["passed"] is False
    assert [c["outcome"] for c in data["cases"]] == ["passed", "passed", "known", "failed"]
    assert data["models"][0]["name"] == "z.worse"


def test_passing_outcome_markdown_has_no_failure_table() -> None:
    markdown = render_markdown(judge([_result("a.fine")]))
    assert markdown.startswith("## :white_check_mark: parity gate passed: 1 models")
    assert "### Failures" not in markdown
