"""Per zoo model: optimised vs unoptimised ONNX Runtime latency, int8/fp16 vs fp32 latency, and size ratios.

Exports each model once through the torch.export-based ONNX path with every precision, then races
the package's stage files (exported, optimised, fp16, int8) side by side on this host (2 threads).
Run: ``python bench/optimize.py [name ...]``.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

import torch

import zoo  # noqa: F401
from toolchain.build.paths import StageDrift
from toolchain.build.pipeline import export_package
from toolchain.core.spec import SPECS


def _speed(drift: dict[str, StageDrift], stage: str, base: StageDrift) -> float:
    d = drift.get(stage)
    if d is None or d.latency is None or base.latency is None:
        return float("nan")
    return base.latency.p50_ms / d.latency.p50_ms


def main(names: list[str]) -> None:
    """Export, then print one row of ratios per model and the medians."""
    torch.set_num_threads(2)
    rows = []
    head = f"{'opt/unopt':>9} {'fp16/fp32':>9} {'int8d/fp32':>10} {'int8s/fp32':>10} {'size int8':>9}"
    print(f"{'model':28} {head}  variants")
    for name in names or SPECS.names():
        spec = SPECS.get(name)
        with tempfile.TemporaryDirectory() as tmp:
            result = export_package(spec, Path(tmp) / "pkg", formats=["onnx"], precisions=("fp32", "fp16", "int8"))
        if not result or not result.kept:
            print(f"{name:28} export failed: {result.failed_stage}")
            continue
        drift = {d.stage: d for d in result.kept[0].drift}
        fp32 = drift.get("optimised", drift["exported"])
        opt = _speed(drift, "optimised", drift["exported"])
        best_int8 = [s for s in ("int8-dynamic", "int8-static") if s in drift]
        size = max((fp32.bytes / drift[s].bytes for s in best_int8), default=float("nan"))
        status = ", ".join(f"{v.variant}:{v.status}" for v in result.variants)
        row = (opt, *(_speed(drift, s, fp32) for s in ("fp16", "int8-dynamic", "int8-static")), size)
        rows.append(row)
        print(f"{name:28} {row[0]:9.2f} {row[1]:9.2f} {row[2]:10.2f} {row[3]:10.2f} {row[4]:9.2f}  {status}")
        for v in result.variants:
            if v.status != "kept":
                print(f"{'':28}   {v.variant}: {v.reason[:160]}")
    if rows:
        med = [statistics.median(x for x in col if x == x) for col in zip(*rows, strict=True)]
        print(f"{'median':28} {med[0]:9.2f} {med[1]:9.2f} {med[2]:10.2f} {med[3]:10.2f} {med[4]:9.2f}")
    print("ratios > 1: the first named is faster (latency) or smaller (size); medians of raced runs on this host")


if __name__ == "__main__":
    main(sys.argv[1:])
