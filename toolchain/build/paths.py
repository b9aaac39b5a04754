"""One export path, start to finish: export, verify, localise a failure, optimise, measure drift.

Each path is exported into its own scratch folder and replayed on every sample set against eager;
a numeric failure of an ONNX artifact is localised to a module, and a kept artifact is optimised
pass by pass, each stage's drift recorded. Nothing here is timed into the package: latency is for
``toolchain bench``, and a package's files come out the same on every run.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from exporters import EXPORTERS
from runtimes import runtime_for
from runtimes.eager import one_thread
from runtimes.ort import OrtRuntime
from toolchain.build.optimize import PassResult, count_nodes, optimize_artifact
from toolchain.build.passes import GraphPass
from toolchain.build.precision import VariantOutcome
from toolchain.build.values import frozen_values, retrace_differs, source_text
from toolchain.core.artifact import Artifact, Finding
from toolchain.core.checks import TaskCheck
from toolchain.core.errors import ToolchainError
from toolchain.core.parity import ParityReport, Tolerance, compare
from toolchain.core.samples import SampleSet
from toolchain.core.signature import Signature
from toolchain.core.spec import ModelSpec
from toolchain.diagnose.bisect import Divergence, first_divergence
from toolchain.diagnose.localize import Localization, localize

__all__ = [
    "KEPT",
    "REJECTED",
    "PathResult",
    "Replayer",
    "StageDrift",
    "explain",
    "exported_copy",
    "failure",
    "likely_cause",
    "optimize_path",
    "sizes",
    "try_path",
]

KEPT, REJECTED, NOT_RUN = "kept", "rejected", "not run"
_SHAPE_KINDS = ("specialized-dim", "narrowed-dim", "unified-dims")


@dataclass
class StageDrift:
    """One stage of an artifact (exported, optimised, fp16, ...) measured against eager."""

    stage: str
    reports: list[ParityReport]
    nodes: int
    bytes: int
    spec_reports: list[ParityReport] = field(default_factory=list)
    """The same outputs judged by the spec's (fp32) tolerance, for a stage gated by another; else empty."""

    def to_dict(self) -> dict[str, Any]:
        """JSON form: error per output at each sample set (own gate and the spec's), size, nodes."""
        spec = {(r.sample, o.name): o.worst_ratio for r in self.spec_reports for o in r.outputs}
        return {
            "stage": self.stage,
            "passed": bool(self.reports) and all(self.reports),
            "nodes": self.nodes,
            "bytes": self.bytes,
            "worst": {
                r.sample: {
                    o.name: {
                        "max_abs": o.max_abs,
                        "worst_ratio": o.worst_ratio,
                        "spec_ratio": spec.get((r.sample, o.name), o.worst_ratio),
                        "atol": o.atol,
                        "rtol": o.rtol,
                    }
                    for o in r.outputs
                }
                for r in self.reports
            },
        }


@dataclass
class PathResult:
    """One export path (or precision variant): kept (matches eager on every sample set) or rejected."""

    exporter: str
    status: str = NOT_RUN
    artifact: Artifact | None = None
    reports: list[ParityReport] = field(default_factory=list)
    reason: str = ""
    export_seconds: float = 0.0
    verify_seconds: float = 0.0
    localization: Localization | Divergence | None = None
    """For a rejected ONNX artifact: the first module whose output diverges from eager."""
    passes: list[PassResult] = field(default_factory=list)
    drift: list[StageDrift] = field(default_factory=list)
    variant: str = "fp32"
    repair: VariantOutcome | None = None

    @property
    def final_reports(self) -> list[ParityReport]:
        """Reports of the shipped file: after the last kept pass, else as exported."""
        kept = [p for p in self.passes if p.status == KEPT]
        return kept[-1].reports if kept else self.reports

    @property
    def name(self) -> str:
        """``onnx`` for an exported path, ``onnx:fp16`` for a precision variant of it."""
        return self.exporter if self.variant == "fp32" else f"{self.exporter}:{self.variant}"

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "exporter": self.name,
            "variant": self.variant,
            "status": self.status,
            "reason": self.reason,
            "artifact": self.artifact.to_dict() if self.artifact else None,
            "localization": self.localization.to_dict() if self.localization else None,
            "passes": [p.to_dict() for p in self.passes],
            "drift": [d.to_dict() for d in self.drift],
            "repair": _repair_dict(self.repair),
            "samples": [r.to_dict() for r in self.reports],
        }


def _repair_dict(outcome: VariantOutcome | None) -> dict[str, Any] | None:
    if outcome is None:
        return None
    return {
        "keep": outcome.keep,
        "modules": outcome.kept_modules,
        "rounds": [r.to_dict() for r in outcome.rounds],
    }


@dataclass(frozen=True)
class Replayer:
    """Replays artifact files on every sample set against eager's outputs."""

    spec: ModelSpec
    samples: Sequence[SampleSet]
    expected: Sequence[Mapping[str, np.ndarray]]
    signature: Signature
    causes: Mapping[str, Finding] = field(default_factory=dict)
    """Sample set -> what explains a failure there before any exporter does (the forward changed the model)."""
    _retraced: list[str] = field(default_factory=list, compare=False, repr=False)

    def retrace_differs(self, model: Any) -> str:
        """`values.retrace_differs` for this spec's samples, traced once per export.

        Shared by every trace-based path: each gets a copy of the same model as built, so the answer is the same.
        """
        if not self._retraced:
            self._retraced.append(retrace_differs(model, self.spec, self.samples))
        return self._retraced[0]

    def check(
        self, path: Path, fmt: str, *, tolerance: Tolerance, checks: Sequence[TaskCheck] = ()
    ) -> list[ParityReport]:
        """One parity report per sample set; a file that will not load fails every set."""
        runtime = runtime_for(fmt)
        if runtime is None:
            error = f"no runtime on this host runs {fmt!r} artifacts"
            return [ParityReport.could_not_run(error, sample=s.name) for s in self.samples]
        try:
            session = runtime.load(path, signature=self.signature)
        except ToolchainError as e:
            return [ParityReport.could_not_run(str(e), sample=s.name) for s in self.samples]
        reports = []
        # NOTE: torch-run artifacts on one thread, as eager's reference: their drift goes into the report.
        threads = nullcontext() if isinstance(runtime, OrtRuntime) else one_thread()
        with threads:
            for sample, exp in zip(self.samples, self.expected, strict=True):
                reports.append(self._replay(session, sample, exp, tolerance, checks))
        return reports

    @staticmethod
    def _replay(
        session: Any,
        sample: SampleSet,
        exp: Mapping[str, np.ndarray],
        tolerance: Tolerance,
        checks: Sequence[TaskCheck],
    ) -> ParityReport:
        try:
            actual = session.run(sample.feeds)
        except ToolchainError as e:
            return ParityReport.could_not_run(str(e), sample=sample.name)
        return compare(exp, actual, tolerance, sample=sample.name, checks=checks, feeds=sample.feeds)

    def checker(self, fmt: str, *, precision: str = "fp32") -> Callable[[Path], list[ParityReport]]:
        """`check` bound to a format and the gate of a precision."""
        tolerance = self.spec.tolerance_for(precision)
        checks = self.spec.checks if precision != "fp32" else ()
        return lambda path: self.check(path, fmt, tolerance=tolerance, checks=checks)

    def drift(self, stages: Sequence[tuple[str, Path, list[ParityReport]]], fmt: str) -> list[StageDrift]:
        """Each stage's reports, size and nodes."""
        # NOTE: no latency: one race at export time on a shared host is noise that would change the
        # report (and so the manifest's hashes) on every run; `toolchain bench` races the shipped files.
        return [StageDrift(stage, reports, count_nodes(p, fmt), p.stat().st_size) for stage, p, reports in stages]


def try_path(
    name: str,
    model: Any,
    replayer: Replayer,
    workdir: Path,
    *,
    program: Any = None,
) -> PathResult:
    """Export through `name` into `workdir`, verify on every sample set, localise a numeric failure.

    `program`: a ``torch.export`` capture of `model` shared by the paths that start from one (``onnx``,
    ``exported_program``), passed to their exporter instead of capturing again.
    """
    path = export_path(name, model, replayer.spec, replayer.samples[0], workdir, program=program)
    return verify_path(path, model, replayer, workdir)


def export_path(
    name: str, model: Any, spec: ModelSpec, sample: SampleSet, workdir: Path, *, program: Any = None
) -> PathResult:
    """The export half of `try_path`: needs only the export sample, not eager's outputs."""
    path = PathResult(name)
    start = time.perf_counter()
    exporter = EXPORTERS.get(name)
    shared = {} if program is None else {"program": program}
    try:
        path.artifact = exporter.export(model, spec, sample, workdir, **shared)
    except ToolchainError as e:
        path.status, path.reason = REJECTED, str(e)
    finally:
        path.export_seconds = time.perf_counter() - start
    return path


def verify_path(path: PathResult, model: Any, replayer: Replayer, workdir: Path) -> PathResult:
    """The verification half of `try_path`, for an exported `path` (a rejected one is returned as is)."""
    if path.artifact is None:
        return path
    start = time.perf_counter()
    artifact = path.artifact
    main = workdir / artifact.path
    path.reports = replayer.checker(artifact.format)(main)
    path.status, path.reason = _verdict(path.reports, replayer.samples, artifact.findings, replayer.causes)
    frozen = frozen_values(artifact.findings)
    if frozen:
        _judge_frozen(path, model, replayer, frozen)
    if path.status == REJECTED and artifact.format == "onnx":
        path.localization = explain(model, replayer, main, path.reports, tolerance=replayer.spec.tolerance)
        if path.localization is not None:
            path.reason += f"; {path.localization}"
    path.verify_seconds = time.perf_counter() - start
    return path


def _judge_frozen(path: PathResult, model: Any, replayer: Replayer, frozen: list[Finding]) -> None:
    """Reject a trace that froze a tensor value which other inputs change, unless the spec allows it."""
    assert path.artifact is not None
    where = ", ".join(f"{f.source} (`{source_text(f.source)}`)" for f in frozen[:3])
    if path.status == REJECTED:
        if where not in path.reason:
            path.reason += f"; the trace turned a tensor value into a constant at {where}"
        return
    differs = replayer.retrace_differs(model)
    if differs and not replayer.spec.allow_frozen_values:
        path.status = REJECTED
        path.reason = (
            f"the trace turned a tensor value into a constant at {where}: traced again on sample {differs!r} "
            "it records another graph, so it is right only for inputs that take the export sample's branch; "
            "torch.jit.script and torch.export keep the branch "
            "(to ship this trace anyway, declare @exportable(allow_frozen_values=True))"
        )
        return
    if differs:
        note = f"traced again on sample {differs!r} it records another graph; shipped: the spec allows frozen values"
    else:
        note = "traced again on every sample set of the export size it records the same graph"
    finding = Finding("frozen-value", f"the trace turned a tensor value into a constant at {where}; {note}")
    path.artifact = replace(path.artifact, findings=(*path.artifact.findings, finding))


def optimize_path(
    path: PathResult,
    replayer: Replayer,
    workdir: Path,
    *,
    model: Any = None,
    passes: Sequence[GraphPass] = (),
    progress: Callable[[str], None] = lambda message: None,
) -> None:
    """Run the optimisation passes over a kept path's artifact in `workdir`, recording each pass.

    Leaves the unoptimised file beside it as ``<file>.exported`` for the drift measurement. With
    `model`, a pass that breaks an ONNX artifact's parity is localised to the first diverging module.
    """
    assert path.artifact is not None and path.status == KEPT
    artifact = path.artifact
    main = workdir / artifact.path
    shutil.copyfile(main, exported_copy(main))
    fmt = artifact.format
    tolerance = replayer.spec.tolerance

    def why(candidate: Path, reports: list[ParityReport]) -> str:
        if fmt != "onnx":
            return ""
        found = explain(model, replayer, candidate, reports, tolerance=tolerance, reference=main)
        return str(found) if found is not None else ""

    path.passes = optimize_artifact(
        main,
        fmt,
        check=replayer.checker(fmt),
        passes=passes,
        explain=why,
        progress=progress,
        exporter=artifact.exporter,
    )
    kept = tuple(p.name for p in path.passes if p.status == KEPT)
    if kept:
        path.artifact = replace(artifact, passes=kept)


def exported_copy(main: Path) -> Path:
    """Where `optimize_path` keeps the unoptimised file."""
    return main.with_name(main.name + ".exported")


def _verdict(
    reports: list[ParityReport],
    samples: Sequence[SampleSet],
    findings: Sequence[Finding],
    causes: Mapping[str, Finding] = MappingProxyType({}),
) -> tuple[str, str]:
    failed = [(s, r) for s, r in zip(samples, reports, strict=True) if not r]
    if not failed:
        return KEPT, ""
    sample, report = failed[0]
    # NOTE: a forward that changed the model explains a failure on any later set too (the artifact may keep
    # the changed state at run time), so the change found on another set still comes before exporter notes.
    cause = causes.get(sample.name) or next(iter(causes.values()), None) or likely_cause(sample, samples[0], findings)
    more = f" (and {len(failed) - 1} more sample set(s))" if len(failed) > 1 else ""
    because = f"; likely cause: {cause}" if cause else ""
    return REJECTED, f"parity failed on sample {sample.name!r} ({sizes(sample)}): {failure(report)}{more}{because}"


def explain(
    model: Any,
    replayer: Replayer,
    onnx_path: Path,
    reports: list[ParityReport],
    *,
    tolerance: Tolerance,
    reference: Path | None = None,
) -> Localization | Divergence | None:
    """Localise the first numeric failure of an ONNX file; best effort, never raises.

    First against eager through the graph's module scopes; when the graph has none to match and a
    known-good `reference` graph is given, by bisection against that graph.
    """
    failing = next((r for r in reports if not r and not r.error), None)
    if failing is None:
        return None
    sample = next(s for s in replayer.samples if s.name == failing.sample)
    try:
        found = localize(replayer.spec, model, onnx_path, sample, tolerance=tolerance) if model is not None else None
        if found is None and reference is not None:
            return first_divergence(reference, onnx_path, sample.feeds, limit=tolerance.rtol)
        return found
    except Exception:  # NOTE: a graph localisation cannot read must not hide the parity failure itself.
        return None


def likely_cause(sample: SampleSet, base: SampleSet, findings: Sequence[Finding]) -> Finding | None:
    """The finding that most probably explains a failure on `sample` (a dim it moves, a frozen trace)."""
    moved = [sym for sym, size in sample.sizes.items() if base.sizes.get(sym) != size]
    shape = [f for f in findings if f.kind in _SHAPE_KINDS]
    for f in shape:
        if any(f"'{sym}'" in f.message for sym in moved):
            return f
    # NOTE: a warning at the user's line that froze a value explains more than the generic "traced" note.
    traced = frozen_values(findings) + [f for f in findings if f.kind == "traced" or "TracerWarning" in f.message]
    return next(iter(traced + shape), None)


def sizes(sample: SampleSet) -> str:
    """``batch=8, seq=16`` (or ``static shapes``)."""
    return ", ".join(f"{k}={v}" for k, v in sample.sizes.items()) or "static shapes"


def failure(report: ParityReport) -> str:
    """What failed in `report`, in one line."""
    if report.error:
        return f"could not run: {report.error}"
    parts = [f"output {o.name!r} {o.describe().split(': ', 1)[1]}" for o in report.failures]
    parts += [c.describe() for c in report.checks if not c]
    return ", ".join(parts)
