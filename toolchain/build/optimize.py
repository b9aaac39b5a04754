"""Graph optimisation under the parity gate: a literal list of passes, each judged by parity and structure.

Every pass comes from a well-kept library (the onnxscript optimizer, ONNX Runtime's offline and
transformer optimisers, ``torch.jit.freeze``). After each one the candidate is compared with the
current artifact (a graph the pass left as it was is "no change"; one with more nodes is not kept)
and replayed on every sample set against eager: a pass that breaks parity or fails is skipped, and its
`PassResult` says why. Nothing here is timed: the same model gives the same pass set on every run and
host, and which artifact runs fastest is for ``toolchain bench``, which races them side by side.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporters._speedups import fast_pattern_matching
from toolchain.build.passes import PASSES, GraphPass, quiet_libraries
from toolchain.core.errors import first_line
from toolchain.core.parity import ParityReport

__all__ = [
    "PASSES",
    "GraphPass",
    "PassResult",
    "count_nodes",
    "graph_digest",
    "optimize_artifact",
]

KEPT, SKIPPED, FAILED, NO_CHANGE = "kept", "skipped", "failed", "no change"

Check = Callable[[Path], list[ParityReport]]
"""Replays an artifact file on every sample set and returns one report per set."""


@dataclass
class PassResult:
    """What one pass did: kept, no change, skipped (with why) or failed; nodes before and after."""

    name: str
    status: str
    reason: str = ""
    detail: str = ""
    seconds: float = 0.0
    nodes_before: int = 0
    nodes_after: int = 0
    reports: list[ParityReport] = field(default_factory=list)

    def __str__(self) -> str:
        why = f": {self.reason}" if self.reason else ""
        return f"{self.name} {self.status} (nodes {self.nodes_before} -> {self.nodes_after}){why}"

    def to_dict(self) -> dict[str, Any]:
        """JSON form; `seconds` stays out of it, so the report a package carries is the same on every run."""
        worst = max((o.worst_ratio for r in self.reports for o in r.outputs), default=0.0)
        return {
            "name": self.name,
            "status": self.status,
            "reason": self.reason,
            "detail": self.detail,
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
            "worst_ratio": worst,
        }


def optimize_artifact(
    path: Path,
    fmt: str,
    *,
    check: Check,
    passes: Sequence[GraphPass] = (),
    explain: Callable[[Path, list[ParityReport]], str] = lambda path, reports: "",
    progress: Callable[[str], None] = lambda message: None,
    exporter: str = "",
) -> list[PassResult]:
    """Run every pass for `fmt` over the artifact at `path`, keeping each one that changes it and stays correct.

    A pass is kept when its graph differs from the current one, has no more nodes, and matches eager
    on every sample set. Passes are applied on top of one another and the last result replayed first:
    when it matches eager, every pass in the run is kept on that one replay; when it does not, the
    results before it are replayed from the last backwards, the first one that matches is kept and the
    pass after it skipped (with why), and the remaining passes run again from there. The artifact at
    `path` is replaced by the last kept result at the end (untouched when none was kept). Scratch files
    live next to it and are removed.

    NOTE: one replay per run instead of one per pass: replays are most of an export's time on small
    models, and nearly every pass keeps parity. The shipped file is always the one replayed.

    Args:
        path: the artifact's main file, already verified against eager.
        fmt: its format (``"onnx"``, ``"torchscript"``).
        check: replays a candidate file on every sample set.
        passes: the pass list; the default is `PASSES`.
        explain: given a candidate that broke parity and its reports, says where it diverges.
        progress: receives one line per pass.
        exporter: what wrote the artifact; passes it already applied (`GraphPass.done_by`) are not run.
    """
    scratch = path.parent / f".{path.stem}-passes"
    scratch.mkdir(exist_ok=True)
    results: dict[int, PassResult] = {}
    pending = [(i, p) for i, p in enumerate(passes or PASSES) if fmt in p.formats]
    done = [(i, p) for i, p in pending if exporter and exporter in p.done_by]
    nodes = count_nodes(path, fmt) if done else 0
    for i, p in done:
        results[i] = PassResult(p.name, NO_CHANGE, f"not run: {exporter} applied it", p.detail, 0.0, nodes, nodes)
    pending = [(i, p) for i, p in pending if i not in results]
    current, attempt = path, 0
    try:
        while pending:
            attempt += 1
            run = _apply_run(pending, current, scratch / str(attempt), path.name, fmt, results, progress)
            verified, reports, failed = _longest_verified(run, check)
            stop = failed[0] if failed else max(i for i, _ in run) if run else -1
            results.update({i: applied.result for i, applied in run if i <= stop})
            for k, (i, candidate) in enumerate(verified):
                results[i].status, results[i].reports, current = KEPT, reports, candidate
                if k < len(verified) - 1:
                    results[i].reason = "replayed together with the passes after it"
            if failed is None:
                break
            index, candidate, bad_reports = failed
            bad = next(r for r in bad_reports if not r)
            skipped = results[index]
            skipped.status, skipped.reports = SKIPPED, bad_reports
            skipped.reason = f"breaks parity on sample {bad.sample!r}: {_first_failure(bad)}"
            where = explain(candidate, bad_reports)
            skipped.reason += f"; {where}" if where else ""
            pending = [(i, p) for i, p in pending if i > index]
        if current != path:
            shutil.copyfile(current, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return [results[i] for i in sorted(results)]


@dataclass
class _Applied:
    result: PassResult
    candidate: Path | None
    """The file the pass wrote, when it changed the graph (not yet replayed); None otherwise."""


def _apply_run(
    pending: Sequence[tuple[int, GraphPass]],
    start: Path,
    folder: Path,
    name: str,
    fmt: str,
    done: dict[int, PassResult],
    progress: Callable[[str], None],
) -> list[tuple[int, _Applied]]:
    """Apply the pending passes on top of one another from `start`, judging each by structure alone."""
    run: list[tuple[int, _Applied]] = []
    current = start
    for index, graph_pass in pending:
        if not graph_pass.applies(current):
            continue
        earlier = [*done.values(), *(a.result for _, a in run)]
        # NOTE: a milder configuration is tried only where the full one rewrote the graph and broke it or
        # failed: where the full one found nothing to rewrite, the milder one finds nothing either.
        settled = (KEPT, _CHANGED, NO_CHANGE)
        if graph_pass.fallback_of and any(r.name == graph_pass.fallback_of and r.status in settled for r in earlier):
            continue
        progress(f"pass {graph_pass.name}")
        # NOTE: each candidate keeps the artifact's file name: torch.jit.save names the archive's
        # records after the file, so a scratch name would end up in the shipped bytes.
        candidate = folder / f"{index}-{graph_pass.name}" / name
        candidate.parent.mkdir(parents=True)
        result = _try_pass(graph_pass, current, candidate, fmt)
        changed = result.status == _CHANGED
        run.append((index, _Applied(result, candidate if changed else None)))
        current = candidate if changed else current
    return run


def _longest_verified(
    run: list[tuple[int, _Applied]], check: Check
) -> tuple[list[tuple[int, Path]], list[ParityReport], tuple[int, Path, list[ParityReport]] | None]:
    """The longest start of the run's changed passes whose last file matches eager, its reports, and the pass after it.

    The pass after it comes with its file and failing reports; None when the whole run matched.
    """
    changed = [(i, a.candidate) for i, a in run if a.candidate is not None]
    failed = None
    for k in range(len(changed), 0, -1):
        index, candidate = changed[k - 1]
        reports = check(candidate)
        if all(reports):
            return changed[:k], reports, failed
        failed = (index, candidate, reports)
    return [], [], failed


_CHANGED = "changed"
"""A pass whose graph differs and has no more nodes; kept or skipped once replayed."""


def _try_pass(graph_pass: GraphPass, current: Path, candidate: Path, fmt: str) -> PassResult:
    result = PassResult(graph_pass.name, FAILED, detail=graph_pass.detail, nodes_before=count_nodes(current, fmt))
    start = time.perf_counter()
    try:
        with quiet_libraries(), fast_pattern_matching():
            graph_pass.apply(current, candidate)
        try:
            result.nodes_after = _count_nodes(candidate, fmt)
        except Exception as e:  # NOTE: e.g. torch.jit.optimize_for_inference's MKLDNN ops: saved, never loadable
            raise _Unreadable(f"the file it wrote does not load back ({type(e).__name__}: {first_line(e)})") from e
        if result.nodes_after == result.nodes_before and _same_graph(current, candidate, fmt):
            result.status, result.reason = NO_CHANGE, "the graph is the same as before the pass"
        elif result.nodes_after > result.nodes_before:
            result.status = SKIPPED
            result.reason = f"grows the graph from {result.nodes_before} to {result.nodes_after} nodes"
        else:
            result.status = _CHANGED
    except _Unreadable as e:
        result.status, result.reason = FAILED, str(e)
    except Exception as e:  # NOTE: a library pass that crashes is reported and skipped, never fatal.
        result.status, result.reason = FAILED, f"{type(e).__name__}: {first_line(e)}"
    finally:
        result.seconds = time.perf_counter() - start
    return result


def _same_graph(a: Path, b: Path, fmt: str) -> bool:
    digest = graph_digest(a, fmt)
    return bool(digest) and digest == graph_digest(b, fmt)


def _first_failure(report: ParityReport) -> str:
    if report.error:
        return f"could not run: {report.error}"
    if report.failures:
        return report.failures[0].describe()
    return next(c.describe() for c in report.checks if not c)


def graph_digest(path: Path, fmt: str) -> str:
    """sha256 of the computation alone: an ONNX file's graph, a TorchScript module's code and constants.

    Two files with the same digest compute the same way; what differs around the graph (producer,
    archive names, a serialisation id) does not count. Empty when the file cannot be read.
    """
    try:
        if fmt == "onnx":
            import onnx

            return hashlib.sha256(onnx.load(str(path)).graph.SerializeToString(deterministic=True)).hexdigest()
        if fmt == "torchscript":
            import torch

            module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
            digest = hashlib.sha256(str(module.inlined_graph).encode())
            for value in module.state_dict().values():
                digest.update(value.detach().contiguous().numpy().tobytes())
            return digest.hexdigest()
    except Exception:  # NOTE: an unreadable file never matches, so the pass is judged by parity instead.
        return ""
    return ""


def count_nodes(path: Path, fmt: str) -> int:
    """Nodes in an ONNX graph or in a TorchScript module's inlined graph (0 when unreadable)."""
    try:
        return _count_nodes(path, fmt)
    except Exception:  # NOTE: a count is evidence for the report, never a reason to fail.
        return 0


def _count_nodes(path: Path, fmt: str) -> int:
    """`count_nodes`, raising what reading the file raised."""
    if fmt == "onnx":
        import onnx

        return len(onnx.load(str(path), load_external_data=False).graph.node)
    if fmt == "torchscript":
        import torch

        module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
        return len(list(module.inlined_graph.nodes()))
    return 0


class _Unreadable(Exception):
    """A pass wrote a file its format's reader refuses."""
