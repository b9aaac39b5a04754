"""Export -> verify -> package for one spec, with a tri-state status per stage."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from exporters import EXPORTERS
from runtimes.eager import EagerSession
from runtimes.ort import OrtRuntime
from toolchain.artifact import Artifact, Finding
from toolchain.errors import ExportError, InferenceError, PackageError, ToolchainError
from toolchain.package import check_destination, stage_package
from toolchain.parity import ParityReport, compare
from toolchain.report import render_markdown
from toolchain.samples import SampleSet, generate_samples
from toolchain.signature import Signature, TensorSig
from toolchain.spec import ModelSpec
from toolchain.verify import verify_package

__all__ = ["ExportResult", "StageResult", "export_package", "library_versions"]

PASSED, FAILED, NOT_RUN = "passed", "failed", "not run"
STAGES = ("build", "reference", "export", "verify", "package")


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
class ExportResult:
    """What `export_package` did; truthy only when every stage passed and the package landed."""

    spec: ModelSpec
    stages: list[StageResult] = field(default_factory=lambda: [StageResult(s) for s in STAGES])
    samples: list[SampleSet] = field(default_factory=list)
    artifact: Artifact | None = None
    reports: list[ParityReport] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    signature: Signature | None = None
    package: Path | None = None

    def __bool__(self) -> bool:
        return all(s.status == PASSED for s in self.stages)

    def stage(self, name: str) -> StageResult:
        """The result of stage `name`."""
        return next(s for s in self.stages if s.name == name)

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
    exporter: str = "onnx",
    force: bool = False,
    seed: int = 0,
    progress: Callable[[str], None] = lambda message: None,
) -> ExportResult:
    """Export `spec` with `exporter`, check it against eager on every sample set, write the package.

    Nothing is written at `out` unless every stage passed. Returns the result with per-stage status;
    raises `PackageError` at once when `out` holds a package and `force` is false.
    """
    out = Path(out)
    check_destination(out, force=force)
    result = ExportResult(spec)
    try:
        _run_stages(result, out, exporter=exporter, force=force, seed=seed, progress=progress)
    except ToolchainError:
        if result.failed_stage is None:
            raise
    return result


def _run_stages(
    result: ExportResult, out: Path, *, exporter: str, force: bool, seed: int, progress: Callable[[str], None]
) -> None:
    spec = result.spec
    with result.running("build", progress):
        model = spec.build()
        result.findings.extend(_training_findings(model))
        model.eval()
    with result.running("reference", progress):
        result.samples = generate_samples(spec, seed=seed)
        eager = EagerSession(model, signature=_spec_signature(spec))
        expected = []
        for sample in result.samples:
            try:
                expected.append(eager.run(sample.feeds))
            except InferenceError as e:
                raise InferenceError(
                    f"on sample {sample.name!r} ({_sizes(sample)}), which the spec declares valid: {e}"
                ) from e
    with stage_package(out, force=force) as staging:
        with result.running("export", progress):
            artifact = EXPORTERS.get(exporter).export(model, spec, result.samples[0], staging.path)
            result.artifact = artifact
        with result.running("verify", progress) as stage:
            session = OrtRuntime().load(staging.path / artifact.path, signature=_spec_signature(spec))
            result.signature = _package_signature(spec, session.native_signature(), result.samples)
            for sample, exp in zip(result.samples, expected, strict=True):
                try:
                    actual = session.run(sample.feeds)
                except ToolchainError as e:
                    result.reports.append(ParityReport.could_not_run(str(e), sample=sample.name))
                else:
                    result.reports.append(compare(exp, actual, spec.tolerance, sample=sample.name))
            failed = [r for r in result.reports if not r]
            if failed:
                stage.status = FAILED
                stage.detail = "; ".join(_failure_summary(r) for r in failed)
                return
        with result.running("package", progress):
            entries = _write_package(result, staging, expected)
            staging.finalize(_manifest(result, entries))
            check = verify_package(staging.path)
            if not check:
                raise PackageError(f"{out}: the staged package does not re-verify: {check.failure_lines()[0]}")
            result.package = staging.commit()


def _write_package(result: ExportResult, staging: Any, expected: list[dict[str, Any]]) -> list[dict[str, Any]]:
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
    report = _report(result)
    staging.write_json("report.json", report)
    staging.write_text("report.md", render_markdown(report))
    return entries


def _report(result: ExportResult) -> dict[str, Any]:
    spec, artifact = result.spec, result.artifact
    assert artifact is not None
    return {
        "name": spec.name,
        "version": spec.version,
        "source": spec.source,
        # NOTE: the package stage is the writing of this very report; it passed if you can read it.
        "stages": [s.to_dict() for s in result.stages if s.name != "package"],
        "artifacts": [artifact.to_dict()],
        "findings": [f.to_dict() for f in (*result.findings, *artifact.findings)],
        "tolerance": spec.tolerance.to_dict(),
        "samples": [{"name": s.name, "sizes": dict(s.sizes)} for s in result.samples],
        "parity": {artifact.path: {"stage": "exported", "samples": [r.to_dict() for r in result.reports]}},
        "versions": library_versions(),
    }


def _manifest(result: ExportResult, samples: list[dict[str, Any]]) -> dict[str, Any]:
    spec, artifact, signature = result.spec, result.artifact, result.signature
    assert artifact is not None and signature is not None
    worst: dict[str, dict[str, float]] = {}
    for report in result.reports:
        for o in report.outputs:
            w = worst.setdefault(o.name, {"max_abs": 0.0, "max_rel": 0.0, "worst_ratio": 0.0})
            for key in w:
                w[key] = max(w[key], float(getattr(o, key)))
    return {
        "name": spec.name,
        "version": spec.version,
        "description": spec.description,
        "source": spec.source,
        "tags": list(spec.tags),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": library_versions(),
        "signature": signature.to_dict(),
        "dims": {s: spec.dim(s).to_dict() for s in spec.symbols()},
        "artifacts": [artifact.to_dict()],
        "tolerance": spec.tolerance.to_dict(),
        "parity": {
            artifact.path: {
                "stage": "exported",
                "passed": all(result.reports),
                "sample_sets": [r.sample for r in result.reports],
                "worst": worst,
            }
        },
        "samples": samples,
    }


def library_versions() -> dict[str, str]:
    """Versions of every library an export depends on (``missing`` when not installed)."""
    versions = {"python": platform.python_version()}
    for dist in ("toolchain", "torch", "onnx", "onnxscript", "onnxruntime", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "missing"
    return versions


def _spec_signature(spec: ModelSpec) -> Signature:
    return Signature(
        inputs=tuple(TensorSig(k, v.dtype, v.shape) for k, v in spec.inputs.items()),
        outputs=tuple(TensorSig(n, "?", ()) for n in spec.outputs),
    )


def _package_signature(spec: ModelSpec, native: Signature, samples: list[SampleSet]) -> Signature:
    outputs = {t.name: t for t in native.outputs}
    missing = [n for n in spec.outputs if n not in outputs]
    if missing:
        raise ExportError(f"exported graph lacks declared output(s) {missing}; it has {list(outputs)}")
    verified = {sym: tuple(sorted({s.sizes[sym] for s in samples})) for sym in spec.symbols()}
    return Signature(
        inputs=_spec_signature(spec).inputs,
        outputs=tuple(outputs[n] for n in spec.outputs),
        verified_sizes=verified,
    )


def _training_findings(model: Any) -> list[Finding]:
    names = [name or "<root>" for name, m in model.named_modules() if m.training]
    if not names:
        return []
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return [Finding("training-mode", f"{len(names)} module(s) were in training mode ({shown}); exported in eval mode")]


def _sizes(sample: SampleSet) -> str:
    return ", ".join(f"{k}={v}" for k, v in sample.sizes.items()) or "static shapes"


def _failure_summary(report: ParityReport) -> str:
    if report.error:
        return f"sample {report.sample!r} could not run: {report.error}"
    names = ", ".join(f"{o.name} (max_abs={o.max_abs:.3g})" for o in report.failures)
    return f"sample {report.sample!r}: {names}"
