"""Export -> verify -> package for one spec: every export path tried, only those matching eager kept."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exporters import EXPORTERS
from runtimes import runtime_for
from runtimes.eager import EagerSession
from toolchain import trust
from toolchain.artifact import Artifact, Finding
from toolchain.errors import InferenceError, PackageError, TargetError, ToolchainError
from toolchain.localize import Localization, localize
from toolchain.package import PackageStaging, check_destination, stage_package
from toolchain.parity import ParityReport, compare
from toolchain.record import build_manifest, build_report
from toolchain.report import render_markdown
from toolchain.samples import SampleSet, generate_samples
from toolchain.signature import Signature, TensorSig
from toolchain.spec import FORMATS, ModelSpec
from toolchain.verify import verify_package

__all__ = [
    "ALL_FORMATS",
    "AUTO_FORMATS",
    "ExportResult",
    "PathResult",
    "StageResult",
    "export_package",
    "input_signature",
    "package_signature",
]

PASSED, FAILED, NOT_RUN, KEPT, REJECTED = "passed", "failed", "not run", "kept", "rejected"
STAGES = ("build", "reference", "export", "package")
ALL_FORMATS = FORMATS
AUTO_FORMATS = ("onnx", "onnx_legacy")
_SHAPE_KINDS = ("specialized-dim", "narrowed-dim", "unified-dims")


@dataclass
class StageResult:
    """One stage's status (passed / failed / not run), time and what went wrong."""

    name: str
    status: str = NOT_RUN
    seconds: float = 0.0
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"name": self.name, "status": self.status, "seconds": round(self.seconds, 3), "detail": self.detail}


@dataclass
class PathResult:
    """One export path: kept (matches eager on every sample set) or rejected, and why."""

    exporter: str
    status: str = NOT_RUN
    artifact: Artifact | None = None
    reports: list[ParityReport] = field(default_factory=list)
    reason: str = ""
    export_seconds: float = 0.0
    verify_seconds: float = 0.0
    localization: Localization | None = None
    """For a rejected ONNX artifact: the first module whose output diverges from eager."""

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "exporter": self.exporter,
            "status": self.status,
            "reason": self.reason,
            "export_seconds": round(self.export_seconds, 3),
            "verify_seconds": round(self.verify_seconds, 3),
            "artifact": self.artifact.to_dict() if self.artifact else None,
            "localization": self.localization.to_dict() if self.localization else None,
            "samples": [r.to_dict() for r in self.reports],
        }


@dataclass
class ExportResult:
    """What `export_package` did; truthy only when every stage passed and the package landed."""

    spec: ModelSpec
    stages: list[StageResult] = field(default_factory=lambda: [StageResult(s) for s in STAGES])
    paths: list[PathResult] = field(default_factory=list)
    samples: list[SampleSet] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    signature: Signature | None = None
    package: Path | None = None

    def __bool__(self) -> bool:
        return all(s.status == PASSED for s in self.stages)

    def stage(self, name: str) -> StageResult:
        """The result of stage `name`."""
        return next(s for s in self.stages if s.name == name)

    def path(self, exporter: str) -> PathResult:
        """The result of export path `exporter`."""
        return next(p for p in self.paths if p.exporter == exporter)

    @property
    def kept(self) -> list[PathResult]:
        """Paths whose artifact matched eager on every sample set."""
        return [p for p in self.paths if p.status == KEPT]

    @property
    def failed_stage(self) -> StageResult | None:
        """The first stage that failed, if any."""
        return next((s for s in self.stages if s.status == FAILED), None)

    @contextmanager
    def running(self, name: str, progress: Callable[[str], None]) -> Iterator[StageResult]:
        """Time stage `name`; a `ToolchainError` inside marks it failed and is re-raised."""
        stage = self.stage(name)
        progress(f"{self.spec.name}: {name}")
        start = time.perf_counter()
        try:
            yield stage
        except ToolchainError as e:
            stage.status, stage.detail = FAILED, str(e)
            raise
        finally:
            stage.seconds = time.perf_counter() - start
        if stage.status == NOT_RUN:
            stage.status = PASSED


def export_package(
    spec: ModelSpec,
    out: Path,
    *,
    formats: Sequence[str] = (),
    force: bool = False,
    seed: int = 0,
    progress: Callable[[str], None] = lambda message: None,
) -> ExportResult:
    """Export `spec` through each path in `formats`, keep those matching eager everywhere, package them.

    `formats` defaults to the paths the spec says apply (`ModelSpec.formats`); ``("auto",)`` keeps
    only the best ONNX path: torch.export-based, else legacy. Nothing is written at `out` unless at
    least one path was kept. Raises `PackageError` at once when `out` holds a package and `force` is
    false, and `TargetError` for an unknown format.
    """
    out = Path(out)
    candidates, first_only = _candidates(formats or spec.formats)
    check_destination(out, force=force)
    result = ExportResult(spec)
    try:
        _run_stages(result, out, candidates, first_only=first_only, force=force, seed=seed, progress=progress)
    except ToolchainError:
        if result.failed_stage is None:
            raise
    return result


def _candidates(formats: Sequence[str]) -> tuple[tuple[str, ...], bool]:
    if list(formats) == ["auto"]:
        return AUTO_FORMATS, True
    for name in formats:
        EXPORTERS.get(name)  # unknown names fail here, listing the known ones
    if not formats:
        raise TargetError(f"no export format given; choose from {', '.join(ALL_FORMATS)} or 'auto'")
    return tuple(dict.fromkeys(formats)), False


def _run_stages(
    result: ExportResult,
    out: Path,
    candidates: tuple[str, ...],
    *,
    first_only: bool,
    force: bool,
    seed: int,
    progress: Callable[[str], None],
) -> None:
    spec = result.spec
    with result.running("build", progress):
        model = spec.build()
        result.findings.extend(_training_findings(model))
        model.eval()
    with result.running("reference", progress):
        result.samples = generate_samples(spec, seed=seed)
        eager = EagerSession(model, signature=input_signature(spec))
        expected = [_reference(eager, s) for s in result.samples]
        result.signature = package_signature(spec, result.samples, expected)
    with stage_package(out, force=force) as staging:
        with result.running("export", progress) as stage:
            for name in candidates:
                progress(f"{spec.name}: export {name}")
                result.paths.append(_try_path(name, model, result, expected, staging))
                if first_only and result.paths[-1].status == KEPT:
                    break
            if not result.kept:
                stage.status = FAILED
                stage.detail = "every path was rejected: " + "; ".join(
                    f"{p.exporter}: {p.reason}" for p in result.paths
                )
                return
        with result.running("package", progress):
            entries = _write_package(result, staging, expected)
            staging.finalize(build_manifest(result, entries))
            # NOTE: integrity and the ONNX replays; TorchScript and .pt2 files were verified from these
            # very bytes a moment ago (the integrity check proves it), so they are not loaded twice.
            check = verify_package(staging.path)
            if check.problems or not all(check.checks):
                raise PackageError(f"{out}: the staged package does not re-verify: {check.failure_lines()[0]}")
            result.package = staging.commit()
            if not trust.remember(result.package):
                result.findings.append(
                    Finding("trust-list", f"could not write {trust.trust_list_path()}; verify needs --trust here")
                )


def _reference(eager: EagerSession, sample: SampleSet) -> dict[str, np.ndarray]:
    try:
        return eager.run(sample.feeds)
    except InferenceError as e:
        raise InferenceError(f"on sample {sample.name!r} ({_sizes(sample)}), which the spec declares valid: {e}") from e


def _try_path(
    name: str, model: Any, result: ExportResult, expected: list[dict[str, np.ndarray]], staging: PackageStaging
) -> PathResult:
    """Export through one path in a scratch folder, verify on every sample set, move it in if kept."""
    path = PathResult(name)
    workdir = Path(tempfile.mkdtemp(prefix=f".{staging.dest.name}.{name}-", dir=staging.path.parent))
    try:
        start = time.perf_counter()
        try:
            path.artifact = EXPORTERS.get(name).export(model, result.spec, result.samples[0], workdir)
        except ToolchainError as e:
            path.status, path.reason = REJECTED, str(e)
            return path
        finally:
            path.export_seconds = time.perf_counter() - start
        start = time.perf_counter()
        path.status, path.reason = _verify_path(path.artifact, workdir, result, expected, path.reports)
        if path.status == REJECTED and path.artifact.format == "onnx":
            path.localization = _localize(model, result, workdir / path.artifact.path, path.reports)
            if path.localization is not None:
                path.reason += f"; {path.localization}"
        path.verify_seconds = time.perf_counter() - start
        if path.status == KEPT:
            for rel in path.artifact.files:
                shutil.move(workdir / rel, staging.file(rel))
        return path
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _verify_path(
    artifact: Artifact,
    workdir: Path,
    result: ExportResult,
    expected: list[dict[str, np.ndarray]],
    reports: list[ParityReport],
) -> tuple[str, str]:
    runtime = runtime_for(artifact.format)
    if runtime is None:
        return REJECTED, f"no runtime on this host runs {artifact.format!r} artifacts, so it cannot be verified"
    assert result.signature is not None
    try:
        session = runtime.load(workdir / artifact.path, signature=result.signature)
    except ToolchainError as e:
        return REJECTED, str(e)
    for sample, exp in zip(result.samples, expected, strict=True):
        try:
            actual = session.run(sample.feeds)
        except ToolchainError as e:
            reports.append(ParityReport.could_not_run(str(e), sample=sample.name))
        else:
            reports.append(compare(exp, actual, result.spec.tolerance, sample=sample.name))
    failed = [(s, r) for s, r in zip(result.samples, reports, strict=True) if not r]
    if not failed:
        return KEPT, ""
    sample, report = failed[0]
    cause = likely_cause(sample, result.samples[0], artifact.findings)
    more = f" (and {len(failed) - 1} more sample set(s))" if len(failed) > 1 else ""
    because = f"; likely cause: {cause}" if cause else ""
    return REJECTED, f"parity failed on sample {sample.name!r} ({_sizes(sample)}): {_failure(report)}{more}{because}"


def _localize(model: Any, result: ExportResult, onnx_path: Path, reports: list[ParityReport]) -> Localization | None:
    """Localise the first numeric failure; localisation is best effort and never fails the export."""
    failing = next((r for r in reports if not r and not r.error), None)
    if failing is None:
        return None
    sample = next(s for s in result.samples if s.name == failing.sample)
    try:
        return localize(result.spec, model, onnx_path, sample, tolerance=result.spec.tolerance)
    except Exception:  # NOTE: a graph localisation cannot read must not hide the parity failure itself.
        return None


def likely_cause(sample: SampleSet, base: SampleSet, findings: Sequence[Finding]) -> Finding | None:
    """The finding that most probably explains a failure on `sample` (a dim it moves, a frozen trace)."""
    moved = [sym for sym, size in sample.sizes.items() if base.sizes.get(sym) != size]
    shape = [f for f in findings if f.kind in _SHAPE_KINDS]
    for f in shape:
        if any(f"'{sym}'" in f.message for sym in moved):
            return f
    traced = [f for f in findings if f.kind == "traced" or "TracerWarning" in f.message]
    return next(iter(traced + shape), None)


def _write_package(
    result: ExportResult, staging: PackageStaging, expected: list[dict[str, np.ndarray]]
) -> list[dict[str, Any]]:
    """Write golden samples and reports into the staging folder; return the manifest's sample entries."""
    entries = []
    for sample, exp in zip(result.samples, expected, strict=True):
        base = f"samples/{sample.name}"
        entries.append(
            {
                "name": sample.name,
                "sizes": dict(sample.sizes),
                "inputs": {k: staging.save_array(f"{base}/inputs/{k}.npy", v) for k, v in sample.feeds.items()},
                "expected": {k: staging.save_array(f"{base}/expected/{k}.npy", v) for k, v in exp.items()},
            }
        )
    report = build_report(result)
    staging.write_json("report.json", report)
    staging.write_text("report.md", render_markdown(report))
    return entries


def input_signature(spec: ModelSpec) -> Signature:
    """The spec's inputs; output names only (their dtypes and shapes come from eager)."""
    return Signature(
        inputs=tuple(TensorSig(k, v.dtype, v.shape) for k, v in spec.inputs.items()),
        outputs=tuple(TensorSig(n, "?", ()) for n in spec.outputs),
    )


def package_signature(spec: ModelSpec, samples: list[SampleSet], expected: list[dict[str, np.ndarray]]) -> Signature:
    """Inputs from the spec; output dtypes and symbolic shapes read off eager's outputs at every size."""
    outputs = []
    for name in spec.outputs:
        shapes = [exp[name].shape for exp in expected]
        dims: list[int | str] = []
        for axis in range(len(shapes[0])):
            sizes = [s[axis] if axis < len(s) else -1 for s in shapes]
            if len(set(sizes)) == 1:
                dims.append(sizes[0])
                continue
            match = [
                sym for sym in spec.symbols() if all(x.sizes[sym] == n for x, n in zip(samples, sizes, strict=True))
            ]
            dims.append(match[0] if match else "?")
        outputs.append(TensorSig(name, str(expected[0][name].dtype), tuple(dims)))
    verified = {sym: tuple(sorted({s.sizes[sym] for s in samples})) for sym in spec.symbols()}
    return Signature(input_signature(spec).inputs, tuple(outputs), verified)


def _training_findings(model: Any) -> list[Finding]:
    names = [name or "<root>" for name, m in model.named_modules() if m.training]
    if not names:
        return []
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return [Finding("training-mode", f"{len(names)} module(s) were in training mode ({shown}); exported in eval mode")]


def _sizes(sample: SampleSet) -> str:
    return ", ".join(f"{k}={v}" for k, v in sample.sizes.items()) or "static shapes"


def _failure(report: ParityReport) -> str:
    if report.error:
        return f"could not run: {report.error}"
    return ", ".join(f"output {o.name!r} {o.describe().split(': ', 1)[1]}" for o in report.failures)
