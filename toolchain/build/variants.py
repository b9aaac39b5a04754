"""Precision variants of a kept ONNX path, and that path's stage drift measured side by side.

Each variant (fp16, dynamic int8, static int8) is its own artifact under its own gate; the drift
table runs exported -> optimised -> fp16 -> int8, each compared with eager.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from toolchain.build.paths import KEPT, REJECTED, PathResult, Replayer, explain, exported_copy
from toolchain.build.precision import VARIANTS, make_variant
from toolchain.core.errors import TargetError
from toolchain.core.spec import PRECISIONS

__all__ = ["PRECISION_VARIANTS", "build_variants", "measure_drift", "variants_for"]

PRECISION_VARIANTS = {"fp32": (), "fp16": ("fp16",), "int8": ("int8-dynamic", "int8-static")}
"""What each ``--precision`` value builds."""


def variants_for(precisions: Sequence[str]) -> tuple[str, ...]:
    """The variants to build for the requested precisions; raises `TargetError` for an unknown one."""
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        raise TargetError(f"unknown precision(s) {unknown}; choose from {', '.join(PRECISIONS)}")
    return tuple(dict.fromkeys(v for p in precisions for v in PRECISION_VARIANTS[p]))


def build_variants(
    base: PathResult,
    replayer: Replayer,
    workdir: Path,
    variants: Sequence[str],
    *,
    model: Any = None,
    progress: Callable[[str], None] = lambda message: None,
) -> list[PathResult]:
    """Build each variant from `base`'s (optimised) ONNX file in `workdir`.

    With `model`, a variant that still fails after repair is localised: the stage that first drifts
    (the fp32 stages passed, or `base` would not be here) and the first module whose output diverges.
    """
    assert base.artifact is not None and base.artifact.format == "onnx"
    src = workdir / base.artifact.path
    samples = {s.name: s.feeds for s in replayer.samples}
    results = []
    for name in variants:
        variant = VARIANTS[name]
        rel = base.artifact.path.removesuffix(".onnx") + f".{name}.onnx"
        progress(f"{replayer.spec.name}: {base.exporter} {name}")
        outcome = make_variant(
            variant,
            src,
            workdir / rel,
            check=replayer.checker("onnx", precision=variant.precision),
            samples=samples,
            limit=replayer.spec.tolerance_for(variant.precision).rtol,
            artifact=rel,
        )
        result = PathResult(base.exporter, variant=name, repair=outcome, reports=outcome.reports)
        result.export_seconds = outcome.seconds
        result.artifact = replace(
            base.artifact,
            path=rel,
            files=(rel,),
            variant=name,
            passes=(),
            findings=(),
            keep=tuple(outcome.keep),
            tolerance=replayer.spec.tolerance_for(variant.precision),
            checks=replayer.spec.checks,
        )
        if outcome.passed:
            result.status = KEPT
        else:
            result.status, result.reason = REJECTED, outcome.reason
            tolerance = replayer.spec.tolerance_for(variant.precision)
            found = explain(model, replayer, workdir / rel, outcome.reports, tolerance=tolerance, reference=src)
            if found is not None:
                result.localization = found
                stages = "exported and optimised graphs match eager" if base.passes else "exported graph matches eager"
                result.reason += f"; {stages}, the {name} variant drifts first: {found}"
        results.append(result)
    return results


def measure_drift(path: PathResult, variants: Sequence[PathResult], replayer: Replayer, workdir: Path) -> None:
    """Fill ``path.drift``: exported, optimised and every variant file, raced on this host.

    Removes the unoptimised copy and the files of rejected variants afterwards.
    """
    assert path.artifact is not None
    main = workdir / path.artifact.path
    stages = []
    exported = exported_copy(main)
    if exported.exists() and path.passes:
        stages.append(("exported", exported, path.reports))
        stages.append(("optimised", main, path.final_reports))
    else:
        stages.append(("exported", main, path.reports))
    for v in variants:
        file = workdir / v.artifact.path if v.artifact else None
        if file is not None and file.exists():
            stages.append((v.variant, file, v.reports))
    path.drift = replayer.drift(stages, path.artifact.format)
    # NOTE: a variant's own gate is looser (fp16: atol 1e-2 vs 1e-5); judged by it alone its drift
    # reads as none, so it is replayed once more at the spec's tolerance for the drift table.
    fp32 = replayer.checker(path.artifact.format)
    for drift, (_, file, _) in zip(path.drift, stages, strict=True):
        if drift.stage not in ("exported", "optimised"):
            drift.spec_reports = fp32(file)
    exported.unlink(missing_ok=True)
    for v in variants:
        if v.status != KEPT and v.artifact is not None:
            (workdir / v.artifact.path).unlink(missing_ok=True)
