"""Load and replay the models of an untrusted package in a child process under memory and time limits.

A package this machine did not export (`toolchain.package.trust`) may hold a 6 KB ONNX file that
asks for terabytes (``ConstantOfShape``) or never ends (a ``Loop`` of 2**62 steps). `verify_in_child`
runs the loading and replays in ``python -m toolchain.package.sandbox`` with

- ``RLIMIT_AS`` (address space) = `Limits.memory_bytes` (default 4 GiB),
- ``RLIMIT_CPU`` = `Limits.seconds` of CPU time, and the same number of seconds of wall-clock time,
- ``RLIMIT_FSIZE`` = 0 (the child writes no file) unless ``--trust`` lets code-loading artifacts
  load (``torch.export.load`` needs a temporary folder), and no core dumps,

and reads the results back as JSON lines on the child's stdout. A limit hit is a `LimitError` naming
the artifact that was being loaded or run and the limit, with the option that raises it.

The limits are POSIX resource limits: enforced on Linux; macOS ignores ``RLIMIT_AS`` (the time
limits still hold). GPU execution providers reserve large address ranges when they start: verify an
untrusted package on a GPU with a higher ``--max-memory``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolchain.core.errors import LimitError, PackageError

if TYPE_CHECKING:
    from toolchain.package.verify import VerificationReport

__all__ = ["DEFAULT_LIMITS", "Limits", "parse_size", "verify_in_child"]

# NOTE: what a failed allocation looks like once RLIMIT_AS is hit: ONNX Runtime's arena and BFC
# allocators, std::bad_alloc through pybind11, numpy, and Python itself.
_ALLOCATION_FAILED = re.compile(r"bad_alloc|[Ff]ailed to allocate|MemoryError|Cannot allocate memory|out of memory")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


@dataclass(frozen=True)
class Limits:
    """Resources an untrusted package's models may use while they are loaded and replayed."""

    memory_bytes: int = 4 << 30
    """Address space of the child process (``RLIMIT_AS``); raise with ``--max-memory`` / ``TOOLCHAIN_MAX_MEMORY``."""
    seconds: int = 300
    """CPU time (``RLIMIT_CPU``) and wall-clock time; raise with ``--max-time`` / ``TOOLCHAIN_MAX_TIME``."""

    def describe_memory(self) -> str:
        """``4 GiB``."""
        for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
            if self.memory_bytes >= size:
                return f"{self.memory_bytes / size:g} {unit}"
        return f"{self.memory_bytes} B"


DEFAULT_LIMITS = Limits()


def parse_size(text: str) -> int:
    """``"4GiB"``, ``"512M"``, ``"1073741824"`` -> bytes (powers of 1024); `LimitError` otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text, flags=re.IGNORECASE)
    if not match:
        raise LimitError(f"a memory limit looks like 512MiB or 4GiB, got {text!r}")
    return int(float(match[1]) * _UNITS[match[2].lower()])


def verify_in_child(
    path: Path, *, trust: bool, providers: Sequence[str], limits: Limits = DEFAULT_LIMITS
) -> VerificationReport:
    """`toolchain.package.verify.verify_package` of `path` in a child process under `limits`.

    Raises:
        LimitError: the child ran out of memory or time; the message names the artifact and the limit.
        PackageError: the child failed in another way (its last line of stderr is quoted).
    """
    request = json.dumps({"path": str(path), "trust": trust, "providers": list(providers), "limits": vars(limits)})
    # NOTE: glibc reserves a 64 MiB malloc arena per thread by default, address space that RLIMIT_AS
    # counts; two arenas keep a many-core host's baseline far below the limit.
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "MALLOC_ARENA_MAX": "2"}
    with subprocess.Popen(
        [sys.executable, "-m", "toolchain.package.sandbox"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    ) as child:
        try:
            out, err = child.communicate(request, timeout=limits.seconds)
            timed_out = False
        except subprocess.TimeoutExpired:
            child.kill()
            out, err = child.communicate()
            timed_out = True
    events = [event for line in out.splitlines() if isinstance(event := _event(line), dict)]
    artifact = next((e["artifact"] for e in reversed(events) if "artifact" in e), str(path))
    final = events[-1] if events else {}
    if timed_out:
        raise _limit(artifact, f"exceeded the time limit of {limits.seconds} s", "--max-time")
    if "limit" in final:
        raise _limit(final["artifact"], _exceeded(final["limit"], limits), _option(final["limit"]))
    if "report" in final:
        return _report_from_dict(final["report"])
    if "error" in final:
        raise PackageError(final["error"])
    code = child.returncode
    if code == -signal.SIGXCPU:
        raise _limit(artifact, f"exceeded the CPU time limit of {limits.seconds} s", "--max-time")
    if code in (-signal.SIGKILL, -signal.SIGABRT, -signal.SIGSEGV, -signal.SIGBUS) or _ALLOCATION_FAILED.search(err):
        raise _limit(artifact, _exceeded("memory", limits), "--max-memory")
    last = err.strip().splitlines()[-1] if err.strip() else "no output"
    raise PackageError(f"{artifact}: verification in a child process failed (exit status {code}): {last}")


def _event(line: str) -> Any:
    """One JSON line of the child's answer; anything else a library printed is skipped."""
    try:
        return json.loads(line) if line.startswith("{") else None
    except ValueError:
        return None


def _exceeded(kind: str, limits: Limits) -> str:
    if kind == "memory":
        return f"exceeded the memory limit of {limits.describe_memory()}"
    return f"exceeded the time limit of {limits.seconds} s"


def _option(kind: str) -> str:
    return "--max-memory" if kind == "memory" else "--max-time"


def _limit(artifact: str, what: str, option: str) -> LimitError:
    env = "TOOLCHAIN_MAX_MEMORY" if option == "--max-memory" else "TOOLCHAIN_MAX_TIME"
    return LimitError(f"{artifact}: {what} for untrusted packages; raise it with {option} (or {env})")


def _report_to_dict(report: VerificationReport) -> dict[str, Any]:
    return {
        "package": str(report.package),
        "problems": [[p.file, p.message] for p in report.problems],
        "checks": [
            {"artifact": c.artifact, "runtime": c.runtime, "reports": [r.to_dict() for r in c.reports]}
            for c in report.checks
        ],
        "skipped": list(report.skipped),
        "refused": list(report.refused),
        "unstarted": list(report.unstarted),
    }


def _report_from_dict(data: Mapping[str, Any]) -> VerificationReport:
    from toolchain.core.checks import CheckResult
    from toolchain.core.parity import OutputParity, ParityReport
    from toolchain.package.format import Problem
    from toolchain.package.verify import ArtifactCheck, VerificationReport

    def parity(r: Mapping[str, Any]) -> ParityReport:
        outputs = tuple(OutputParity(name=k, **v) for k, v in r["outputs"].items())
        checks = tuple(CheckResult(**{k: v for k, v in c.items() if k != "passed"}) for c in r["checks"])
        return ParityReport(outputs, sample=r["sample"], error=r["error"], checks=checks)

    return VerificationReport(
        Path(data["package"]),
        problems=tuple(Problem(f, m) for f, m in data["problems"]),
        checks=tuple(
            ArtifactCheck(c["artifact"], c["runtime"], tuple(parity(r) for r in c["reports"])) for c in data["checks"]
        ),
        skipped=tuple(data["skipped"]),
        refused=tuple(data["refused"]),
        unstarted=tuple(data["unstarted"]),
    )


def _set_limits(limits: Limits, *, writes: bool) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (limits.seconds, limits.seconds + 5))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if not writes:
        # NOTE: ONNX Runtime writes nothing, so the child may write no file; with SIGXFSZ ignored a write
        # fails with EFBIG instead of a kill. torch.export.load (a trusted .pt2) needs a temporary folder.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))


def _emit(event: Mapping[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def _child() -> None:
    """Entry point of the child: read the request on stdin, set the limits, verify, answer on stdout."""
    request = json.loads(sys.stdin.read())
    limits = Limits(**request["limits"])
    from toolchain.package.trust import is_trusted

    # NOTE: the parent may see the package as untrusted where the child's trust list says otherwise
    # (a list updated meanwhile); code-loading artifacts load here whenever verify_package says so.
    _set_limits(limits, writes=bool(request["trust"]) or is_trusted(Path(request["path"])))
    from toolchain.core.errors import ToolchainError
    from toolchain.package.verify import verify_package

    current = [request["path"]]

    def progress(artifact: str) -> None:
        current[0] = artifact
        _emit({"artifact": artifact})

    try:
        report = verify_package(
            Path(request["path"]),
            trust=request["trust"],
            providers=tuple(request["providers"]),
            limits=None,
            progress=progress,
        )
    except MemoryError:
        _emit({"limit": "memory", "artifact": current[0]})
        return
    except ToolchainError as e:
        kind = "memory" if _ALLOCATION_FAILED.search(str(e)) else ""
        _emit({"limit": kind, "artifact": current[0]} if kind else {"error": str(e)})
        return
    for problem in report.problems:
        if _ALLOCATION_FAILED.search(problem.message):
            _emit({"limit": "memory", "artifact": current[0]})
            return
    for check in report.checks:
        if any(_ALLOCATION_FAILED.search(r.error) for r in check.reports):
            _emit({"limit": "memory", "artifact": check.artifact})
            return
    _emit({"report": _report_to_dict(report)})


if __name__ == "__main__":
    _child()
