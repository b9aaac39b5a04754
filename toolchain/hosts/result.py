"""What one host's verifier found, parsed from the JSON every host writes (or from a Python report)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolchain.core.errors import HostError
from toolchain.package.verify import VerificationReport

__all__ = ["ArtifactOutcome", "HostResult", "from_json", "from_report"]


@dataclass(frozen=True)
class ArtifactOutcome:
    """One artifact on one host: passed or not, and the worst error ratio per sample set."""

    path: str
    passed: bool
    worst: Mapping[str, float] = field(default_factory=dict)
    """Sample set -> largest ``|a - e| / (atol + rtol*|e|)`` over its outputs (<= 1 passes)."""

    @property
    def worst_ratio(self) -> float:
        """The largest ratio over every sample set."""
        return max(self.worst.values(), default=0.0)


@dataclass(frozen=True)
class HostResult:
    """A package verified on one host; truthy only when it is intact and every replay there passed."""

    host: str
    runtime: str
    package: Path
    passed: bool
    artifacts: tuple[ArtifactOutcome, ...] = ()
    failures: tuple[str, ...] = ()
    """One line per failure, naming the file, output and sample."""
    problems: tuple[str, ...] = ()
    """Integrity problems (file set, sizes, hashes, manifest): nothing was replayed when there are any."""
    summary: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    """Artifacts of formats this host does not run."""
    refused: tuple[str, ...] = ()
    """Artifacts not loaded because loading runs code and the package is not trusted."""

    def __bool__(self) -> bool:
        return self.passed

    def outcome(self, path: str) -> ArtifactOutcome | None:
        """The outcome of artifact `path`, if this host replayed it."""
        return next((a for a in self.artifacts if a.path == path), None)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _printable(text: Any) -> str:
    """`text` with control characters escaped (a file name from a package may carry terminal escapes)."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], str(text))


def _number(value: Any) -> float:
    # NOTE: JSON has no Infinity or NaN; the JS and C++ verifiers spell them as strings.
    return float(value) if isinstance(value, int | float | str) else float("nan")


def from_json(text: str, *, host: str, package: Path) -> HostResult:
    """Parse the JSON result a Node.js, browser or C++ verifier wrote.

    Raises:
        HostError: when the text is not a result object.
    """
    try:
        data = json.loads(text)
        artifacts = []
        for entry in data["artifacts"]:
            worst = {
                str(s["sample"]): max((_number(o["worst_ratio"]) for o in s["outputs"].values()), default=0.0)
                for s in entry["samples"]
            }
            passed = not entry.get("error") and bool(entry["samples"]) and all(s["passed"] for s in entry["samples"])
            artifacts.append(ArtifactOutcome(str(entry["path"]), passed, worst))
        runtime = str(data["runtime"])
        summary = [
            f"{a.path} on {runtime}: {sum(_passed(s) for s in e['samples'])}/{len(e['samples'])} sample sets passed "
            f"(worst error at {a.worst_ratio:.3g}x of the allowed)"
            for a, e in zip(artifacts, data["artifacts"], strict=True)
        ]
        summary += [f"{_printable(p)}: skipped, this host does not run its format" for p in data["skipped"]]
        summary += [
            f"{_printable(p)}: refused: loading it runs code; pass --trust if you trust where it came from"
            for p in data.get("refused", ())
        ]
        return HostResult(
            host=host,
            runtime=runtime,
            package=package,
            passed=bool(data["passed"]),
            artifacts=tuple(artifacts),
            failures=tuple(_printable(line) for line in data["failures"]),
            problems=tuple(_printable(f"{p['file']}: {p['message']}") for p in data["problems"]),
            summary=tuple(summary),
            skipped=tuple(_printable(p) for p in data["skipped"]),
            refused=tuple(_printable(p) for p in data.get("refused", ())),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise HostError(
            f"{host} verifier wrote no readable result ({type(e).__name__}: {e}); see its output above"
        ) from e


def _passed(sample: Any) -> bool:
    return bool(sample["passed"])


def from_report(report: VerificationReport) -> HostResult:
    """The Python verifier's report in the same shape (CPU replays only)."""
    artifacts = [
        ArtifactOutcome(
            check.artifact,
            bool(check),
            {r.sample: max((o.worst_ratio for o in r.outputs), default=0.0) for r in check.reports},
        )
        for check in report.checks
        if check.runtime in ("ort", "torchscript", "exported_program")
    ]
    runtimes = sorted({c.runtime for c in report.checks})
    return HostResult(
        host="python",
        runtime="python " + "+".join(runtimes) if runtimes else "python",
        package=report.package,
        passed=bool(report),
        artifacts=tuple(artifacts),
        failures=tuple(_printable(line) for line in report.failure_lines()) if not report else (),
        problems=tuple(_printable(p) for p in report.problems),
        summary=tuple(report.summary_lines()),
        skipped=report.skipped,
        refused=report.refused,
    )
