"""Benchmark every artifact of a package on every runtime here, beside eager PyTorch, and recommend one.

For each batch size: inputs are drawn from the spec (or tiled from the golden export sample), eager
runs first and is the reference; each artifact is loaded, its outputs on these inputs are checked
against eager with the artifact's own gate, then timed until its median settles. ONNX artifacts are
also timed in a session planned for this batch size (`OrtOptions.fixed_dims`), which folds shape
arithmetic away; with ``plan="shape"`` the session is planned for the whole benchmarked shape (every
symbolic dim at its benchmarked size, as a server that pads to fixed buckets would run it): faster
still on graphs whose other dims feed shape arithmetic, and it refuses every other size. The
candidates within `RUNOFF_MARGIN` of the fastest are then raced side by side (`timing.race`), so
the choice between near-equal ones is not left to the host's drift between rows; who is within the
margin is decided in a short heat of every candidate, also raced side by side.
The recommendation per batch is the fastest artifact that matched; artifacts whose loading runs code
(TorchScript, ``.pt2``) are candidates only on trusted hosts, and the fastest ONNX Runtime artifact is
always named as the portable choice.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from runtimes import runtime_for
from runtimes.ort import OrtOptions, OrtRuntime, expand_providers, short_name
from toolchain.core.checks import TaskCheck
from toolchain.core.errors import RuntimeLoadError, TargetError, ToolchainError
from toolchain.core.parity import Tolerance, compare
from toolchain.core.samples import make_feed
from toolchain.core.spec import ModelSpec
from toolchain.package import trust as trust_list
from toolchain.package.format import Package, load_array, open_package
from toolchain.perf.rows import EAGER, RUNOFF_MARGIN, BenchReport, BenchRow
from toolchain.perf.runoff import runoff
from toolchain.perf.timing import Timing, measure_stable

__all__ = ["PLANS", "RUNOFF_MARGIN", "BenchReport", "BenchRow", "bench_package", "record_bench"]

PLANS = ("batch", "shape")
"""What a planned ONNX Runtime session fixes: the batch size only, or every symbolic dim."""


def bench_package(
    path: Path,
    *,
    spec: ModelSpec | None = None,
    batches: Sequence[int] = (1, 16),
    runtimes: Sequence[str] = (),
    options: OrtOptions = OrtOptions(),  # noqa: B008 - frozen, shared safely
    providers: Sequence[str] = ("auto",),
    sizes: Mapping[str, int] | None = None,
    plan: str = "batch",
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
        options: ONNX Runtime session options (threads, ...); its providers are replaced by `providers`.
        providers: ONNX Runtime providers to time each ONNX file on (``cpu``, ``cuda``, ...); ``auto``:
            every accelerated one available here, then cpu, skipping (with a note) one that ONNX
            Runtime cannot start. A named provider that cannot start is a `RuntimeLoadError`.
        sizes: sizes of the other symbolic dims to benchmark at (default: the spec's examples);
            needs `spec`.
        plan: ``"batch"``: ONNX files are also timed in sessions planned for each batch size;
            ``"shape"``: planned for the whole benchmarked shape (see `PLANS`).
        trust: load code-running artifacts even if this machine did not export the package.
        progress: receives one line per row.
    """
    if plan not in PLANS:
        raise TargetError(f"plan must be one of {', '.join(PLANS)}, got {plan!r}")
    package = open_package(Path(path))
    trusted = trust or trust_list.is_trusted(Path(path))
    report = BenchReport(Path(path), package.name, trusted, plan=plan)
    model = spec.build().eval() if spec is not None else None
    dim = _batch_dim(package, spec)
    _check_sizes(spec, dim, sizes or {})
    named = set(expand_providers([p for p in providers if p.lower() != "auto"]))
    per_provider = [replace(options, providers=(p,)) for p in expand_providers(providers)]
    unstarted: dict[str, str] = {}
    for batch in batches:
        feeds, note = _feeds(package, spec, batch, sizes or {})
        if feeds is None:
            report.notes.append(f"batch {batch}: {note}")
            continue
        shape = report.sizes[batch] = _shape_of(package, feeds)
        fixed = ((dim, batch),) if plan == "batch" else ((dim, batch), *((k, v) for k, v in shape.items() if k != dim))
        expected, eager_ms = (None, 0.0)
        if model is not None:
            expected, eager_row = _bench_eager(model, spec, feeds, batch)
            eager_ms = eager_row.timing.p50_ms
            report.rows.append(eager_row)
        runs: dict[int, Callable[[], Any]] = {}
        for entry in package.artifacts:
            plans = [each for o in per_provider for each in ((o, replace(o, fixed_dims=fixed)) if dim else (o,))]
            for row, run in _bench_artifact(
                package, entry, feeds, batch, expected, eager_ms, runtimes, plans, trusted, unstarted
            ):
                progress(f"batch {batch}: {row.artifact} on {row.label} {row.timing}")
                if row.parity and (trusted or not row.runs_code):
                    runs[len(report.rows)] = run
                report.rows.append(row)
            if named & set(unstarted):
                raise RuntimeLoadError(next(unstarted[p] for p in unstarted if p in named))
        runoff(report.rows, runs)
    report.notes += [f"provider {p}: not started here: {why}" for p, why in unstarted.items()]
    return report


def record_bench(report: BenchReport) -> Path:
    """Write `report` into its package: ``bench`` in report.json/.md, ``recommended`` in the manifest.

    The package is rewritten through a staging folder and swapped in whole (never half-written); a
    package this machine trusted stays trusted under its new manifest hash.
    """
    import json
    import shutil

    from toolchain.package.format import MANIFEST
    from toolchain.package.report import render_markdown
    from toolchain.package.staging import PackageStaging

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
        staging.discard()
    if was_trusted:
        trust_list.remember(committed)
    return committed


def _check_sizes(spec: ModelSpec | None, batch_dim: str, sizes: Mapping[str, int]) -> None:
    """`TargetError` naming the first size that is not another symbolic dim of `spec` in its range."""
    if sizes and spec is None:
        raise TargetError(f"sizes {dict(sizes)} need the model's spec to draw inputs from; register the model")
    for name, size in sizes.items():
        if spec is None or name not in spec.symbols() or name == batch_dim:
            others = [s for s in (spec.symbols() if spec else ()) if s != batch_dim]
            raise TargetError(f"size {name!r}: not a symbolic dim other than the batch; the model has {others}")
        dim = spec.dim(name)
        if size < dim.min or (dim.max and size > dim.max):
            raise TargetError(f"size {name}={size} is outside the declared range [{dim.min}, {dim.max or 'inf'}]")


def _shape_of(package: Package, feeds: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Every symbolic dim of the package's inputs -> its size in `feeds`, in signature order."""
    return {
        dim: int(feeds[sig.name].shape[axis])
        for sig in package.signature.inputs
        if sig.name in feeds
        for axis, dim in enumerate(sig.shape)
        if isinstance(dim, str)
    }


def _feeds(
    package: Package, spec: ModelSpec | None, batch: int, sizes: Mapping[str, int]
) -> tuple[dict[str, np.ndarray] | None, str]:
    if spec is not None:
        sym = _batch_dim(package, spec)
        if not sym:
            return None, "the model has no symbolic dim to size"
        dim = spec.dim(sym)
        if batch < dim.min or (dim.max and batch > dim.max):
            return None, f"{sym}={batch} is outside the declared range [{dim.min}, {dim.max or 'inf'}]"
        symbols = spec.symbols()
        every = {s: spec.dim(s).example for s in symbols} | dict(sizes) | {sym: batch}
        rng = np.random.default_rng([0, batch])
        return {k: make_feed(inp, every, rng) for k, inp in spec.inputs.items()}, ""
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
    from toolchain.core.interface import input_signature

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
    plans: Sequence[OrtOptions],
    trusted: bool,
    unstarted: dict[str, str],
) -> Iterator[tuple[BenchRow, Callable[[], Any]]]:
    """One row per session plan for ONNX files (per provider: plain, then sized), one for other formats.

    A provider ONNX Runtime cannot start is put in `unstarted` (with the reason) and skipped after.
    """
    fmt, rel = str(entry["format"]), str(entry["path"])
    variant = str(entry.get("variant", "fp32"))
    for options in plans if fmt == "onnx" else plans[:1]:
        runtime = OrtRuntime(options) if fmt == "onnx" else runtime_for(fmt)
        if runtime is None or (runtimes and runtime.name not in runtimes) or (runtime.runs_code and not trusted):
            return
        fixed = options.fixed_dims if fmt == "onnx" else ()
        provider = short_name(options.providers[0]) if fmt == "onnx" else ""
        if provider in unstarted:
            continue
        before = _rss_mb()
        try:
            session = runtime.load(package.file(rel), signature=package.signature)
            if fixed and not _has_dims(session, fixed):
                continue  # NOTE: ONNX Runtime ignores overrides of dims the file names otherwise.
            actual = session.run(feeds)
        except RuntimeLoadError as e:
            if "could not start" not in str(e):
                yield _failed_row(rel, variant, runtime, batch, eager_ms, fixed, provider, e), lambda: None
                continue
            unstarted[provider] = str(e)
        except ToolchainError as e:
            yield _failed_row(rel, variant, runtime, batch, eager_ms, fixed, provider, e), lambda: None
            continue
        else:
            parity = None
            if expected is not None:
                tolerance = Tolerance.from_dict(entry["tolerance"]) if "tolerance" in entry else package.tolerance
                checks = tuple(TaskCheck.from_dict(c) for c in entry.get("checks", ()))
                parity = bool(compare(expected, actual, tolerance, checks=checks, feeds=feeds))

            def run(session: Any = session) -> Any:
                return session.run(feeds)

            timing, settled = measure_stable(run)
            after = _rss_mb()
            row = BenchRow(
                rel, variant, runtime.name, batch, timing, settled, after, max(after - before, 0.0), eager_ms,
                parity, runtime.runs_code, note="" if settled else "median did not settle", fixed_dims=fixed,
                provider=provider,
            )  # fmt: skip
            yield row, run


def _failed_row(
    rel: str, variant: str, runtime: Any, batch: int, eager_ms: float, fixed: Any, provider: str, error: Exception
) -> BenchRow:
    """A row for an artifact that could not be loaded or run: never a candidate, the reason in its note."""
    return BenchRow(rel, variant, runtime.name, batch, Timing.of([0.0]), False, 0, 0, eager_ms, False,
                    runtime.runs_code, note=f"could not run: {error}"[:200], fixed_dims=fixed,
                    provider=provider)  # fmt: skip


def _has_dims(session: Any, fixed: tuple[tuple[str, int], ...]) -> bool:
    """True when ONNX Runtime planned the session for `fixed`: it then reports those dims as sizes."""
    sizes = dict(fixed)
    native = {sig.name: sig.shape for sig in session.native_signature().inputs}
    planned = {
        dim
        for sig in session.signature.inputs
        for dim, size in zip(sig.shape, native.get(sig.name, ()), strict=False)
        if isinstance(dim, str) and sizes.get(dim) == size
    }
    return planned == set(sizes)


def _batch_dim(package: Package, spec: ModelSpec | None) -> str:
    """The symbolic dim benchmarked as the batch (``batch``, else the spec's first), "" if none."""
    if spec is not None:
        symbols = spec.symbols()
        return ("batch" if "batch" in symbols else symbols[0]) if symbols else ""
    names = {d for sig in package.signature.inputs for d in sig.shape if isinstance(d, str)}
    return "batch" if "batch" in names else ""


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
