"""Every zoo model verified on every host, and its inference latency per host relative to Python ONNX Runtime.

For each model: export a package (``--formats``: both ONNX paths and both TorchScript paths; ``--precisions``:
fp32, fp16 and int8 variants) into ``--out``; verify it
on ``python``, ``node`` (onnxruntime-node), ``browser`` (onnxruntime-web, WebAssembly, headless Chromium)
and ``cpp`` (TorchScript in libtorch), printing the verdict and seconds per host; then, at batch 1 and
16, time ``onnx/model.onnx`` in Python ONNX Runtime, Node and the browser and ``torchscript/model.pt`` in
C++, all with ``--threads`` intra-op threads, and print each host's median latency over Python's
(``2.0x`` = twice as slow). Feeds at a batch are rows of the package's ``export`` sample repeated.
Run: ``python bench/hosts.py [--models face.match_lr,...] [--threads 1] [--runs 30]`` (``--batches ''``: verify only).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

import zoo  # noqa: F401
from toolchain.build.pipeline import export_package
from toolchain.core.errors import ToolchainError
from toolchain.core.spec import SPECS
from toolchain.hosts import HOSTS, verify_on
from toolchain.hosts.browser import bench_browser
from toolchain.hosts.cpp import bench_cpp
from toolchain.hosts.node import bench_node
from toolchain.package.format import load_array, open_package

FORMATS = "onnx,onnx_legacy,torchscript,torchscript_trace"


def batch_feeds(package: Path, batch: int, folder: Path) -> bool:
    """Write the ``export`` sample's inputs resized to `batch` along every ``batch`` axis; False if none."""
    opened = open_package(package)
    sample = next(s for s in opened.samples if s["name"] == "export")
    shapes = {i.name: i.shape for i in opened.signature.inputs}
    resized = False
    folder.mkdir(parents=True, exist_ok=True)
    for name, rel in sample["inputs"].items():
        array = load_array(opened.file(str(rel)))
        for axis, dim in enumerate(shapes[name]):
            if dim == "batch":
                array = np.take(array, np.arange(batch) % array.shape[axis], axis=axis)
                resized = True
        np.save(folder / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
    return resized


def python_ort_ms(model: Path, folder: Path, *, threads: int, runs: int) -> float:
    """Median ms of one ``InferenceSession.run`` on the feeds in `folder` (CPU, `threads` intra-op threads)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    feeds = {p.stem: np.load(p, allow_pickle=False) for p in folder.glob("*.npy")}
    for _ in range(3):
        session.run(None, feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def verify_everywhere(package: Path) -> str:
    """One line: each host's verdict and seconds."""
    cells = []
    for host in HOSTS:
        start = time.perf_counter()
        try:
            result = verify_on(host, package)
            verdict = "ok" if result else f"FAIL ({len(result.failures)} line(s): {result.failures[:1]})"
        except ToolchainError as e:
            verdict = f"could not run: {e}"
        cells.append(f"{host} {verdict} {time.perf_counter() - start:.1f}s")
    return ", ".join(cells)


def main() -> None:
    """Export, verify on every host, then print latency ratios per model and batch."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="", help="Comma-separated zoo names (default: every zoo model).")
    parser.add_argument("--out", type=Path, default=None, help="Folder for the packages (default: a temporary one).")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--formats", default=FORMATS)
    parser.add_argument("--precisions", default="fp32,fp16,int8")
    args = parser.parse_args()
    names = args.models.split(",") if args.models else list(SPECS.names())
    batches = [int(b) for b in args.batches.split(",") if b]
    formats, precisions = args.formats.split(","), args.precisions.split(",")
    with tempfile.TemporaryDirectory(prefix="bench-hosts-") as tmp:
        out = args.out or Path(tmp)
        rows: list[tuple[str, int, float, dict[str, Any]]] = []
        for name in names:
            package = out / name
            start = time.perf_counter()
            result = export_package(SPECS.get(name), package, formats=formats, precisions=precisions, force=True)
            if not result:
                print(f"{name}: export failed at {result.failed_stage}", flush=True)
                continue
            print(f"{name}: exported in {time.perf_counter() - start:.1f}s; {verify_everywhere(package)}", flush=True)
            for batch in batches:
                feeds = Path(tmp) / f"{name}-b{batch}"
                if not batch_feeds(package, batch, feeds):
                    print(f"{name}: no 'batch' dim, not timed", flush=True)
                    break
                base = python_ort_ms(package / "onnx/model.onnx", feeds, threads=args.threads, runs=args.runs)
                ratios: dict[str, Any] = {}
                for host, bench, model in (
                    ("node", bench_node, "onnx/model.onnx"),
                    ("browser", bench_browser, "onnx/model.onnx"),
                    ("cpp", bench_cpp, "torchscript/model.pt"),
                ):
                    try:
                        timed = bench(package, model, feeds, threads=args.threads, runs=args.runs)
                        ratios[host] = float(timed["median_ms"]) / base
                    except ToolchainError as e:
                        ratios[host] = f"n/a ({str(e)[:80]})"
                rows.append((name, batch, base, ratios))
                cells = "  ".join(f"{h} {r:.2f}x" if isinstance(r, float) else f"{h} {r}" for h, r in ratios.items())
                print(f"{name} batch {batch}: python-ort {base:.3f} ms  {cells}", flush=True)
    if not rows:
        return
    print(f"\nlatency relative to Python ONNX Runtime ({args.threads} thread(s); >1 is slower; cpp runs TorchScript)")
    print(f"{'model':<28} {'batch':>5} {'python ms':>10} {'node':>7} {'browser':>8} {'cpp':>7}")
    for name, batch, base, ratios in rows:
        cells = [f"{ratios[h]:.2f}x" if isinstance(ratios[h], float) else "n/a" for h in ("node", "browser", "cpp")]
        print(f"{name:<28} {batch:>5} {base:>10.3f} {cells[0]:>7} {cells[1]:>8} {cells[2]:>7}")


if __name__ == "__main__":
    main()
