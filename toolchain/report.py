"""Render a pipeline report (the ``report.json`` dict) as Markdown for humans."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["render_markdown"]


def render_markdown(report: Mapping[str, Any]) -> str:
    """``report.md``: stages, parity per artifact x sample set x output, findings, versions."""
    lines = [f"# {report['name']} {report.get('version', '')} — toolchain report", ""]
    lines += [f"Model source: `{report.get('source', '?')}`", "", "## Stages", ""]
    lines += ["| stage | status | seconds | detail |", "|---|---|---:|---|"]
    lines += [
        f"| {s['name']} | {s['status']} | {s['seconds']:.2f} | {_cell(s.get('detail', ''))} |"
        for s in report.get("stages", [])
    ]
    sizes = {s["name"]: s["sizes"] for s in report.get("samples", [])}
    artifacts = {a["path"]: a for a in report.get("artifacts", [])}
    tol = report.get("tolerance", {})
    for path, parity in report.get("parity", {}).items():
        art = artifacts.get(path, {})
        lines += ["", f"## Parity against eager: `{path}` ({parity.get('stage', '?')})", ""]
        lines += [
            f"Exporter `{art.get('exporter', '?')}`, opset {art.get('opset', '?')}, "
            f"{art.get('export_seconds', 0):.2f} s. Allowed: atol={tol.get('atol')} rtol={tol.get('rtol')}"
            + (f", per output {tol['per_output']}" if tol.get("per_output") else "")
            + ".",
            "",
            "| sample set | sizes | output | max abs | max rel | worst / allowed | verdict |",
            "|---|---|---|---:|---:|---:|---|",
        ]
        for sample in parity.get("samples", []):
            where = ", ".join(f"{k}={v}" for k, v in sizes.get(sample["sample"], {}).items())
            if sample.get("error"):
                lines.append(f"| {sample['sample']} | {where} | — | — | — | — | FAIL: {_cell(sample['error'])} |")
            for name, o in sample.get("outputs", {}).items():
                verdict = "pass" if o["passed"] else f"FAIL {_cell(o.get('reason', ''))}".strip()
                lines.append(
                    f"| {sample['sample']} | {where} | {name} | {o['max_abs']:.3g} | {o['max_rel']:.3g} "
                    f"| {o['worst_ratio']:.3g} | {verdict} |"
                )
    findings = report.get("findings", [])
    lines += ["", "## Findings", ""]
    lines += [
        f"- **{f['kind']}** {f['message']}" + (f" (`{f['source']}`)" if f.get("source") else "") for f in findings
    ] or ["None."]
    versions = report.get("versions", {})
    lines += ["", "## Versions", "", ", ".join(f"{k} {v}" for k, v in versions.items()), ""]
    return "\n".join(lines)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
