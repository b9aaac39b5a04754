"""How the gate shows what it found: JUnit XML, Markdown for a pull-request comment, JSON, live progress."""

from __future__ import annotations

import json
import math
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from toolchain.gate.runner import FAILED, KNOWN, GateOutcome, GateTally

__all__ = ["live_progress", "render_json", "render_junit", "render_markdown", "write_reports"]

_CELL = 300
_FOLD = 30
_DETAILS = 20


def render_junit(outcome: GateOutcome) -> str:
    """JUnit XML: one test case per model x export path; a failure's text is its parity table."""
    failures = sum(c.outcome == FAILED for c in outcome.cases)
    skipped = sum(c.outcome == KNOWN for c in outcome.cases)
    counts = {"tests": str(len(outcome.cases)), "failures": str(failures), "errors": "0", "skipped": str(skipped)}
    root = ET.Element("testsuites", {"name": "toolchain gate", **counts, "time": f"{outcome.seconds:.3f}"})
    suite = ET.SubElement(root, "testsuite", {"name": "toolchain-gate", **counts, "time": f"{outcome.seconds:.3f}"})
    for case in outcome.cases:
        node = ET.SubElement(
            suite, "testcase", {"classname": case.model, "name": case.artifact, "time": f"{case.seconds:.3f}"}
        )
        if case.outcome == FAILED:
            failure = ET.SubElement(node, "failure", {"message": case.message[:_CELL], "type": "parity"})
            failure.text = f"{case.message}\n\n{case.details}".strip()
        elif case.outcome == KNOWN:
            ET.SubElement(node, "skipped", {"message": case.message[:_CELL]})
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def render_markdown(outcome: GateOutcome) -> str:
    """A pull-request comment: summary line, regressions and failures first, then every model."""
    icon = ":white_check_mark:" if outcome else ":x:"
    lines = [f"## {icon} {outcome.summary()}", ""]
    if outcome.failed:
        title = "Regressions and failures" if outcome.with_baseline else "Failures"
        lines += [f"### {title}", "", "| model | path | what failed |", "|---|---|---|"]
        lines += [f"| `{c.model}` | {c.artifact} | {_cell(c.message)} |" for c in outcome.failed]
        lines.append("")
    if outcome.notes:
        lines += ["### Changes that do not fail the gate", "", "| model | path | change |", "|---|---|---|"]
        lines += [f"| `{c.model}` | {c.artifact or '-'} | {_cell(c.message)} |" for c in outcome.notes]
        lines.append("")
    lines += ["### Models", ""]
    folded = len(outcome.results) > _FOLD
    if folded:  # NOTE: keeps a comment over hundreds of models readable; failing models are listed above.
        lines += [f"<details><summary>All {len(outcome.results)} models</summary>", ""]
    lines += [
        "| model | verdict | kept paths | worst error (x allowed) | ONNX nodes | time |",
        "|---|---|---|---:|---:|---:|",
    ]
    failing = {c.model for c in outcome.failed}
    for result in outcome.ordered_results():
        verdict = "**FAILED**" if result["name"] in failing else "passed"
        if result["name"] not in failing and result["status"] != "passed":
            verdict = "known failure"
        nodes = next((p["nodes"] for p in result["paths"] if p.get("nodes") is not None), None)
        seconds = f"{result['seconds']:.1f}s" + (" (cached)" if result.get("cached") else "")
        lines.append(
            f"| `{result['name']}` | {verdict} | {', '.join(result['kept']) or '-'} | {_worst(result)} | "
            f"{nodes if nodes is not None else '-'} | {seconds} |"
        )
    if folded:
        lines += ["", "</details>"]
    details = [c for c in outcome.failed if c.details]
    if details:
        lines += ["", "### Details", ""]
        for case in details[:_DETAILS]:
            lines += [f"<details><summary>{case.model} / {case.artifact}</summary>", "", "```", case.details, "```"]
            lines += ["", "</details>", ""]
        if len(details) > _DETAILS:
            lines.append(f"... and {len(details) - _DETAILS} more in the JUnit and JSON reports.")
    return "\n".join(lines).rstrip() + "\n"


def render_json(outcome: GateOutcome) -> str:
    """Everything: verdict, summary, cases, changes against the baseline and every model's result."""
    data = {
        "passed": bool(outcome),
        "summary": outcome.summary(),
        "seconds": round(outcome.seconds, 3),
        "cases": [
            {
                "model": c.model,
                "artifact": c.artifact,
                "outcome": c.outcome,
                "regression": c.regression,
                "message": c.message,
            }
            for c in outcome.cases
        ],
        "changes": [
            {"model": c.model, "artifact": c.artifact, "kind": c.kind, "regression": c.regression, "message": c.message}
            for c in outcome.changes
        ],
        "models": outcome.ordered_results(),
    }
    return json.dumps(_finite(data), indent=2, sort_keys=True) + "\n"


def write_reports(outcome: GateOutcome, *, junit: Path | None, markdown: Path | None, json_path: Path | None) -> None:
    """Write each report whose path is given."""
    for path, render in ((junit, render_junit), (markdown, render_markdown), (json_path, render_json)):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(render(outcome), encoding="utf-8")


@contextmanager
def live_progress(total: int, *, enabled: bool = True) -> Iterator[Callable[[GateTally], None]]:
    """A progress callback: a rich bar (done/failed/running, ETA) on a terminal, one line per model otherwise."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    if not enabled:
        yield lambda tally: None
        return
    if not console.is_terminal:

        def line(tally: GateTally) -> None:
            if tally.last and not tally.last.endswith("cached)"):
                print(f"[{tally.done}/{tally.total}] {tally.last}", file=sys.stderr, flush=True)

        yield line
        return
    columns = (
        TextColumn("[bold]gate"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[counts]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("gate", total=total, counts="")

        def update(tally: GateTally) -> None:
            counts = f"done {tally.done} failed {tally.failed} running {tally.running} cached {tally.cached}"
            bar.update(task, completed=tally.done, counts=counts)

        yield update


def _worst(result: Mapping[str, Any]) -> str:
    values = [
        float(s["worst_ratio"])
        for p in result["paths"]
        if p["status"] == "kept"
        for s in p["samples"].values()
        if s.get("worst_ratio") is not None
    ]
    return f"{max(values):.3g}" if values else "-"


def _cell(text: str) -> str:
    flat = " ".join(text.split()).replace("|", "\\|")
    return flat if len(flat) <= _CELL else flat[: _CELL - 3] + "..."


def _finite(value: Any) -> Any:
    """`value` with non-finite floats as text, so the JSON is standard."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
