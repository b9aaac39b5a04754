"""Toolchain overhead on the zoo: export + verify + package (default paths) vs a bare dynamo ONNX export.

Run: ``python bench/zoo_overhead.py [--models feed.dlrm_small,image.cnn_small] [--formats auto]``.
Prints, per model, the seconds of ``toolchain.build.pipeline.export_package`` (every path the model
declares, each verified at every sample size, then packaged) beside the seconds of a bare
``torch.onnx.export(dynamo=True)`` of the same model with the same dynamic shapes, measured in the
same process, and the ratio. Target: total ratio <= 2.0 with the default paths.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import zoo  # noqa: F401 - registers the zoo
from exporters._capture import capture_findings
from exporters.onnx import _dynamic_shapes
from toolchain.build.pipeline import export_package
from toolchain.core.samples import generate_samples
from toolchain.core.spec import SPECS, ModelSpec

SERVICES = ("feed", "face", "image", "search", "translation", "integrity", "speech")


def bare_export(spec: ModelSpec, target: Path) -> float:
    """Seconds of a plain ``torch.onnx.export(dynamo=True)`` with the spec's dynamic shapes."""
    model = spec.build().eval()
    sample = generate_samples(spec)[0]
    args = tuple(torch.from_numpy(sample.feeds[n].copy()) for n in spec.inputs)
    start = time.perf_counter()
    with capture_findings():  # NOTE: keeps the exporter's noise off the table; costs microseconds.
        torch.onnx.export(model, args, str(target), dynamo=True, dynamic_shapes=_dynamic_shapes(spec))
    return time.perf_counter() - start


def toolchain_export(spec: ModelSpec, out: Path, formats: tuple[str, ...]) -> tuple[float, str]:
    """Seconds of the whole pipeline, and the kept paths."""
    start = time.perf_counter()
    result = export_package(spec, out, formats=formats)
    seconds = time.perf_counter() - start
    if not result:
        raise SystemExit(f"{spec.name}: the pipeline failed: {result.failed_stage}")
    return seconds, ",".join(p.exporter for p in result.kept)


def main() -> None:
    """Run the comparison and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="", help="comma-separated names (default: the whole zoo)")
    parser.add_argument("--formats", default="", help="comma-separated paths, or 'auto' (default: each model's)")
    args = parser.parse_args()
    names = args.models.split(",") if args.models else [n for n in SPECS.names() if n.split(".")[0] in SERVICES]
    formats = tuple(args.formats.split(",")) if args.formats else ()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        bare_export(SPECS.get(names[0]), Path(tmp) / "warmup.onnx")  # NOTE: first export pays one-off set-up
        total_bare = total_ours = 0.0
        print(f"{'model':<28} {'bare s':>7} {'toolchain s':>11} {'ratio':>6}  kept paths")
        for name in names:
            spec = SPECS.get(name)
            bare = bare_export(spec, Path(tmp) / f"{name}.onnx")
            ours, kept = toolchain_export(spec, Path(tmp) / name, formats)
            total_bare, total_ours = total_bare + bare, total_ours + ours
            print(f"{name:<28} {bare:7.2f} {ours:11.2f} {ours / bare:6.2f}  {kept}")
        print(f"{'total':<28} {total_bare:7.2f} {total_ours:11.2f} {total_ours / total_bare:6.2f}  (target <= 2.0)")


if __name__ == "__main__":
    main()
