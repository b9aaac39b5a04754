"""Toolchain overhead on the zoo: export + verify + package (default paths) vs a bare dynamo ONNX export.

Run: ``python bench/zoo_overhead.py [--models feed.dlrm_small,image.cnn_small] [--modes all,auto] [--repeat 2]``.
Prints, per model, the seconds of ``toolchain.build.pipeline.export_package`` with ``--formats all``
(every export path, each verified at every sample size, optimised, then packaged) and with
``--formats auto`` (the best ONNX path alone) beside the seconds of a bare
``torch.onnx.export(dynamo=True)`` of the same model with the same dynamic shapes, measured in the
same process, interleaved per model, and the ratios. Targets: ``all`` within 1.5x on every model and
1.3x at the median; ``auto`` within 1.2x.
"""

from __future__ import annotations

import argparse
import statistics
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
    parser.add_argument("--modes", default="all,auto", help="comma-separated --formats values to time (all, auto)")
    parser.add_argument(
        "--repeat", type=int, default=1, help="time each side this many times, interleaved, and keep the fastest"
    )
    args = parser.parse_args()
    names = args.models.split(",") if args.models else [n for n in SPECS.names() if n.split(".")[0] in SERVICES]
    modes = args.modes.split(",")
    torch.set_num_threads(2)
    ratios: dict[str, list[float]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as tmp:
        bare_export(SPECS.get(names[0]), Path(tmp) / "warmup.onnx")  # NOTE: first export pays one-off set-up
        toolchain_export(SPECS.get(names[0]), Path(tmp) / "warmup", ("auto",))
        print(f"{'model':<28} {'bare s':>7} " + " ".join(f"{m + ' s':>7} {'ratio':>6}" for m in modes) + "  kept (all)")
        for name in names:
            spec = SPECS.get(name)
            # NOTE: interleaved per model, so a slower stretch of a shared host hits both sides alike.
            # NOTE: the fastest of --repeat interleaved runs per side: a bare export alone varies up to ~50%
            # between runs on a shared 2-core host (greedy_decoder: 17 s, then 27 s).
            times: dict[str, list[float]] = {"bare": [], **{m: [] for m in modes}}
            kept = ""
            for attempt in range(max(1, args.repeat)):
                times["bare"].append(bare_export(spec, Path(tmp) / f"{name}-{attempt}.onnx"))
                for mode in modes:
                    # NOTE: `--formats all` is every path the spec declares (the CLI passes no formats).
                    formats = ("auto",) if mode == "auto" else () if mode == "all" else tuple(mode.split("+"))
                    ours, kept_here = toolchain_export(spec, Path(tmp) / f"{name}-{mode}-{attempt}", formats)
                    times[mode].append(ours)
                    kept = kept_here if mode == "all" else kept or kept_here
            bare = min(times["bare"])
            cells = []
            for mode in modes:
                ours = min(times[mode])
                ratios[mode].append(ours / bare)
                cells.append(f"{ours:7.2f} {ours / bare:6.2f}")
            print(f"{name:<28} {bare:7.2f} " + " ".join(cells) + f"  {kept}")
    targets = {"all": (1.5, 1.3), "auto": (1.2, 1.2)}
    for mode in modes:
        worst, median = max(ratios[mode]), statistics.median(ratios[mode])
        bound, mid = targets.get(mode, (0.0, 0.0))
        print(
            f"--formats {mode}: worst {worst:.2f}x, median {median:.2f}x"
            + (f" (target: every model <= {bound}x, median <= {mid}x)" if bound else "")
        )


if __name__ == "__main__":
    main()
