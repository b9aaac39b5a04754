"""Benchmark every artifact of a package on every runtime here, beside eager PyTorch, and recommend one.

For each batch size: inputs are drawn from the spec (or tiled from the golden export sample), eager
runs first and is the reference; each artifact is loaded, its outputs on these inputs are checked
against eager with the artifact's own gate, then timed until its median settles. The recommendation
per batch is the fastest artifact that matched; artifacts whose loading runs code (TorchScript,
``.pt2``) are candidates only on trusted hosts, and the fastest ONNX Runtime artifact is always named
as the portable choice.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtimes import runtime_for
from runtimes.ort import OrtOptions, OrtRuntime
from toolchain import trust as trust_list
from toolchain.checks import TaskCheck
from toolchain.errors import ToolchainError
from toolchain.package import Package, load_array, open_package
from toolchain.parity import Tolerance, compare
from toolchain.samples import make_feed
from toolchain.spec import ModelSpec
from toolchain.timing import Timing, measure_stable

__all__ = ["BenchReport", "BenchRow", "bench_package", "record_bench"]

EAGER = "eager"


@dataclass(frozen=True)
class BenchRow:
    """One artifact on one runtime at one batch size."""

    artifact: str
    variant: str
    runtime: str
    batch: int
    timing: Timing
    settled: bool
    rss_mb: float
    """Resident memory of the process after loading and running it."""
    added_mb: float
    """Resident memory that loading and running it added."""
    eager_ms: float = 0.0
    parity: bool | None = None
    """Matched eager on this batch's inputs with the artifact's own gate (None: not checked, e.g. eager)."""
    runs_code: bool = False
    note: str = ""

    @property
    def ratio_vs_eager(self) -> float:
        """Eager median over this median: > 1 is faster than eager."""
        return self.eager_ms / self.timing.p50_ms if self.eager_ms and self.timing.p50_ms else 0.0

    @property
    def throughput(self) -> float:
        """Items per second at the median latency."""
        return self.batch * 1e3 / self.timing.p50_ms if self.timing.p50_ms else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "artifact": self.artifact,
            "variant": self.variant,
            "runtime": self.runtime,
            "batch": self.batch,
            **self.timing.to_dict(),
            "settled": self.settled,
            "throughput_per_s": round(self.throughput, 2),
            "ratio_vs_eager": round(self.ratio_vs_eager, 3),
            "rss_mb": round(self.rss_mb, 1),
            "added_mb": round(self.added_mb, 1),
            "parity": self.parity,
            "runs_code": self.runs_code,
            "note": self.note,
        }


@dataclass
class BenchReport:
    """Every row measured, and the recommendation per batch size."""

    package: Path
    model: str
    trusted: bool
    rows: list[BenchRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def recommended(self, batch: int, *, portable: bool = False) -> BenchRow | None:
        """Fastest artifact that matched eager at `batch` (ONNX Runtime only when `portable`)."""
        candidates = [
            r
            for r in self.rows
            if r.batch == batch
            and r.runtime != EAGER
            and r.parity
            and (self.trusted or not r.runs_code)
            and (not portable or r.runtime == "ort")
        ]
        return min(candidates, key=lambda r: r.timing.p50_ms, default=None)

    def recommendations(self) -> dict[str, Any]:
        """Manifest form: batch -> fastest and portable choice with the numbers behind them."""
        out: dict[str, Any] = {}
        for batch in sorted({r.batch for r in self.rows}):
            best, portable = self.recommended(batch), self.recommended(batch, portable=True)
            if best is None:
                continue
            out[str(batch)] = {
                "artifact": best.artifact,
                "runtime": best.runtime,
                "p50_ms": round(best.timing.p50_ms, 4),
                "ratio_vs_eager": round(best.ratio_vs_eager, 3),
                "portable": {"artifact": portable.artifact, "p50_ms": round(portable.timing.p50_ms, 4)}
                if portable
                else None,
                "host": _host(),
            }
        return out

    def table(self) -> str:
        """Human table: one line per row, the recommendation marked."""
        head = f"{'batch':>5}  {'artifact':34} {'runtime':16} {'p50 ms':>9} {'p90':>8} {'p99':>8} {'±':>5}"
        head += f" {'items/s':>10} {'x eager':>8} {'RSS MB':>8} {'+MB':>6}  parity"
        lines = [head]
        for r in sorted(self.rows, key=lambda r: (r.batch, r.timing.p50_ms)):
            mark = "*" if self.recommended(r.batch) is r else " "
            parity = {None: "—", True: "ok", False: "FAIL"}[r.parity]
            lines.append(
                f"{r.batch:>5} {mark}{r.artifact[:34]:34} {r.runtime:16} {r.timing.p50_ms:9.3f} {r.timing.p90_ms:8.3f} "
                f"{r.timing.p99_ms:8.3f} {r.timing.spread:5.0%} {r.throughput:10.1f} {r.ratio_vs_eager:8.2f} "
                f"{r.rss_mb:8.0f} {r.added_mb:6.0f}  {parity}{' (' + r.note + ')' if r.note else ''}"
            )
        lines += [f"note: {n}" for n in self.notes]
        lines.append(
            "* recommended: fastest artifact that matched eager on these inputs (code-loading ones only if trusted)"
        )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "package": str(self.package),
            "model": self.model,
            "trusted": self.trusted,
            "host": _host(),
            "rows": [r.to_dict() for r in self.rows],
            "recommended": self.recommendations(),
            "notes": self.notes,
        }


def bench_package(
    path: Path,
    *,
    spec: ModelSpec | None = None,
    batches: Sequence[int] = (1, 16),
    runtimes: Sequence[str] = (),
    options: OrtOptions = OrtOptions(),  # noqa: B008 - frozen, shared safely
    trust: bool = False,
    progress: Callable[[str], None] = lambda message: None,
) -> BenchReport:
    """Time every artifact of the package at `path` on each runtime here, beside eager.

    Args:
        path: the package.
        spec: the model's spec, for eager and for inputs in the right value domains; without it the
            export sample is tiled to each batch size and eager is not measured.
        batches: batch sizes (the spec's ``batch`` dim, else its first symbolic dim).
        runtimes: restrict to these runtime names (``ort``, ``torchscript``, ``exported_program``).
        options: ONNX Runtime session options (provider, threads, ...).
        trust: load code-running artifacts even if this machine did not export the package.
        progress: receives one line per row.
    """
    package = open_package(Path(path))
    trusted = trust or trust_list.is_trusted(Path(path))
    report = BenchReport(Path(path), package.name, trusted)
    model = spec.build().eval() if spec is not None else None
    for batch in batches:
        feeds, note = _feeds(package, spec, batch)
        if feeds is None:
            report.notes.append(f"batch {batch}: {note}")
            continue
        expected, eager_ms = (None, 0.0)
        if model is not None:
            expected, eager_row = _bench_eager(model, spec, feeds, batch)
            eager_ms = eager_row.timing.p50_ms
            report.rows.append(eager_row)
        for entry in package.artifacts:
            row = _bench_artifact(package, entry, feeds, batch, expected, eager_ms, runtimes, options, trusted)
            if row is not None:
                progress(f"batch {batch}: {row.artifact} {row.timing}")
                report.rows.append(row)
    return report


def record_bench(report: BenchReport) -> Path:
    """Write `report` into its package: ``bench`` in report.json/.md, ``recommended`` in the manifest.

    The package is rewritten through a staging folder and swapped in whole (never half-written); a
    package this machine trusted stays trusted under its new manifest hash.
    """
    import json
    import shutil

    from toolchain.package import MANIFEST, PackageStaging
    from toolchain.report import render_markdown

    path = report.package
    package = open_package(path)
    was_trusted = trust_list.is_trusted(path)
    staging = PackageStaging(path, force=True)
    try:
        for entry in package.manifest["files"]:
            rel = str(entry["path"])
            if rel not in ("report.json", "report.md"):
                shutil.copyfile(package.file(rel), staging.file(rel))
        data = json.loads(package.file("report.json").read_text(encoding="utf-8"))
        data["bench"] = report.to_dict()
        staging.write_json("report.json", data)
        staging.write_text("report.md", render_markdown(data))
        manifest = {k: v for k, v in package.manifest.items() if k not in ("files", MANIFEST)}
        manifest["recommended"] = report.recommendations()
        staging.finalize(manifest)
        committed = staging.commit()
    finally:
        if not staging.committed:
            shutil.rmtree(staging.path, ignore_errors=True)
    if was_trusted:
        trust_list.remember(committed)
    return committed


def _feeds(package: Package, spec: ModelSpec | None, batch: int) -> tuple[dict[str, np.ndarray] | None, str]:
    if spec is not None:
        symbols = spec.symbols()
        if not symbols:
            return None, "the model has no symbolic dim to size"
        sym = "batch" if "batch" in symbols else symbols[0]
        dim = spec.dim(sym)
        if batch < dim.min or (dim.max and batch > dim.max):
            return None, f"{sym}={batch} is outside the declared range [{dim.min}, {dim.max or 'inf'}]"
        sizes = {s: spec.dim(s).example for s in symbols} | {sym: batch}
        rng = np.random.default_rng([0, batch])
        return {k: make_feed(inp, sizes, rng) for k, inp in spec.inputs.items()}, ""
    sample = package.samples[0]
    feeds = {k: load_array(package.file(str(rel))) for k, rel in sample["inputs"].items()}
    if "batch" not in package.manifest.get("dims", {}):
        return None, "no 'batch' dim in the package and no spec to draw inputs from"
    tiled = {}
    for sig in package.signature.inputs:
        value = feeds[sig.name]
        for axis, size in enumerate(sig.shape):
            if size == "batch":
                reps = -(-batch // value.shape[axis])
                value = np.take(np.concatenate([value] * reps, axis=axis), range(batch), axis=axis)
        tiled[sig.name] = value
    return tiled, ""


def _bench_eager(model: Any, spec: Any, feeds: Mapping[str, np.ndarray], batch: int) -> tuple[Any, BenchRow]:
    from runtimes.eager import EagerSession
    from toolchain.pipeline import input_signature

    before = _rss_mb()
    session = EagerSession(model, signature=input_signature(spec))
    expected = session.run(feeds)
    timing, settled = measure_stable(lambda: session.run(feeds))
    after = _rss_mb()
    row = BenchRow(EAGER, "fp32", EAGER, batch, timing, settled, after, max(after - before, 0.0), timing.p50_ms)
    return expected, row


def _bench_artifact(
    package: Package,
    entry: Mapping[str, Any],
    feeds: Mapping[str, np.ndarray],
    batch: int,
    expected: Mapping[str, np.ndarray] | None,
    eager_ms: float,
    runtimes: Sequence[str],
    options: OrtOptions,
    trusted: bool,
) -> BenchRow | None:
    fmt, rel = str(entry["format"]), str(entry["path"])
    runtime = OrtRuntime(options) if fmt == "onnx" else runtime_for(fmt)
    if runtime is None or (runtimes and runtime.name not in runtimes) or (runtime.runs_code and not trusted):
        return None
    before = _rss_mb()
    try:
        session = runtime.load(package.file(rel), signature=package.signature)
        actual = session.run(feeds)
    except ToolchainError as e:
        return BenchRow(
            rel,
            str(entry.get("variant", "fp32")),
            runtime.name,
            batch,
            Timing.of([0.0]),
            False,
            0,
            0,
            eager_ms,
            False,
            runtime.runs_code,
            note=f"could not run: {e}"[:200],
        )
    parity = None
    if expected is not None:
        tolerance = Tolerance.from_dict(entry["tolerance"]) if "tolerance" in entry else package.tolerance
        checks = tuple(TaskCheck.from_dict(c) for c in entry.get("checks", ()))
        parity = bool(compare(expected, actual, tolerance, checks=checks))
    timing, settled = measure_stable(lambda: session.run(feeds))
    after = _rss_mb()
    return BenchRow(
        rel, str(entry.get("variant", "fp32")), runtime.name, batch, timing, settled, after,
        max(after - before, 0.0), eager_ms, parity, runtime.runs_code,
        note="" if settled else "median did not settle",
    )  # fmt: skip


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _host() -> dict[str, Any]:
    return {"machine": platform.machine(), "processor": platform.processor() or "?", "cpus": os.cpu_count()}
