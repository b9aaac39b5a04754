"""Graph optimisation under the parity gate: a literal list of passes, each checked and timed.

Every pass comes from a well-kept library (the onnxscript optimizer, ONNX Runtime's offline and
transformer optimisers, ``torch.jit.freeze``). After each one the candidate is replayed on every
sample set against eager and raced against the current artifact on this host: a pass that breaks
parity, fails, or makes the model slower is skipped, and its `PassResult` says why and by how much.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolchain.build.passes import PASSES, GraphPass, quiet_libraries
from toolchain.core.errors import first_line
from toolchain.core.parity import ParityReport
from toolchain.perf.timing import Timing, paired_ratio, race

__all__ = [
    "PASSES",
    "SLOWER_MARGIN",
    "GraphPass",
    "PassResult",
    "count_nodes",
    "optimize_artifact",
]

KEPT, SKIPPED, FAILED = "kept", "skipped", "failed"
SLOWER_MARGIN = 0.05
"""A pass is skipped when its candidate's median latency exceeds the current one's by more than this."""

Check = Callable[[Path], list[ParityReport]]
"""Replays an artifact file on every sample set and returns one report per set."""
Runner = Callable[[Path], Callable[[], Any]]
"""Loads an artifact file and returns a call that runs it once on the export sample."""


@dataclass
class PassResult:
    """What one pass did: kept, skipped (with why) or failed; nodes and latency before and after."""

    name: str
    status: str
    reason: str = ""
    detail: str = ""
    seconds: float = 0.0
    nodes_before: int = 0
    nodes_after: int = 0
    before: Timing | None = None
    after: Timing | None = None
    reports: list[ParityReport] = field(default_factory=list)

    @property
    def speedup(self) -> float:
        """Current latency over the candidate's, paired round by round (> 1 is faster), 0 when not timed."""
        if self.before is None or self.after is None or self.after.p50_ms <= 0:
            return 0.0
        return paired_ratio(self.before, self.after)

    def __str__(self) -> str:
        timing = f", {self.speedup:.2f}x speed" if self.speedup else ""
        why = f": {self.reason}" if self.reason else ""
        return f"{self.name} {self.status} (nodes {self.nodes_before} -> {self.nodes_after}{timing}){why}"

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        worst = max((o.worst_ratio for r in self.reports for o in r.outputs), default=0.0)
        return {
            "name": self.name,
            "status": self.status,
            "reason": self.reason,
            "detail": self.detail,
            "seconds": round(self.seconds, 3),
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
            "latency_before_ms": round(self.before.p50_ms, 4) if self.before else None,
            "latency_after_ms": round(self.after.p50_ms, 4) if self.after else None,
            "speedup": round(self.speedup, 3),
            "worst_ratio": worst,
        }


def optimize_artifact(
    path: Path,
    fmt: str,
    *,
    check: Check,
    runner: Runner,
    passes: Sequence[GraphPass] = (),
    explain: Callable[[Path, list[ParityReport]], str] = lambda path, reports: "",
    progress: Callable[[str], None] = lambda message: None,
) -> list[PassResult]:
    """Run every pass for `fmt` over the artifact at `path`, keeping each one that stays correct and fast.

    The artifact at `path` is replaced by the best result at the end (it is untouched when no pass
    was kept). Scratch files live next to it and are removed.

    Args:
        path: the artifact's main file, already verified against eager.
        fmt: its format (``"onnx"``, ``"torchscript"``).
        check: replays a candidate file on every sample set.
        runner: loads a file and returns a call that runs it once.
        passes: the pass list; the default is `PASSES`.
        explain: given a candidate that broke parity and its reports, says where it diverges.
        progress: receives one line per pass.
    """
    scratch = path.parent / f".{path.stem}-passes"
    scratch.mkdir(exist_ok=True)
    results: list[PassResult] = []
    current = path
    try:
        for index, graph_pass in enumerate(passes or PASSES):
            if fmt not in graph_pass.formats or not graph_pass.applies(current):
                continue
            if graph_pass.fallback_of and any(r.name == graph_pass.fallback_of and r.status == KEPT for r in results):
                continue
            progress(f"pass {graph_pass.name}")
            candidate = scratch / f"{index}-{graph_pass.name}{path.suffix}"
            result = _try_pass(graph_pass, current, candidate, fmt, check=check, runner=runner)
            if result.status == SKIPPED and result.reports and not all(result.reports):
                where = explain(candidate, result.reports)
                result.reason += f"; {where}" if where else ""
            results.append(result)
            if result.status == KEPT:
                current = candidate
        if current != path:
            shutil.copyfile(current, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return results


def _try_pass(
    graph_pass: GraphPass, current: Path, candidate: Path, fmt: str, *, check: Check, runner: Runner
) -> PassResult:
    result = PassResult(graph_pass.name, FAILED, detail=graph_pass.detail, nodes_before=count_nodes(current, fmt))
    start = time.perf_counter()
    try:
        with quiet_libraries():
            graph_pass.apply(current, candidate)
        result.nodes_after = count_nodes(candidate, fmt)
        result.reports = check(candidate)
        if not all(result.reports):
            bad = next(r for r in result.reports if not r)
            result.status, result.reason = SKIPPED, f"breaks parity on sample {bad.sample!r}: {_first_failure(bad)}"
            return result
        result.before, result.after = race([runner(current), runner(candidate)], min_seconds=0.15)
        if result.speedup < 1 / (1 + SLOWER_MARGIN):
            result.status = SKIPPED
            result.reason = (
                f"slower on this host: {result.after.p50_ms:.3f} ms vs {result.before.p50_ms:.3f} ms "
                f"({result.speedup:.2f}x; allowed down to {1 / (1 + SLOWER_MARGIN):.2f}x)"
            )
            return result
        result.status = KEPT
    except Exception as e:  # NOTE: a library pass that crashes is reported and skipped, never fatal.
        result.status, result.reason = FAILED, f"{type(e).__name__}: {first_line(e)}"
    finally:
        result.seconds = time.perf_counter() - start
    return result


def _first_failure(report: ParityReport) -> str:
    if report.error:
        return f"could not run: {report.error}"
    if report.failures:
        return report.failures[0].describe()
    return next(c.describe() for c in report.checks if not c)


def count_nodes(path: Path, fmt: str) -> int:
    """Nodes in an ONNX graph or in a TorchScript module's inlined graph (0 when unreadable)."""
    try:
        if fmt == "onnx":
            import onnx

            return len(onnx.load(str(path), load_external_data=False).graph.node)
        if fmt == "torchscript":
            import torch

            module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
            return len(list(module.inlined_graph.nodes()))
    except Exception:  # NOTE: a count is evidence for the report, never a reason to fail.
        return 0
    return 0
