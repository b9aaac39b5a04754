"""The evidence a package carries: ``manifest.json`` and ``report.json`` built from a pipeline run."""

from __future__ import annotations

import platform
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from typing import TYPE_CHECKING, Any

from exporters._capture import is_library_file
from toolchain.core.parity import ParityReport
from toolchain.core.portable import portable, portable_path

_NOISE_KINDS = ("warning", "log")

if TYPE_CHECKING:
    from toolchain.build.pipeline import ExportResult

__all__ = [
    "build_manifest",
    "build_report",
    "gated_on",
    "is_noise",
    "library_versions",
    "portable",
    "portable_path",
    "worst_by_output",
]


def is_noise(finding: dict[str, Any]) -> bool:
    """True for a finding that says nothing about the user's model.

    That is a deprecation notice, a warning or log record raised inside a library (torch's
    registration log of our ``embedding_bag``), or output printed by native code.
    """
    if finding.get("kind") == "deprecation":
        return True
    if finding.get("kind") not in _NOISE_KINDS:
        return False
    source = str(finding.get("source", ""))
    if not source:
        return str(finding.get("message", "")).startswith(("printed:", "native output:"))
    return is_library_file(source.rsplit(":", 1)[0])


def _marked(findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**f, "noise": is_noise(f)} for f in findings]


def gated_on(fmt: str) -> str:
    """Runtime (and ONNX Runtime provider) an artifact of `fmt` is gated on here: ``ort/cpu``.

    A variant's parity holds where it was checked: fp16 kernels differ by provider (on CUDA three of
    the zoo's fp16 variants that pass on the CPU fail their gate), so the manifest says which.
    """
    from runtimes import runtime_for
    from runtimes.ort import OrtRuntime, short_name

    runtime = runtime_for(fmt)
    if runtime is None:
        return "?"
    if isinstance(runtime, OrtRuntime):
        return f"{runtime.name}/{short_name(runtime.options.providers[0])}"
    return runtime.name


def library_versions() -> dict[str, str]:
    """Versions of every library an export depends on (``missing`` when not installed)."""
    versions = {"python": platform.python_version()}
    for dist in ("toolchain", "torch", "onnx", "onnxscript", "onnxruntime", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "missing"
    return versions


def worst_by_output(reports: Sequence[ParityReport]) -> dict[str, dict[str, float]]:
    """Largest max_abs, max_rel and worst_ratio of each output over `reports`."""
    worst: dict[str, dict[str, float]] = {}
    for report in reports:
        for o in report.outputs:
            w = worst.setdefault(o.name, {"max_abs": 0.0, "max_rel": 0.0, "worst_ratio": 0.0})
            for key in w:
                w[key] = max(w[key], float(getattr(o, key)))
    return worst


def build_report(result: ExportResult) -> dict[str, Any]:
    """``report.json``: stages, every path tried (kept or rejected, with why), parity per sample set.

    Findings carry ``noise`` (`is_noise`); no string holds an absolute path of this host (`portable`).
    """
    spec = result.spec
    paths = [p.to_dict() for p in [*result.paths, *result.variants]]
    for path in paths:
        if path.get("artifact"):
            path["artifact"]["findings"] = _marked(path["artifact"]["findings"])
    report: dict[str, Any] = portable(
        {
            "name": spec.name,
            "version": spec.version,
            "source": spec.source,
            # NOTE: the package stage is the writing of this very report; it passed if you can read it.
            "stages": [s.to_dict() for s in result.stages if s.name != "package"],
            "paths": paths[: len(result.paths)],
            "variants": paths[len(result.paths) :],
            "findings": _marked([f.to_dict() for f in result.findings]),
            "tolerance": spec.tolerance.to_dict(),
            "samples": [{"name": s.name, "sizes": dict(s.sizes)} for s in result.samples],
            "data_batches": sum(1 for s in result.samples if s.name.startswith("data-")),
            "versions": library_versions(),
        }
    )
    return report


def build_manifest(result: ExportResult, samples: list[dict[str, Any]]) -> dict[str, Any]:
    """``manifest.json`` without its file list (the package writer adds hashes); paths made `portable`."""
    spec, signature = result.spec, result.signature
    assert signature is not None
    shipped = result.shipped
    manifest = {
        "name": spec.name,
        "version": spec.version,
        "description": spec.description,
        "source": spec.source,
        "tags": list(spec.tags),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": library_versions(),
        "signature": signature.to_dict(),
        "dims": {s: spec.dim(s).to_dict() for s in spec.symbols()},
        "artifacts": [p.artifact.to_dict() for p in shipped if p.artifact is not None],
        "rejected": [
            {"exporter": p.name, "reason": p.reason}
            for p in [*result.paths, *result.variants]
            if p.status == "rejected"
        ],
        "tolerance": spec.tolerance.to_dict(),
        "parity": {
            p.artifact.path: {
                "stage": p.variant if p.variant != "fp32" else ("optimised" if p.artifact.passes else "exported"),
                "passed": all(p.final_reports),
                "sample_sets": [r.sample for r in p.final_reports],
                "worst": worst_by_output(p.final_reports),
                "gated_on": gated_on(p.artifact.format),
            }
            for p in shipped
            if p.artifact is not None
        },
        "samples": samples,
    }
    shippable: dict[str, Any] = portable(manifest)
    return shippable
