"""Export -> verify -> package for one spec: every export path tried, only those matching eager kept."""

from __future__ import annotations

import copy
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from exporters import EXPORTERS
from toolchain.build.capture import SharedCapture, violated_assert
from toolchain.build.lanes import Lane, can_fork, default_workers, lane_paths
from toolchain.build.passes import GraphPass
from toolchain.build.paths import (
    KEPT,
    PathResult,
    Replayer,
    export_path,
    likely_cause,
    optimize_path,
    try_path,
    verify_path,
)
from toolchain.build.reference import Reference, eager_reference
from toolchain.build.seal import seal
from toolchain.build.variants import build_variants, measure_drift, variants_for
from toolchain.core.artifact import Finding
from toolchain.core.errors import TargetError, ToolchainError
from toolchain.core.heap import frozen_heap
from toolchain.core.interface import package_signature
from toolchain.core.samples import SampleSet, generate_samples
from toolchain.core.signature import Signature
from toolchain.core.spec import FORMATS, ModelSpec
from toolchain.package.staging import check_destination, stage_package

__all__ = [
    "ALL_FORMATS",
    "AUTO_FORMATS",
    "ExportResult",
    "PathResult",
    "StageResult",
    "export_package",
    "likely_cause",
]

PASSED, FAILED, NOT_RUN = "passed", "failed", "not run"
STAGES = ("build", "reference", "export", "optimize", "precision", "package")
ALL_FORMATS = FORMATS
AUTO_FORMATS = ("onnx", "onnx_legacy")


@dataclass
class StageResult:
    """One stage's status (passed / failed / not run), time and what went wrong."""

    name: str
    status: str = NOT_RUN
    seconds: float = 0.0
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        # NOTE: no seconds: a package's report is the same on every run (timings go to progress and bench).
        return {"name": self.name, "status": self.status, "detail": self.detail}


@dataclass
class ExportResult:
    """What `export_package` did; truthy only when every stage passed and the package landed."""

    spec: ModelSpec
    stages: list[StageResult] = field(default_factory=lambda: [StageResult(s) for s in STAGES])
    paths: list[PathResult] = field(default_factory=list)
    variants: list[PathResult] = field(default_factory=list)
    """Precision variants (fp16, int8) of the first kept ONNX path, kept or rejected."""
    samples: list[SampleSet] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    signature: Signature | None = None
    package: Path | None = None

    def __bool__(self) -> bool:
        return all(s.status == PASSED for s in self.stages)

    def stage(self, name: str) -> StageResult:
        """The result of stage `name`."""
        return next(s for s in self.stages if s.name == name)

    def path(self, exporter: str) -> PathResult:
        """The result of export path `exporter`."""
        return next(p for p in self.paths if p.exporter == exporter)

    @property
    def kept(self) -> list[PathResult]:
        """Paths whose artifact matched eager on every sample set."""
        return [p for p in self.paths if p.status == KEPT]

    @property
    def shipped(self) -> list[PathResult]:
        """Every artifact in the package: kept paths, then kept precision variants."""
        return self.kept + [v for v in self.variants if v.status == KEPT]

    def variant(self, name: str) -> PathResult:
        """The precision variant `name` (``"fp16"``, ``"int8-dynamic"``, ``"int8-static"``)."""
        return next(v for v in self.variants if v.variant == name)

    @property
    def failed_stage(self) -> StageResult | None:
        """The first stage that failed, if any."""
        return next((s for s in self.stages if s.status == FAILED), None)

    @contextmanager
    def running(self, name: str, progress: Callable[[str], None]) -> Iterator[StageResult]:
        """Time stage `name`; a `ToolchainError` inside marks it failed and is re-raised."""
        stage = self.stage(name)
        progress(f"{self.spec.name}: {name}")
        start = time.perf_counter()
        try:
            yield stage
        except ToolchainError as e:
            stage.status, stage.detail = FAILED, str(e)
            raise
        finally:
            stage.seconds = time.perf_counter() - start
        if stage.status == NOT_RUN:
            stage.status = PASSED


@dataclass(frozen=True)
class _Plan:
    candidates: tuple[str, ...]
    first_only: bool
    optimize: bool
    variants: tuple[str, ...]
    passes: tuple[GraphPass, ...]
    force: bool
    seed: int
    workers: int


def export_package(
    spec: ModelSpec,
    out: Path,
    *,
    formats: Sequence[str] = (),
    optimize: bool = True,
    precisions: Sequence[str] = ("fp32",),
    passes: Sequence[GraphPass] = (),
    force: bool = False,
    seed: int = 0,
    workers: int = 0,
    progress: Callable[[str], None] = lambda message: None,
) -> ExportResult:
    """Export `spec` through each path in `formats`, keep those matching eager everywhere, package them.

    Args:
        spec: the model.
        out: the package folder to write.
        formats: export paths; default: those the spec says apply (`ModelSpec.formats`).
            ``("auto",)`` keeps only the best ONNX path: torch.export-based, else legacy.
        optimize: run the optimisation passes over every kept artifact, each under the parity gate.
        precisions: ``"fp32"``, ``"fp16"``, ``"int8"``: the variants built from the first kept ONNX
            path, each under its own gate (fp32 is always built).
        passes: replace the default pass list (`toolchain.build.passes.PASSES`).
        force: replace an existing package at `out`.
        seed: seed of the generated sample values.
        workers: processes the export may use (0: `toolchain.build.lanes.default_workers`, 2 on a host
            with two cores); with 2, the paths that capture on their own run in a forked worker beside
            the others, with the same results.
        progress: receives one line per step.

    Nothing is written at `out` unless at least one path was kept. Raises `PackageError` at once
    when `out` holds a package and `force` is false, and `TargetError` for an unknown format or
    precision.
    """
    out = Path(out)
    candidates, first_only = _candidates(formats or spec.formats)
    plan = _Plan(
        candidates,
        first_only,
        optimize,
        variants_for(precisions),
        tuple(passes),
        force,
        seed,
        workers or default_workers(),
    )
    check_destination(out, force=force)
    result = ExportResult(spec)
    try:
        with frozen_heap():
            _run_stages(result, out, plan, progress=progress)
    except ToolchainError:
        if result.failed_stage is None:
            raise
    return result


def _candidates(formats: Sequence[str]) -> tuple[tuple[str, ...], bool]:
    if list(formats) == ["auto"]:
        return AUTO_FORMATS, True
    for name in formats:
        EXPORTERS.get(name)  # unknown names fail here, listing the known ones
    if not formats:
        raise TargetError(f"no export format given; choose from {', '.join(ALL_FORMATS)} or 'auto'")
    return tuple(dict.fromkeys(formats)), False


def _run_stages(result: ExportResult, out: Path, plan: _Plan, *, progress: Callable[[str], None]) -> None:
    spec = result.spec
    with result.running("build", progress):
        model = spec.build()
        result.findings.extend(_training_findings(model))
        model.eval()
    with stage_package(out, force=plan.force) as staging, ExitStack() as scratch:
        workdirs: dict[str, Path] = {}
        for name in plan.candidates:
            workdirs[name] = Path(
                scratch.enter_context(
                    tempfile.TemporaryDirectory(prefix=f".{staging.dest.name}.{name}-", dir=staging.scratch())
                )
            )
        fork = can_fork(plan.workers)
        units = lane_paths(plan.candidates, plan.first_only) if fork else ()
        if units and sum(map(len, units)) == len(plan.candidates):
            units = units[1:]  # NOTE: this process exports a unit while the child computes the reference
        forked = {name for unit in units for name in unit}
        replayers: list[Replayer] = []

        def replayer_for(reference: Reference) -> Replayer:
            if not replayers:
                signature = package_signature(spec, result.samples, reference.expected)
                replayers.append(Replayer(spec, result.samples, reference.expected, signature, causes=reference.causes))
            return replayers[0]

        def take(
            name: str, reference: Reference, tell: Callable[[str], None], early: PathResult | None = None
        ) -> PathResult:
            """Export (unless `early` did), verify and, in the lane, optimise path `name`."""
            replayer = replayer_for(reference)
            if early is None:
                tell(f"{spec.name}: export {name}")
                if any(workdirs[name].iterdir()):  # NOTE: a lane's child died here half-way; start clean
                    shutil.rmtree(workdirs[name])
                    workdirs[name].mkdir()
            # NOTE: a copy never run, so a forward that changes its module cannot leak into the next path.
            # NOTE: the child was forked before the capture: a path it takes captures on its own (see below).
            shared = None if lane.in_child else capture
            path = _try(name, copy.deepcopy(model), replayer, workdirs[name], shared, early=early)
            # NOTE: with a lane every path is optimised as soon as it is kept: this process's ONNX passes
            # then run while the child still works on its paths, not after waiting for them.
            if fork and path.status == KEPT and plan.optimize:
                tell(f"{spec.name}: optimize {name}")
                optimize_path(path, replayer, workdirs[name], model=model, passes=plan.passes, progress=tell)
            return path

        here = [n for n in plan.candidates if n not in forked]
        early: PathResult | None = None
        with result.running("reference", progress):
            result.samples = generate_samples(spec, seed=plan.seed)
            # NOTE: one torch.export capture for the ONNX and .pt2 paths, with or without a lane (see below).
            capture = SharedCapture(model, spec, result.samples[0], plan.candidates)
            # NOTE: the child is forked before the capture, so it starts on its paths a capture earlier (0.7-5 s
            # of each zoo export). A .pt2 path fed from the capture stays here, where the program is; the child
            # may take it only where it would capture on its own anyway (no program, or one whose deferred
            # asserts a declared size breaks).
            held = ("exported_program",) if capture.shared and "exported_program" in forked else ()
            reference_of = partial(eager_reference, model, spec, result.samples)
            lane = Lane(reference_of, units, take, progress, fork=fork, held=held)
            scratch.callback(lane.close)  # NOTE: before the workdirs go, on any way out of the stage
            if fork:
                progress(f"{spec.name}: export {here[0]}")
                lane.start()
                program = capture.program_for(here[0])
                if held and (program is None or violated_assert(program, spec, result.samples)):
                    lane.release("exported_program")
                # NOTE: the first path's export needs only the export sample: it runs while the child computes eager's.
                early = export_path(
                    here[0], copy.deepcopy(model), spec, result.samples[0], workdirs[here[0]], program=program
                )
                # NOTE: the capture's findings and time, charged to this first path only (the child never captures
                # for it, so nothing is charged twice).
                early = capture.credit(early)
            else:
                lane.start()
            reference = lane.reference()
            result.findings.extend(reference.findings)
            replayer = replayer_for(reference)
            result.signature = replayer.signature
        with result.running("export", progress) as stage:
            done: dict[str, PathResult] = {}
            for name in here:
                done[name] = take(name, reference, progress, early if name == here[0] else None)
                if plan.first_only and done[name].status == KEPT:
                    break
            lane.help()
            done.update(lane.results())
            result.paths.extend(done[name] for name in plan.candidates if name in done)
            if not result.kept:
                stage.status = FAILED
                stage.detail = "every path was rejected: " + "; ".join(
                    f"{p.exporter}: {p.reason}" for p in result.paths
                )
                return
        _refine(result, model, replayer, workdirs, plan, progress, optimized=set(plan.candidates) if fork else set())
        with result.running("package", progress):
            for path in result.shipped:
                assert path.artifact is not None
                for rel in path.artifact.files:
                    shutil.move(workdirs[path.exporter] / rel, staging.file(rel))
            seal(result, staging, out, reference.expected)


def _try(
    name: str,
    model: Any,
    replayer: Replayer,
    workdir: Path,
    capture: SharedCapture | None,
    *,
    early: PathResult | None = None,
) -> PathResult:
    """`try_path` (or `verify_path` of an `early` export), from the shared capture where it serves `name`.

    A rejected ``.pt2`` from the shared capture is captured again. Without `capture`, every path captures
    on its own.
    """
    if early is not None:
        return verify_path(early, model, replayer, workdir)
    if capture is None:
        return try_path(name, model, replayer, workdir)
    program = capture.program_for(name)
    if program is None:
        return try_path(name, model, replayer, workdir)
    if name == "exported_program" and violated_assert(program, replayer.spec, replayer.samples):
        return try_path(name, model, replayer, workdir)
    path = capture.credit(try_path(name, model, replayer, workdir, program=program))
    if path.status == KEPT or name != "exported_program":
        return path
    # NOTE: the shared capture is the ONNX exporter's (size-oblivious, deferred asserts); plain
    # torch.export.export may still give a program that passes, as it did before captures were shared.
    shutil.rmtree(workdir / "exported_program", ignore_errors=True)
    return try_path(name, model, replayer, workdir)


def _refine(
    result: ExportResult,
    model: Any,
    replayer: Replayer,
    workdirs: dict[str, Path],
    plan: _Plan,
    progress: Callable[[str], None],
    *,
    optimized: set[str],
) -> None:
    """Optimise every kept path (but those `optimized` in a lane), build the precision variants, measure drift."""
    with result.running("optimize", progress) as stage:
        if not plan.optimize:
            stage.detail = "skipped (--no-optimize)"
        for path in [p for p in result.kept if p.exporter not in optimized] if plan.optimize else []:
            progress(f"{result.spec.name}: optimize {path.exporter}")
            optimize_path(path, replayer, workdirs[path.exporter], model=model, passes=plan.passes, progress=progress)
    with result.running("precision", progress) as stage:
        base = next((p for p in result.kept if p.artifact is not None and p.artifact.format == "onnx"), None)
        if plan.variants and base is None:
            stage.detail = "no kept ONNX path to build precision variants from"
        if plan.variants and base is not None:
            result.variants = build_variants(
                base, replayer, workdirs[base.exporter], plan.variants, model=model, progress=progress
            )
            stage.detail = ", ".join(f"{v.variant} {v.status}" for v in result.variants)
        for path in result.kept:
            variants = result.variants if path is base else []
            measure_drift(path, variants, replayer, workdirs[path.exporter])


def _training_findings(model: Any) -> list[Finding]:
    names = [name or "<root>" for name, m in model.named_modules() if m.training]
    if not names:
        return []
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return [Finding("training-mode", f"{len(names)} module(s) were in training mode ({shown}); exported in eval mode")]
