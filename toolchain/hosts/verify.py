"""One entry point over every host: verify a package on ``python``, ``node``, ``browser``, ``cpp`` or all."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from toolchain.core.errors import HostError, PackageError
from toolchain.hosts.result import HostResult, from_report

__all__ = ["HOSTS", "host_table", "verify_on"]

HOSTS = ("python", "node", "browser", "cpp")


def verify_on(
    host: str, package: Path, *, trust: bool = False, threads: int = 1, screenshot: Path | None = None
) -> HostResult:
    """Verify `package` on `host`, installing or building what the host needs on first use.

    Raises:
        HostError: for an unknown host, or one that is missing something (the message names it).
        PackageError: when `package` is not a folder.
    """
    package = Path(package)
    if host not in HOSTS:
        raise HostError(f"unknown host {host!r}; choose one of {', '.join(HOSTS)} or all")
    if not package.is_dir():
        raise PackageError(f"{package}: no such package folder")
    if host == "python":
        from toolchain.package.verify import verify_package

        return from_report(verify_package(package, trust=trust, providers=("cpu",)))
    if host == "node":
        from toolchain.hosts.node import verify_node

        return verify_node(package, threads=threads)
    if host == "browser":
        from toolchain.hosts.browser import verify_browser

        return verify_browser(package, threads=threads, screenshot=screenshot)
    from toolchain.hosts.cpp import verify_cpp

    return verify_cpp(package, trust=trust, threads=threads)


def host_table(results: Sequence[HostResult]) -> list[str]:
    """A host x artifact table: ``ok 0.013x`` (worst error over the allowed), ``FAIL``, ``refused`` or ``-``."""
    paths: list[str] = []
    for result in results:
        for path in [*(a.path for a in result.artifacts), *result.refused, *result.skipped]:
            if path not in paths:
                paths.append(path)
    width = max((len(p) for p in paths), default=8)
    lines = [f"{'artifact':<{width}}  " + "  ".join(f"{r.host:<12}" for r in results)]
    for path in paths:
        cells = []
        for result in results:
            outcome = result.outcome(path)
            if outcome is not None:
                cell = f"{'ok' if outcome.passed else 'FAIL'} {outcome.worst_ratio:.2g}x"
            elif path in result.refused:
                cell = "refused"
            else:
                cell = "-"
            cells.append(f"{cell:<12}")
        lines.append(f"{path:<{width}}  " + "  ".join(cells))
    integrity = ["CORRUPT" if r.problems else "intact" for r in results]
    lines.append(f"{'(files and hashes)':<{width}}  " + "  ".join(f"{c:<12}" for c in integrity))
    return lines
