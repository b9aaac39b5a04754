"""Re-verify a package on any host: integrity first, then replay golden samples on each runtime here.

Needs numpy and onnxruntime only; never imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from runtimes import runtime_for
from runtimes.ort import OrtRuntime, expand_providers
from toolchain.core.checks import TaskCheck
from toolchain.core.errors import RuntimeLoadError, ToolchainError
from toolchain.core.parity import ParityReport, Tolerance, compare
from toolchain.core.signature import TensorSig
from toolchain.package import trust as trust_list
from toolchain.package.format import Package, Problem, read_package
from toolchain.package.sandbox import DEFAULT_LIMITS, Limits

__all__ = ["ArtifactCheck", "VerificationReport", "replay", "replay_package", "verify_package"]


@dataclass(frozen=True)
class ArtifactCheck:
    """One artifact replayed on one runtime over every golden sample set."""

    artifact: str
    runtime: str
    reports: tuple[ParityReport, ...]

    def __bool__(self) -> bool:
        return bool(self.reports) and all(self.reports)


@dataclass(frozen=True)
class VerificationReport:
    """Outcome of `verify_package`; truthy only when the package is intact and every replay passed."""

    package: Path
    problems: tuple[Problem, ...] = ()
    checks: tuple[ArtifactCheck, ...] = ()
    skipped: tuple[str, ...] = ()
    refused: tuple[str, ...] = ()
    """Artifacts not loaded because loading runs code and the package is not trusted."""
    unstarted: tuple[str, ...] = ()
    """Providers ``auto`` tried that ONNX Runtime could not start here, with the reason."""

    def __bool__(self) -> bool:
        return not self.problems and bool(self.checks) and all(self.checks)

    @property
    def counts(self) -> dict[str, int]:
        """Artifacts by outcome: ``verified`` (every replay passed), ``failed``, ``refused``, ``skipped``."""
        outcome: dict[str, bool] = {}
        for check in self.checks:
            outcome[check.artifact] = outcome.get(check.artifact, True) and bool(check)
        verified = sum(outcome.values())
        return {
            "verified": verified,
            "failed": len(outcome) - verified,
            "refused": len(self.refused),
            "skipped": len(self.skipped),
        }

    @property
    def complete(self) -> bool:
        """True when the package is intact and every artifact in it was replayed and passed here."""
        return bool(self) and not self.refused and not self.skipped

    def summary(self) -> str:
        """``3 verified, 0 failed, 1 refused, 1 skipped (of 5 artifacts)``."""
        if self.problems:
            return f"not verified: {len(self.problems)} integrity problem(s)"
        counts = self.counts
        return ", ".join(f"{n} {k}" for k, n in counts.items()) + f" (of {sum(counts.values())} artifacts)"

    def failure_lines(self) -> list[str]:
        """One line per failure, naming the file, output and sample."""
        lines = [str(p) for p in self.problems]
        for check in self.checks:
            for report in check.reports:
                if report.error:
                    lines.append(f"{check.artifact}: sample {report.sample!r}: could not run: {report.error}")
                lines.extend(
                    f"{check.artifact}: output {o.name!r} on sample {report.sample!r}: {o.describe()}"
                    for o in report.failures
                )
                lines.extend(
                    f"{check.artifact}: check on sample {report.sample!r}: {c.describe()}"
                    for c in report.checks
                    if not c
                )
        if not self.problems and not self.checks:
            lines.append(
                f"{self.package}: no artifact could be run on this host "
                f"(skipped: {list(self.skipped)}, refused: {list(self.refused)})"
            )
        return lines

    def summary_lines(self) -> list[str]:
        """One line per artifact replayed or skipped."""
        lines = []
        for check in self.checks:
            passed = sum(bool(r) for r in check.reports)
            worst = max((o.worst_ratio for r in check.reports for o in r.outputs), default=0.0)
            lines.append(
                f"{check.artifact} on {check.runtime}: {passed}/{len(check.reports)} sample sets passed "
                f"(worst error at {worst:.3g}x of the allowed)"
            )
        lines.extend(f"{s}: skipped, no runtime for it on this host" for s in self.skipped)
        lines.extend(f"provider {s}" for s in self.unstarted)
        lines.extend(
            f"{s}: refused: loading it runs code and this package was not exported on this machine; "
            "pass --trust if you trust where it came from"
            for s in self.refused
        )
        return lines


def verify_package(
    path: Path,
    *,
    trust: bool = False,
    providers: Sequence[str] = ("auto",),
    limits: Limits | None = DEFAULT_LIMITS,
    progress: Callable[[str], None] = lambda artifact: None,
) -> VerificationReport:
    """Check hashes and the exact file set, then replay every sample on every runnable artifact.

    Args:
        path: the package folder.
        trust: load artifacts whose loading runs code (TorchScript, ``.pt2``) even when this machine
            did not export the package itself.
        providers: ONNX Runtime providers to replay ONNX artifacts on, each in turn (``cpu``,
            ``cuda``, ...). ``auto``: every accelerated provider available here, then cpu; one that
            ONNX Runtime cannot start is noted in ``unstarted``, where a named one is a failure.
        limits: memory and time for loading and replaying the models of a package this machine did
            not export, in a child process (`toolchain.package.sandbox`); None runs them here.
        progress: called with each artifact's path before it is loaded.

    Raises:
        LimitError: an untrusted package's model went past `limits` (the message names it).
    """
    path = Path(path)
    package, problems = read_package(path)
    if package is None or problems:
        return VerificationReport(path, problems=tuple(problems))
    if limits is not None and not trust_list.is_trusted(path):
        from toolchain.package.sandbox import verify_in_child

        return verify_in_child(path, trust=trust, providers=providers, limits=limits)
    return replay_package(package, trust=trust, providers=providers, progress=progress)


def replay_package(
    package: Package,
    *,
    trust: bool = False,
    providers: Sequence[str] = ("auto",),
    progress: Callable[[str], None] = lambda artifact: None,
    samples: Sequence[str] | None = None,
) -> VerificationReport:
    """The replays of `verify_package` in this process, on a package already read (and so integrity-checked).

    Args:
        package: the package, read with `read_package` / `open_package`.
        trust: as for `verify_package`.
        providers: as for `verify_package`.
        progress: as for `verify_package`.
        samples: replay only the golden sample sets of these names (None: every one); for a package this
            process has just written and verified set by set (`toolchain.build.seal`), not for a user's check.
    """
    path = package.path
    try:
        tolerance = package.tolerance
        trusted = trust or trust_list.is_trusted(path)
        named = [p for p in providers if p.lower() != "auto"]
        checks, skipped, refused, unstarted = [], [], [], {}
        for entry in package.artifacts:
            runtime = runtime_for(str(entry.get("format")))
            if runtime is None:
                skipped.append(str(entry.get("path")))
                continue
            if runtime.runs_code and not trusted:
                refused.append(str(entry.get("path")))
                continue
            # NOTE: a precision variant is judged by its own gate: looser tolerance plus task checks.
            own = Tolerance.from_dict(entry["tolerance"]) if "tolerance" in entry else tolerance
            task = tuple(TaskCheck.from_dict(c) for c in entry.get("checks", ()))
            sessions = _ort_runtimes(runtime, providers) if isinstance(runtime, OrtRuntime) else [(runtime, "")]
            progress(str(entry.get("path")))
            for each, provider in sessions:
                if provider in unstarted:
                    continue
                try:
                    session = _load(each, package, str(entry["path"]))
                except RuntimeLoadError as e:
                    if provider in named or "could not start" not in str(e):
                        raise
                    unstarted[provider] = f"{provider}: not started here: {str(e).split(': ', 1)[-1]}"
                    continue
                label = each.name if provider in ("", "cpu") else f"{each.name}-{provider}"
                reports = replay(package, session, own, checks=task, samples=samples)
                checks.append(ArtifactCheck(str(entry["path"]), label, reports))
    except (KeyError, TypeError, ValueError) as e:
        problem = Problem("manifest.json", f"malformed entry ({type(e).__name__}: {e})")
        return VerificationReport(path, problems=(problem,))
    except ToolchainError as e:
        return VerificationReport(path, problems=(Problem(path.name, str(e)),))
    return VerificationReport(
        path, checks=tuple(checks), skipped=tuple(skipped), refused=tuple(refused), unstarted=tuple(unstarted.values())
    )


def _load(runtime: Any, package: Package, rel: str) -> Any:
    """A session on artifact `rel`: ONNX from the bytes that were hashed, other formats from their file."""
    if isinstance(runtime, OrtRuntime):
        model, external = package.onnx_model(rel)
        return runtime.load_bytes(model, name=rel, signature=package.signature, external=external)
    return runtime.load(package.file(rel), signature=package.signature)


def _ort_runtimes(runtime: OrtRuntime, providers: Sequence[str]) -> list[tuple[OrtRuntime, str]]:
    """One ONNX Runtime per provider to replay on, with the provider's short name."""
    return [(OrtRuntime(replace(runtime.options, providers=(p,))), p) for p in expand_providers(providers)]


def replay(
    package: Package,
    session: Any,
    tolerance: Tolerance,
    *,
    checks: Sequence[TaskCheck] = (),
    samples: Sequence[str] | None = None,
) -> tuple[ParityReport, ...]:
    """Run `session` on every golden sample set of `package` (or those named in `samples`) and compare."""
    reports = []
    for sample in package.samples:
        name = str(sample["name"])
        if samples is not None and name not in samples:
            continue
        sizes = sample.get("sizes", {})
        feeds = _arrays(package, sample["inputs"], package.signature.inputs, sizes)
        expected = _arrays(package, sample["expected"], package.signature.outputs, sizes)
        try:
            actual = session.run(feeds)
        except ToolchainError as e:
            reports.append(ParityReport.could_not_run(str(e), sample=name))
            continue
        reports.append(compare(expected, actual, tolerance, sample=name, checks=checks, feeds=feeds))
    return tuple(reports)


def _arrays(
    package: Package, entries: Mapping[str, str], tensors: Sequence[TensorSig], sizes: Mapping[str, int]
) -> dict[str, Any]:
    by_name = {t.name: t for t in tensors}
    return {key: package.array(rel, tensor=by_name.get(key), sizes=sizes) for key, rel in entries.items()}
