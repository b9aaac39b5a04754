"""EmbeddingBag on ONNX Runtime: torchlib's Loop per table vs the Loop-free translation, beside eager.

Run: ``python bench/embedding_bag.py [--models feed.dlrm_small,feed.dlrm_ragged] [--batches 1,16]``.
Exports each model twice with `OnnxExporter` (``loop_free_embedding_bag=False``: torchlib's ``Loop``;
``True``: Gather + reductions), then prints per batch size the median latency of eager torch and of
both ONNX Runtime sessions, on 2 threads each, with speed-ups over eager (``x eager`` > 1 is faster)
and the largest absolute difference from eager. Other symbolic dims stay at their export size.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

import zoo  # noqa: F401 - registers the zoo
from exporters._capture import capture_findings
from exporters.onnx import OnnxExporter
from toolchain.core.samples import generate_samples, make_feed
from toolchain.core.spec import SPECS, ModelSpec

THREADS = 2


def medians_ms(calls: Mapping[str, Callable[[], Any]], *, warmup: int = 20, budget_s: float = 3.0) -> dict[str, float]:
    """Median milliseconds of each call, timed in turns until `budget_s` has passed (at least 30 turns).

    NOTE: taking turns spreads any load from other processes evenly over the contenders, so the ratios
    stay fair on a shared machine even when the absolute numbers move.
    """
    for call in calls.values():
        for _ in range(warmup):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    deadline = time.perf_counter() + budget_s
    while len(times[next(iter(calls))]) < 30 or time.perf_counter() < deadline:
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def session(path: Path) -> ort.InferenceSession:
    """An ONNX Runtime CPU session on `THREADS` intra-op threads."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.log_severity_level = 4
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def export_both(spec: ModelSpec, model: Any, workdir: Path) -> dict[str, ort.InferenceSession]:
    """ONNX Runtime sessions on the Loop export and the Loop-free export of `model`."""
    sample = generate_samples(spec)[0]
    sessions = {}
    for label, loop_free in (("loop", False), ("loop-free", True)):
        with capture_findings():  # NOTE: keeps the exporter's noise off the table.
            artifact = OnnxExporter(loop_free_embedding_bag=loop_free).export(model, spec, sample, workdir / label)
        sessions[label] = session(workdir / label / artifact.path)
    return sessions


def feeds_at(spec: ModelSpec, batch: int) -> dict[str, np.ndarray]:
    """Seeded feeds with ``batch`` examples and every other dim at its export size."""
    sizes = {**generate_samples(spec)[0].sizes, "batch": batch}
    rng = np.random.default_rng(batch)
    return {name: make_feed(inp, sizes, rng) for name, inp in spec.inputs.items()}


def measure(spec: ModelSpec, model: Any, sessions: Mapping[str, ort.InferenceSession], batch: int) -> str:
    """One table row: latencies, speed-ups over eager and the largest difference from eager."""
    feeds = feeds_at(spec, batch)
    args = [torch.from_numpy(feeds[n]) for n in spec.inputs]
    with torch.no_grad():
        expected = model(*args).numpy()
        ms = medians_ms({"eager": lambda: model(*args), **{k: _runner(s, feeds) for k, s in sessions.items()}})
    cells = [f"{spec.name:<18} {batch:>5} {ms['eager']:>9.3f}"]
    for label, sess in sessions.items():
        diff = float(np.abs(sess.run(None, feeds)[0] - expected).max())
        cells.append(f"{ms[label]:>9.3f} {ms['eager'] / ms[label]:>6.2f}x {diff:>8.1e}")
    cells.append(f"{ms['loop'] / ms['loop-free']:>7.2f}x")
    return " ".join(cells)


def _runner(sess: ort.InferenceSession, feeds: Mapping[str, np.ndarray]) -> Callable[[], Any]:
    return lambda: sess.run(None, dict(feeds))


def main() -> None:
    """Export, time and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="feed.dlrm_small,feed.dlrm_ragged", help="comma-separated names")
    parser.add_argument("--batches", default="1,16", help="comma-separated batch sizes")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    header = "model              batch  eager ms   loop ms x eager max|diff| free ms x eager max|diff| free/loop"
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            spec = SPECS.get(name)
            model = spec.build().eval()
            sessions = export_both(spec, model, Path(tmp) / name)
            for batch in (int(b) for b in args.batches.split(",")):
                print(measure(spec, model, sessions, batch), flush=True)


if __name__ == "__main__":
    main()
