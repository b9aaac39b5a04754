"""The last stage of an export: golden samples and reports written, the staged package re-checked, committed.

The re-check proves that the staged folder is the package the pipeline verified, without replaying
what was replayed a moment ago:

- integrity: the manifest's schema, the exact file set and every file's hash (`read_package`); the
  artifacts were moved here from the files the pipeline verified, so their hashes are those bytes;
- the golden samples read back through the package reader (header checks against the signature
  included) are bit for bit the inputs and reference outputs every path was judged against;
- every ONNX artifact loaded the way ``toolchain verify`` loads it (from the hashed bytes, with its
  external data) and replayed on the export sample set against the recorded outputs and tolerance, so
  the package's own check passes end to end.

NOTE: replaying every sample set here again was 0.3-0.5 s of a 5-8 s export of an image model, for no
verdict the pipeline had not already reached on the same bytes and the same arrays.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from toolchain.build.record import build_manifest, build_report
from toolchain.core.artifact import Finding
from toolchain.core.errors import PackageError
from toolchain.core.samples import SampleSet
from toolchain.package import trust
from toolchain.package.format import Package, open_package
from toolchain.package.report import render_markdown
from toolchain.package.staging import PackageStaging
from toolchain.package.verify import replay_package

if TYPE_CHECKING:
    from toolchain.build.pipeline import ExportResult

__all__ = ["seal"]


def seal(result: ExportResult, staging: PackageStaging, out: Path, expected: list[dict[str, np.ndarray]]) -> None:
    """Write samples and reports, finalise the manifest, re-check the staged package, commit it.

    Raises:
        PackageError: when the staged package does not read back as the one verified (naming the file).
    """
    entries = _write_package(result, staging, expected)
    staging.finalize(build_manifest(result, entries))
    package = open_package(staging.path)  # NOTE: integrity: schema, exact file set, every hash, read once
    _read_back(package, result.samples, expected, out)
    check = replay_package(package, samples=(result.samples[0].name,))
    if check.problems or not all(check.checks):
        raise PackageError(f"{out}: the staged package does not re-verify: {check.failure_lines()[0]}")
    result.package = staging.commit()
    if not trust.remember(result.package):
        result.findings.append(
            Finding("trust-list", f"could not write {trust.trust_list_path()}; verify needs --trust here")
        )


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


def _read_back(package: Package, samples: list[SampleSet], expected: list[dict[str, np.ndarray]], out: Path) -> None:
    """Every golden array, read as ``verify`` reads it, is bit for bit the one the paths were judged on."""
    entries = {str(e["name"]): e for e in package.samples}
    inputs = {t.name: t for t in package.signature.inputs}
    outputs = {t.name: t for t in package.signature.outputs}
    for sample, exp in zip(samples, expected, strict=True):
        entry = entries.get(sample.name)
        if entry is None:
            raise PackageError(f"{out}: the staged manifest has no sample set {sample.name!r}")
        for kind, arrays, tensors in (("inputs", sample.feeds, inputs), ("expected", exp, outputs)):
            files: Mapping[str, str] = entry[kind]
            if set(files) != set(arrays):
                raise PackageError(
                    f"{out}: sample set {sample.name!r} lists {kind} {sorted(files)}, not {sorted(arrays)}"
                )
            for name, rel in files.items():
                got = package.array(rel, tensor=tensors.get(name), sizes=sample.sizes)
                want = np.ascontiguousarray(arrays[name])
                if got.dtype != want.dtype or got.shape != want.shape or got.tobytes() != want.tobytes():
                    raise PackageError(f"{out}: {rel} does not read back as the array the export was verified on")
