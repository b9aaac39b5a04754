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
import platform
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from runtimes import runtime_for
from runtimes.ort import OrtOptions, OrtRuntime, expand_providers, short_name
from toolchain import trust as trust_list
from toolchain.checks import TaskCheck
from toolchain.errors import RuntimeLoadError, TargetError, ToolchainError
from toolchain.package import Package, load_array, open_package
from toolchain.parity import Tolerance, compare
from toolchain.report import runtime_label
from toolchain.samples import make_feed
from toolchain.spec import ModelSpec
from toolchain.timing import Timing, measure_stable, paired_interval, paired_ratio, race

__all__ = ["PLANS", "RUNOFF_MARGIN", "BenchReport", "BenchRow", "bench_package", "record_bench"]

EAGER = "eager"
RUNOFF_MARGIN = 0.5
"""Candidates this much slower than the fastest in a short heat are raced on side by side."""
HEAT_SECONDS = 0.3
"""Each candidate's time in the heat (3 rounds) that picks who enters the run-off."""
RUNOFF_EXTRA_SECONDS = 3.0
"""After 10 rounds the run-off races on, this long at most, the candidates it cannot yet tell from the
leader: on a CTC model at batch 1 the legacy ONNX file ran 5-8% slower than the torch.export one in
30-round races, and 10 rounds picked it about half the time."""
RUNOFF_TIE = 0.02
"""Candidates surely within this of the leader are a tie the run-off need not settle."""
TIE_MARGIN = 0.03
"""A less exact variant (fp16, int8) is recommended only when faster than the more exact one by this."""
_EXACTNESS = {"fp32": 0, "fp16": 1, "int8": 2}
PLANS = ("batch", "shape")
"""What a planned ONNX Runtime session fixes: the batch size only, or every symbolic dim."""


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
    fixed_dims: tuple[tuple[str, int], ...] = ()
    """ONNX Runtime session planned for these sizes (feeds of other sizes are refused)."""
    runoff: Timing | None = None
    """This row raced side by side against the other candidates near the fastest."""
    runoff_ratio: float | None = None
    """Its latency in the run-off over the fastest raced one's, paired round by round (`paired_ratio`)."""
    provider: str = ""
    """ONNX Runtime execution provider (short name), "" for other runtimes."""

    @property
    def label(self) -> str:
        """Runtime and provider, with the sizes its session was planned for: ``ort-cuda[batch=16]``."""
        return runtime_label(self.runtime, dict(self.fixed_dims), self.provider)

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
            "provider": self.provider,
            "fixed_dims": dict(self.fixed_dims),
            "batch": self.batch,
            **self.timing.to_dict(),
            "runoff_p50_ms": round(self.runoff.p50_ms, 4) if self.runoff else None,
            "runoff_ratio": round(self.runoff_ratio, 4) if self.runoff_ratio is not None else None,
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
    plan: str = "batch"
    sizes: dict[int, dict[str, int]] = field(default_factory=dict)
    """Per batch size: the size of every symbolic dim in the benchmarked inputs."""

    def recommended(self, batch: int, *, portable: bool = False) -> BenchRow | None:
        """Fastest artifact that matched eager at `batch` (ONNX Runtime only when `portable`).

        Rows raced in the run-off are ranked by their paired ratio to the fastest raced one; the
        others were slower than the fastest by more than `RUNOFF_MARGIN` in a heat raced side by side.
        Within `TIE_MARGIN` of the fastest the most exact variant wins (fp32, then fp16, then int8):
        on a CPU fp16 is rarely faster, and trading precision for a gain inside the host's noise is
        not a trade. Among raced rows "within" means not surely slower (`_most_exact_of_raced`).
        """
        candidates = [
            r
            for r in self.rows
            if r.batch == batch
            and r.runtime != EAGER
            and r.parity
            and (self.trusted or not r.runs_code)
            and (not portable or r.runtime == "ort")
        ]
        raced = [r for r in candidates if r.runoff_ratio is not None]
        if raced:
            return _most_exact_of_raced(raced)
        return _most_exact_of_fastest(candidates, lambda r: r.timing.p50_ms) if candidates else None

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
                "provider": best.provider,
                "fixed_dims": dict(best.fixed_dims),
                "p50_ms": round(best.timing.p50_ms, 4),
                "ratio_vs_eager": round(best.ratio_vs_eager, 3),
                "sizes": self.sizes.get(batch, {}),
                "portable": {
                    "artifact": portable.artifact,
                    "provider": portable.provider,
                    "fixed_dims": dict(portable.fixed_dims),
                    "p50_ms": round(portable.timing.p50_ms, 4),
                }
                if portable
                else None,
                "host": _host(),
            }
        return out

    def table(self) -> str:
        """Human table: one line per row, the recommendation marked."""
        head = f"{'batch':>5}  {'artifact':34} {'runtime':16} {'p50 ms':>9} {'p90':>8} {'p99':>8} {'±':>5}"
        head += f" {'raced':>8} {'/best':>5} {'items/s':>10} {'x eager':>8} {'RSS MB':>8} {'+MB':>6}  parity"
        lines = [head]
        for r in sorted(self.rows, key=lambda r: (r.batch, r.timing.p50_ms)):
            mark = "*" if self.recommended(r.batch) is r else " "
            parity = {None: "—", True: "ok", False: "FAIL"}[r.parity]
            raced = f"{r.runoff.p50_ms:8.3f}" if r.runoff else f"{'—':>8}"
            raced += f" {r.runoff_ratio:5.2f}" if r.runoff_ratio is not None else f" {'—':>5}"
            t = r.timing
            lines.append(
                f"{r.batch:>5} {mark}{r.artifact[:34]:34} {r.label[:16]:16} {t.p50_ms:9.3f} {t.p90_ms:8.3f} "
                f"{t.p99_ms:8.3f} {t.spread:5.0%} {raced} {r.throughput:10.1f} {r.ratio_vs_eager:8.2f} "
                f"{r.rss_mb:8.0f} {r.added_mb:6.0f}  {parity}{' (' + r.note + ')' if r.note else ''}"
            )
        lines += [f"note: {n}" for n in self.notes]
        if self.plan == "shape":
            lines.append("note: ort[...] sessions are planned for the benchmarked shape and refuse every other size")
        lines.append(
            "* recommended: fastest artifact that matched eager on these inputs (code-loading ones only if trusted);"
            f" raced: p50 when the candidates within {RUNOFF_MARGIN:.0%} of the fastest (in a short heat)"
            " ran side by side,"
            " /best: over the fastest of them, paired round by round (the ranking)"
        )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "package": str(self.package),
            "model": self.model,
            "trusted": self.trusted,
            "plan": self.plan,
            "sizes": {str(b): s for b, s in self.sizes.items()},
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
        _runoff(report.rows, runs)
    report.notes += [f"provider {p}: not started here: {why}" for p, why in unstarted.items()]
    return report


def _most_exact_of_fastest(rows: Sequence[BenchRow], latency: Callable[[BenchRow], float]) -> BenchRow:
    """The fastest row, unless a more exact variant is within `TIE_MARGIN` of it."""
    fastest = latency(min(rows, key=latency))
    near = [r for r in rows if latency(r) <= fastest * (1 + TIE_MARGIN)]
    return min(near, key=lambda r: (_exactness(r), latency(r)))


def _most_exact_of_raced(rows: Sequence[BenchRow]) -> BenchRow:
    """The fastest raced row, unless a more exact one is not surely slower by more than `TIE_MARGIN`.

    Surely: the whole 95% bootstrap interval of their paired ratio (over the run-off rounds) lies
    beyond the margin. On a 30 us model the rounds differ by 5-15%, so a 3% lead of an int8 variant
    in the run-off's median is noise; precision is traded only for a gain the rounds agree on.
    """
    fastest = min(rows, key=lambda r: r.runoff_ratio or 0.0)

    def surely_slower(row: BenchRow) -> bool:
        if row.runoff is None or fastest.runoff is None:
            return (row.runoff_ratio or 0.0) > 1 + TIE_MARGIN
        return paired_interval(row.runoff, fastest.runoff)[0] > 1 + TIE_MARGIN

    near = [r for r in rows if r is fastest or not surely_slower(r)]
    return min(near, key=lambda r: (_exactness(r), r.runoff_ratio or 0.0))


def _exactness(row: BenchRow) -> int:
    return _EXACTNESS.get(row.variant.split("-")[0], 3)


def _runoff(rows: list[BenchRow], runs: Mapping[int, Callable[[], Any]]) -> None:
    """Race the candidates within `RUNOFF_MARGIN` of the fastest side by side; store their timings.

    Who is within the margin is decided in a short heat of every candidate, raced side by side, not
    by the rows' own timings: those were taken one after another, and under the host's drift an int8
    file timed alone in a fast window came within the margin while the others did not, and was
    recommended although 18-46% slower than the fp32 ones raced side by side (GBDT model, batch 1).
    """
    if len(runs) < 2:
        return
    every = list(runs)
    heat = race([runs[i] for i in every], warmup=1, min_seconds=HEAT_SECONDS, min_rounds=3)
    lead = _leader(heat)
    close = [i for i, t in zip(every, heat, strict=True) if paired_ratio(t, lead) <= 1 + RUNOFF_MARGIN]
    if len(close) < 2:  # the heat's leader stands alone: it is the one raced row, so it is recommended
        rows[close[0]] = replace(rows[close[0]], runoff=lead, runoff_ratio=1.0)
        return
    exactness = [_exactness(rows[i]) for i in close]
    timings = race(
        [runs[i] for i in close],
        min_seconds=1.0,
        min_rounds=10,
        keep=lambda timings: _undecided(timings, exactness),
        extra_seconds=RUNOFF_EXTRA_SECONDS,
    )
    fastest = _leader(timings)
    for i, timing in zip(close, timings, strict=True):
        rows[i] = replace(rows[i], runoff=timing, runoff_ratio=paired_ratio(timing, fastest))


def _leader(timings: Sequence[Timing]) -> Timing:
    """The fastest raced timing, by paired ratio to the first (every candidate ran the first rounds)."""
    return min(timings, key=lambda t: paired_ratio(t, timings[0]))


def _undecided(timings: list[Timing], exactness: Sequence[int] = ()) -> list[bool]:
    """Race on the leader and whoever is undecided against it (95% interval of the paired ratio).

    Undecided: may still beat the leader or lose to it by more than `RUNOFF_TIE`; or, for a more
    exact variant than the leader (`exactness`, lower is more exact), may lose by more or by less
    than `TIE_MARGIN`, which decides whether its precision wins (`_most_exact_of_raced`). Without
    that second rule an fp32 file 9% slower than the int8 leader left the race after 10 rounds with
    the interval [1.029, 1.184] and was recommended over it.
    """
    leader = _leader(timings)
    rank = list(exactness) or [0] * len(timings)
    top = rank[next(i for i, t in enumerate(timings) if t is leader)]
    keep = []
    for t, exact in zip(timings, rank, strict=True):
        low, high = paired_interval(t, leader)
        may_win = low <= 1.0 and high >= 1 + RUNOFF_TIE
        may_tie = exact < top and low <= 1 + TIE_MARGIN < high
        keep.append(t is leader or may_win or may_tie)
    if sum(keep) < 2:
        return [False] * len(timings)
    return keep


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
                parity = bool(compare(expected, actual, tolerance, checks=checks))

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


def _host() -> dict[str, Any]:
    return {"machine": platform.machine(), "processor": platform.processor() or "?", "cpus": os.cpu_count()}
