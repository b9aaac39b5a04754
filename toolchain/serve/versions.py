"""One model version on this host: verified first, then opened on the artifact chosen for this host.

`open_version` runs `verify_package` (hashes, exact file set, golden replay of every runnable
artifact); only a package that passes gets sessions. The artifact served is the one ``toolchain bench``
recommended here, per benchmarked batch, when it recorded one (code-loading artifacts only with
``trust``), and otherwise, and for every other size, the portable fp32 ONNX artifact.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from runtimes import runtime_for
from runtimes.ort import OrtOptions, OrtRuntime, expand_providers
from toolchain.core.errors import PackageError, ToolchainError
from toolchain.core.signature import FeedGuard, Signature
from toolchain.package.format import open_package
from toolchain.package.verify import VerificationReport, verify_package
from toolchain.serve.recommended import open_recommended

__all__ = [
    "NAME",
    "Fingerprint",
    "Runner",
    "VersionSpec",
    "check_name",
    "fingerprint",
    "open_version",
    "portable_artifact",
]

_log = logging.getLogger("toolchain.serve")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
"""Model and version names: never a path (no slash, no leading dot, no ``..``)."""


def check_name(name: str, what: str) -> str:
    """`name` when it is a safe model or version name; `PackageError` otherwise."""
    if not NAME.match(name) or ".." in name:
        raise PackageError(f"{what} {name[:80]!r} must match {NAME.pattern} (letters, digits, _ . -; no '..')")
    return name


Fingerprint = tuple[tuple[str, int, int, int], ...]
"""``(relative path, size, mtime ns, inode)`` of every file of a package folder, sorted."""


def fingerprint(path: Path) -> Fingerprint:
    """What a package folder holds now, from `stat` alone (nothing is read): a change means verify again.

    NOTE: every file counts, not only the manifest: an artifact replaced in place (same manifest) must
    not go unnoticed until a restart. Links are listed as themselves (verification refuses them).
    """
    entries = []
    for folder, dirs, files in os.walk(path, followlinks=False):
        dirs.sort()
        for name in (*files, *(d for d in dirs if os.path.islink(os.path.join(folder, d)))):
            full = os.path.join(folder, name)
            try:
                stat = os.lstat(full)
            except OSError:
                continue
            entries.append((os.path.relpath(full, path), stat.st_size, stat.st_mtime_ns, stat.st_ino))
    return tuple(sorted(entries))


@dataclass(frozen=True)
class VersionSpec:
    """Where a version comes from: model name, version name, package folder, and its fingerprint."""

    model: str
    version: str
    path: Path
    fingerprint: Fingerprint = ()


@dataclass
class Runner:
    """Verified sessions of one version: one planned per benchmarked size, one general for the rest.

    Args:
        signature: the package's signature.
        tolerance: the package's tolerance (data for callers that compare answers).
        artifact: the general session's artifact, as named in the manifest.
        general: the session used for every size without a planned one.
        planned: ``((input, axis, size), ...)`` requirements -> the session bench planned for them.
    """

    signature: Signature
    tolerance: Any
    artifact: str
    general: Any
    planned: list[tuple[tuple[tuple[str, int, int], ...], Any]] = field(default_factory=list)
    report: VerificationReport | None = None

    def __post_init__(self) -> None:
        self._guard = FeedGuard(self.signature)
        self._choice: dict[tuple[Any, ...], Any] = {}

    def run(self, feeds: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        """Run `feeds` on the session planned for their sizes, else the general one."""
        self._guard.check(feeds)
        key = tuple(v.shape for v in feeds.values())
        session = self._choice.get(key)
        if session is None:
            session = next(
                (s for needs, s in self.planned if all(feeds[i].shape[a] == n for i, a, n in needs)), self.general
            )
            if len(self._choice) < 1024:
                self._choice[key] = session
        result: Mapping[str, np.ndarray] = session.run(feeds)
        return result


def open_version(
    spec: VersionSpec, *, trust: bool = False, providers: Sequence[str] = ("auto",), intra_op_threads: int = 1
) -> Runner:
    """Verify the package of `spec` on this host and open its sessions.

    Args:
        spec: the version and its package folder.
        trust: allow code-loading artifacts (TorchScript, ``.pt2``).
        providers: ONNX Runtime providers to verify and serve on.
        intra_op_threads: ONNX Runtime threads per operator in each session (0: its default, all cores).

    Raises:
        PackageError: the package failed verification (the message names the first failure).
        RuntimeLoadError: a verified artifact could not be loaded here.
    """
    report = verify_package(spec.path, trust=trust, providers=providers)
    if not report:
        lines = report.failure_lines() or [report.summary()]
        more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
        raise PackageError(f"{spec.model} version {spec.version}: failed verification: {lines[0]}{more}")
    package = open_package(spec.path)
    signature = package.signature
    portable = portable_artifact(package.artifacts, report)
    # NOTE: one thread per op by default: ORT's idle pool threads spin after every run, and on a
    # 2-core host that took 0.5-1 core from the event loop (460-990 ms of 3 s at 32 clients on
    # feed.dlrm_small); requests run in parallel through batching instead.
    options = OrtOptions(intra_op_threads=intra_op_threads)
    general = _load_general(package.file(portable), signature, providers, options)
    planned: list[tuple[tuple[tuple[str, int, int], ...], Any]] = []
    recorded = package.manifest.get("recommended") or {}
    for batch, rec in recorded.items() if isinstance(recorded, Mapping) else ():
        try:
            session = open_recommended(spec.path, int(batch), trust=trust, portable=not trust, options=options)
        except (ToolchainError, ValueError, TypeError) as e:
            _log.warning("%s version %s: recommendation at batch %s not used: %s", spec.model, spec.version, batch, e)
            continue
        sizes = rec.get("fixed_dims") or rec.get("sizes") or {}
        needs = tuple(
            (t.name, axis, int(sizes[d]))
            for t in signature.inputs
            for axis, d in enumerate(t.shape)
            if isinstance(d, str) and d in sizes
        )
        if needs:
            planned.append((needs, session))
    return Runner(signature, package.tolerance, portable, general, planned, report)


def portable_artifact(artifacts: Sequence[Mapping[str, Any]], report: VerificationReport) -> str:
    """The first fp32 ONNX artifact that passed its replay here."""
    passed = {c.artifact for c in report.checks if c}
    for entry in artifacts:
        path = str(entry.get("path"))
        ort = isinstance(runtime_for(str(entry.get("format"))), OrtRuntime)
        if ort and path in passed and str(entry.get("variant", "fp32")) == "fp32":
            return path
    raise PackageError(f"{report.package}: no fp32 ONNX artifact passed verification here; nothing portable to serve")


def _load_general(path: Path, signature: Signature, providers: Sequence[str], options: OrtOptions) -> Any:
    """The portable artifact on the best provider it starts on here (it was replayed on each)."""
    error: ToolchainError | None = None
    for provider in expand_providers(providers):
        try:
            return OrtRuntime(replace(options, providers=(provider,))).load(path, signature=signature)
        except ToolchainError as e:
            error = e
    raise error or PackageError(f"{path}: no provider to load it on")
