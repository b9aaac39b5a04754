from __future__ import annotations

from typing import Any

from toolchain.package.report import render_markdown


def _finding(kind: str, message: str, source: str = "", *, noise: bool = False) -> dict[str, Any]:
    return {"kind": kind, "message": message, "source": source, "noise": noise}


def _path(name: str, status: str, findings: list[dict[str, Any]], reason: str = "") -> dict[str, Any]:
    return {
        "exporter": name,
        "status": status,
        "reason": reason,
        "export_seconds": 0.1,
        "artifact": {"findings": findings},
        "samples": [],
    }


def _report(**fields: Any) -> dict[str, Any]:
    return {"name": "m", "version": "1", "source": "m.py:M", "tolerance": {"atol": 1e-5, "rtol": 1e-4}, **fields}


def test_findings_put_what_explains_a_rejection_first_and_collapse_library_noise() -> None:
    jit = _finding("deprecation", "`torch.jit.save` is deprecated", "torch/jit/_serialization.py:89", noise=True)
    frozen = _finding("frozen-value", "the trace turned a tensor value into a constant", "model.py:12")
    traced = _finding("traced", "control flow was frozen at the export sizes")
    report = _report(
        findings=[_finding("training-mode", "3 module(s) were in training mode (<root>, a, b); exported in eval mode")],
        paths=[
            _path("torchscript", "kept", [jit, traced]),
            _path("torchscript_trace", "rejected", [jit, traced, frozen], reason="another graph on values-wide"),
        ],
    )
    md = render_markdown(report)
    findings = md.split("## Findings", 1)[1]
    rejected = findings.index("**torchscript_trace rejected**: another graph on values-wide")
    assert rejected < findings.index("**frozen-value**") < findings.index("training mode") < findings.index("<details>")
    assert findings.index("</details>") > findings.index("`torch.jit.save` is deprecated") > findings.index("<details>")
    assert findings.count("`torch.jit.save` is deprecated") == 1
    assert "- torchscript, torchscript_trace: **deprecation**" in findings
    assert findings.count("training mode") == 1 and "(<root>, a, b)" not in findings
    assert findings.count("**traced**") == 2  # under the rejection, and for the kept path


def test_findings_without_any_say_none() -> None:
    md = render_markdown(_report(paths=[_path("onnx", "kept", [])]))
    assert md.split("## Findings", 1)[1].strip().startswith("None.")


def test_drift_shows_absolute_error_against_the_fp32_tolerance_beside_its_own() -> None:
    def stage(name: str, max_abs: float, ratio: float, spec_ratio: float, atol: float) -> dict[str, Any]:
        out = {"max_abs": max_abs, "worst_ratio": ratio, "spec_ratio": spec_ratio, "atol": atol, "rtol": atol}
        return {
            "stage": name,
            "passed": True,
            "nodes": 5,
            "bytes": 2048,
            "worst": {"export": {"y": out}},
        }

    path = _path("onnx", "kept", [])
    path["drift"] = [stage("exported", 1e-7, 0.002, 0.002, 1e-5), stage("fp16", 3e-3, 0.2, 150.0, 1e-2)]
    md = render_markdown(_report(paths=[path]))
    assert "multiple of the spec's fp32 tolerance (atol=1e-05 rtol=0.0001)" in md
    assert "| onnx | exported | 1e-07 | 0.002 | atol=1e-05 rtol=1e-05 | 0.002 | yes | 5 | 2 |" in md
    assert "| onnx | fp16 | 0.003 | 150 | atol=0.01 rtol=0.01 | 0.2 | yes | 5 | 2 |" in md
    assert "latency ms" not in md
