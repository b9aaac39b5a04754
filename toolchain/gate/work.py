"""The gate's unit of work: export and verify one model, summarised as a plain JSON-able dict.

`check_model` runs in a worker process (local pool or Ray): it takes a task dict and returns a
result dict, so neither side needs to pickle a model, a spec or a report. Result layout::

    {"name", "source", "status": "passed" | "failed" | "error", "failed_stage", "detail", "seconds",
     "formats", "kept": [exporter, ...],
     "paths": [{"exporter", "format", "status": "kept" | "rejected", "reason", "localization",
                "samples": {set: {"sizes", "passed", "max_abs", "worst_ratio", "error"}},
                "table": parity table text, "nodes", "ops": {op_type: count},
                "bench": {batch: eager median / artifact median} (with ``bench`` only)}]}
"""

from __future__ import annotations

import collections
import math
import sys
import tempfile
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from toolchain.core.errors import ToolchainError, first_line

__all__ = ["check_model", "error_result", "json_float", "make_task"]


def make_task(
    ref: str,
    *,
    imports: tuple[str, ...] = (),
    formats: tuple[str, ...] = (),
    seed: int = 0,
    out: str = "",
    threads: int = 0,
    bench: bool = False,
) -> dict[str, Any]:
    """The task dict `check_model` takes.

    Args:
        ref: what to check: a registered name, or a TARGET with a colon (``file.py:Model``).
        imports: modules and ``.py`` files to import first (they register the specs).
        formats: export paths (empty: the spec's own; ``("auto",)``: the best ONNX path).
        seed: seed of the generated sample inputs.
        out: folder to keep the package in (``out/<name>``); empty: a temporary folder.
        threads: torch intra-op threads in the worker; 0 leaves torch's default.
        bench: also time every kept artifact beside eager (`toolchain.perf.bench`) and record the ratio.
    """
    return {
        "ref": ref,
        "imports": list(imports),
        "sys_path": [p for p in sys.path if p and Path(p).is_dir()],
        "formats": list(formats),
        "seed": seed,
        "out": out,
        "threads": threads,
        "bench": bench,
    }


def error_result(name: str, detail: str, *, seconds: float = 0.0) -> dict[str, Any]:
    """A result for a model that could not be checked at all (import error, crashed worker)."""
    return {
        "name": name,
        "source": "",
        "status": "error",
        "failed_stage": "error",
        "detail": detail,
        "seconds": round(seconds, 3),
        "formats": [],
        "kept": [],
        "paths": [],
    }


def check_model(task: Mapping[str, Any]) -> dict[str, Any]:
    """Export and verify the model `task` names; never raises (a failure is a result too)."""
    start = time.perf_counter()
    name = str(task["ref"])
    try:
        _prepare(task)
        spec = _resolve(name, task["imports"])
        name = spec.name
        return _check(spec, task, start)
    except ToolchainError as e:
        return error_result(name, str(e), seconds=time.perf_counter() - start)
    except Exception as e:  # NOTE: one broken model must not stop the gate over hundreds of others.
        where = traceback.extract_tb(e.__traceback__)[-1]
        detail = f"{first_line(e)} (at {where.filename}:{where.lineno})"
        return error_result(name, detail, seconds=time.perf_counter() - start)


def _prepare(task: Mapping[str, Any]) -> None:
    for path in task["sys_path"]:
        if path not in sys.path and Path(path).is_dir():
            sys.path.append(path)
    if task["threads"]:
        import torch

        torch.set_num_threads(int(task["threads"]))


def _resolve(ref: str, imports: list[str]) -> Any:
    from toolchain.core.spec import SPECS
    from toolchain.core.target import import_source, resolve_target

    for where in imports:
        import_source(where)
    return resolve_target(ref) if ":" in ref or ref not in SPECS else SPECS.get(ref)


def _check(spec: Any, task: Mapping[str, Any], start: float) -> dict[str, Any]:
    from toolchain.build.pipeline import export_package

    with tempfile.TemporaryDirectory(prefix="toolchain-gate-") as tmp:
        out = Path(task["out"] or tmp) / spec.name
        # NOTE: a second process per export only where this job has two cores to itself (`threads`; 0: the
        # host's default).
        threads = int(task.get("threads") or 0)
        workers = 0 if threads == 0 else 2 if threads >= 2 else 1
        result = export_package(
            spec, out, formats=tuple(task["formats"]), force=True, seed=int(task["seed"]), workers=workers
        )
        failed = result.failed_stage
        # NOTE: precision variants (fp16, int8) are artifacts of their own where the pipeline builds them.
        paths = [*result.paths, *getattr(result, "variants", [])]
        summaries = [_path_summary(p, out) for p in paths]
        if task.get("bench") and result:
            _bench(spec, out, summaries, paths)
        return {
            "name": spec.name,
            "source": spec.source,
            "status": "passed" if result else "failed",
            "failed_stage": failed.name if failed else "",
            "detail": failed.detail if failed else "",
            "seconds": round(time.perf_counter() - start, 3),
            "formats": list(task["formats"]) or list(spec.formats),
            "kept": [_name(p) for p in paths if p.status == "kept"],
            "paths": summaries,
        }


def _bench(spec: Any, package: Path, summaries: list[dict[str, Any]], paths: list[Any]) -> None:
    """Add ``bench``: {batch: eager median / artifact median} to each kept artifact's summary."""
    from toolchain.perf.bench import bench_package

    try:
        report = bench_package(package, spec=spec)
    except Exception as e:  # NOTE: timing is evidence, not a verdict; a failed bench leaves it unmeasured.
        for summary in summaries:
            summary["bench_error"] = first_line(e)
        return
    for summary, path in zip(summaries, paths, strict=True):
        rows = [r for r in report.rows if path.artifact is not None and r.artifact == path.artifact.path]
        ratios = {str(r.batch): json_float(r.ratio_vs_eager) for r in rows if r.parity and r.ratio_vs_eager}
        if ratios:
            summary["bench"] = ratios


def _name(path: Any) -> str:
    """``onnx``, or ``onnx:fp16`` for a precision variant."""
    return str(getattr(path, "name", path.exporter))


def _path_summary(path: Any, package: Path) -> dict[str, Any]:
    # NOTE: the reports of the file that ships: after the optimisation passes the pipeline kept, if any.
    reports = getattr(path, "final_reports", path.reports)
    samples = {}
    for report in reports:
        samples[report.sample] = {
            "passed": bool(report),
            "error": report.error,
            "max_abs": json_float(max((o.max_abs for o in report.outputs), default=0.0)),
            "worst_ratio": json_float(max((o.worst_ratio for o in report.outputs), default=0.0)),
        }
    artifact = path.artifact
    summary: dict[str, Any] = {
        "exporter": _name(path),
        "format": artifact.format if artifact else "",
        "status": path.status,
        "reason": path.reason,
        "localization": str(path.localization) if path.localization is not None else "",
        "samples": samples,
        "table": "\n".join(str(r) for r in reports),
        "nodes": None,
        "ops": {},
    }
    if artifact is not None and artifact.format == "onnx" and path.status == "kept":
        summary["nodes"], summary["ops"] = _op_histogram(package / artifact.path)
    return summary


def json_float(value: float) -> float | str:
    """`value` as JSON allows it: finite floats as they are, ``"inf"`` / ``"-inf"`` / ``"nan"`` as text."""
    value = float(value)
    return value if math.isfinite(value) else str(value)


def _op_histogram(path: Path) -> tuple[int | None, dict[str, int]]:
    """Node count and op histogram of an ONNX file, subgraphs and local functions included."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # NOTE: a histogram is evidence, not a verdict; an unreadable file just has none.
        return None, {}
    counts: collections.Counter[str] = collections.Counter()
    graphs = [model.graph]
    nodes = [*(n for f in model.functions for n in f.node)]
    while graphs:
        graph = graphs.pop()
        nodes.extend(graph.node)
        for node in graph.node:
            graphs.extend(a.g for a in node.attribute if a.HasField("g"))
            graphs.extend(g for a in node.attribute for g in a.graphs)
    for node in nodes:
        counts[f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type] += 1
    return sum(counts.values()), dict(sorted(counts.items()))
