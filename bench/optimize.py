"""Per zoo model: optimised vs unoptimised ONNX Runtime latency, int8/fp16 vs fp32 latency, and size ratios.

Exports each model through the torch.export-based ONNX path twice, without and with the optimisation
passes (and every precision), then races the files side by side on this host (2 threads) on the
package's export sample. Every ratio is printed beside the two medians it is computed from.
Run: ``python bench/optimize.py [name ...]``.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

import zoo  # noqa: F401
from toolchain.build.pipeline import export_package
from toolchain.core.spec import SPECS
from toolchain.perf.timing import Timing, race

STAGES = ("exported", "optimised", "fp16", "int8-dynamic", "int8-static")
PAIRS = (("opt/unopt", "exported", "optimised"), *((f"{s}/fp32", "optimised", s) for s in STAGES[2:]))


def _run(path: Path, feeds: dict[str, np.ndarray]) -> Callable[[], Any]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda: session.run(None, feeds)


def _files(name: str, tmp: Path) -> tuple[dict[str, Path], dict[str, np.ndarray]] | str:
    """Each stage's file and the export sample's feeds, or why the model could not be exported."""
    spec = SPECS.get(name)
    plain = export_package(spec, tmp / "plain", formats=["onnx"], optimize=False)
    full = export_package(spec, tmp / "full", formats=["onnx"], precisions=("fp32", "fp16", "int8"))
    if not plain or not full:
        return f"export failed: {plain.failed_stage or full.failed_stage}"
    files = {"exported": tmp / "plain" / "onnx" / "model.onnx", "optimised": tmp / "full" / "onnx" / "model.onnx"}
    files |= {s: tmp / "full" / "onnx" / f"model.{s}.onnx" for s in STAGES[2:]}
    feeds = {p.stem: np.load(p) for p in sorted((tmp / "full" / "samples" / "export" / "inputs").glob("*.npy"))}
    return {s: f for s, f in files.items() if f.exists()}, feeds


def _cell(timings: dict[str, Timing], a: str, b: str) -> tuple[str, float]:
    """``0.040/0.032 1.25x``: `a`'s median, `b`'s, and their ratio (> 1: `b` is faster)."""
    if a not in timings or b not in timings:
        return "—", float("nan")
    ratio = timings[a].p50_ms / timings[b].p50_ms
    return f"{timings[a].p50_ms:.3f}/{timings[b].p50_ms:.3f} {ratio:.2f}x", ratio


def main(names: list[str]) -> None:
    """Export, race, then print one row per model (medians in ms and their ratio) and the median ratios."""
    torch.set_num_threads(2)
    ratios: list[list[float]] = [[] for _ in PAIRS]
    print(f"{'model':28} " + " ".join(f"{label:>22}" for label, _, _ in PAIRS) + f" {'size int8':>9}")
    for name in names or SPECS.names():
        with tempfile.TemporaryDirectory() as tmp:
            found = _files(name, Path(tmp))
            if isinstance(found, str):
                print(f"{name:28} {found}")
                continue
            files, feeds = found
            stages = list(files)
            timings = dict(zip(stages, race([_run(files[s], feeds) for s in stages], min_seconds=1.0), strict=True))
            sizes = {s: f.stat().st_size for s, f in files.items()}
        cells = []
        for i, (_, a, b) in enumerate(PAIRS):
            text, ratio = _cell(timings, a, b)
            cells.append(f"{text:>22}")
            ratios[i].append(ratio)
        int8 = max((sizes["optimised"] / sizes[s] for s in ("int8-dynamic", "int8-static") if s in sizes), default=0)
        print(f"{name:28} " + " ".join(cells) + (f" {int8:9.2f}" if int8 else f" {'—':>9}"))
    measured = [[x for x in col if x == x] for col in ratios]
    medians = [f"{statistics.median(col):.2f}x" if col else "—" for col in measured]
    print(f"{'median ratio':28} " + " ".join(f"{m:>22}" for m in medians))
    print("a/b: median ms of a, then of b, raced side by side on this host; ratio > 1: b is faster")


if __name__ == "__main__":
    main(sys.argv[1:])
