"""Open the session `toolchain bench` recommended for a batch size: the artifact, runtime, provider and plan.

The manifest's ``recommended`` (written by `bench.record_bench`) names, per batch size, the fastest
artifact that matched eager on the host class it was measured on, and a portable ONNX Runtime
choice. `open_recommended` checks the package's integrity first, falls back to the portable choice
where the fastest one runs code and the package is not trusted, and loads it exactly as it was
timed: same provider, same planned sizes (a session planned for ``batch=16`` refuses other sizes).
A package this machine did not export is first verified in a child process under memory and time
limits (`toolchain.package.sandbox`), so a hostile model fails there instead of in the server.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from runtimes import runtime_for
from runtimes.ort import OrtOptions, OrtRuntime
from toolchain.core.errors import PackageError, RuntimeLoadError
from toolchain.package import trust as trust_list
from toolchain.package.format import check_integrity, open_package
from toolchain.package.sandbox import DEFAULT_LIMITS, Limits
from toolchain.package.verify import verify_package

__all__ = ["open_recommended"]


def open_recommended(
    path: Path,
    batch: int,
    *,
    trust: bool = False,
    portable: bool = False,
    options: OrtOptions | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Any:
    """A loaded session on the artifact recommended for `batch`.

    Args:
        path: the package, benchmarked with ``toolchain bench`` (which records ``recommended``).
        batch: a batch size it was benchmarked at.
        trust: allow a recommended TorchScript/``.pt2`` artifact of a package exported elsewhere.
        portable: take the ONNX Runtime choice even where a code-loading artifact was faster.
        options: ONNX Runtime options (threads, ...); provider and planned sizes come from the record.
        limits: memory and time for the verification of a package not exported on this machine.

    Raises:
        PackageError: the package is corrupted, does not verify, was never benchmarked, or not at `batch`.
        LimitError: a package not exported here went past `limits` while it was verified.
        RuntimeLoadError: the recorded provider cannot run here (measured on another host class).
    """
    path = Path(path)
    problems = check_integrity(path)
    if problems:
        raise PackageError(f"{path}: {problems[0]}; re-export it or restore the file")
    if not trust_list.is_trusted(path):
        report = verify_package(path, trust=trust, providers=("cpu",), limits=limits)
        if not report:
            raise PackageError(f"{path}: does not verify here: {report.failure_lines()[0]}")
    package = open_package(path)
    recorded = package.manifest.get("recommended") or {}
    if not isinstance(recorded, Mapping) or not recorded:
        raise PackageError(f"{path}: no recommendation recorded; run `toolchain bench {path}` on the serving host")
    if str(batch) not in recorded:
        raise PackageError(f"{path}: no recommendation at batch {batch}; benchmarked at {sorted(recorded, key=int)}")
    rec = recorded[str(batch)]
    entries = {str(a["path"]): a for a in package.artifacts}
    fastest = runtime_for(str(entries.get(rec["artifact"], {}).get("format", "")))
    runs_code = fastest is not None and fastest.runs_code
    if portable or (runs_code and not (trust or trust_list.is_trusted(path))):
        rec = {**(rec.get("portable") or {}), "runtime": "ort"}
        if "artifact" not in rec:
            raise PackageError(f"{path}: batch {batch} has no portable (ONNX Runtime) recommendation")
    entry = entries.get(rec["artifact"])
    if entry is None:
        raise PackageError(f"{path}: recommended artifact {rec['artifact']!r} is not in the package")
    if rec.get("runtime", "ort") != "ort":
        runtime = runtime_for(str(entry["format"]))
        if runtime is None:
            raise RuntimeLoadError(f"{path}: no runtime for {entry['format']} on this host")
        return runtime.load(package.file(rec["artifact"]), signature=package.signature)
    planned = replace(
        options or OrtOptions(),
        providers=(str(rec.get("provider") or "cpu"),),
        fixed_dims=tuple((str(k), int(v)) for k, v in (rec.get("fixed_dims") or {}).items()),
    )
    try:
        return OrtRuntime(planned).load(package.file(rec["artifact"]), signature=package.signature)
    except RuntimeLoadError as e:
        host = recorded[str(batch)].get("host", {})
        raise RuntimeLoadError(f"{e} (recommended on {host}); run `toolchain bench {path}` on this host") from e
