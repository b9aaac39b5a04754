"""The recommended runtime of each zoo package against the peers a user would otherwise pick.

Per zoo model and batch size (1 and 16 by default): export a package (every path, fp16 and int8),
let `toolchain.perf.bench` recommend the fastest artifact that matches eager (trusted host: TorchScript
and .pt2 count), then race it side by side, in interleaved blocks (a new order each round), against
  eager PyTorch, torch.jit trace + freeze + optimize_for_inference, torch.compile (inductor,
  freezing=True) and ONNX Runtime on a plain torch.onnx.export with default session options.
The plain export is static (every dim at the benchmarked size); so are the ONNX Runtime sessions `bench` plans here
(``plan="shape"``), from artifacts that were verified at every declared size.
Prints latency ratios peer / recommended (>= 1.0: the recommendation is at least as fast), the ratio
against the fastest peer, and the median over the zoo. A row whose whole 95% interval lies below 1.0
is raced once more, longer, against that peer alone, to tell a real gap from the host's drift;
when that peer is ONNX Runtime on the plain export, a second session of the same file joins the
re-race as a noise floor (two sessions of one file differ by up to 2-3%), and the gap counts as
real only when the recommendation's whole interval lies below that second session's too.
2 threads for torch and ONNX Runtime.
Run: ``python bench/peers.py [--batch 1,16] [name ...]``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

import zoo  # noqa: F401
from runtimes import runtime_for
from runtimes.ort import OrtOptions, OrtRuntime
from toolchain.build.pipeline import export_package
from toolchain.core.samples import make_feed
from toolchain.core.spec import SPECS, ModelSpec
from toolchain.package.format import open_package
from toolchain.perf.bench import bench_package
from toolchain.perf.timing import paired_interval, paired_ratio, race

THREADS = 2
PEERS = ("eager", "jit-frozen", "compile-frozen", "ort-plain")


def _feeds(spec: ModelSpec, batch: int) -> dict[str, np.ndarray]:
    symbols = spec.symbols()
    sym = "batch" if "batch" in symbols else symbols[0]
    sizes = {s: spec.dim(s).example for s in symbols} | {sym: batch}
    rng = np.random.default_rng([0, batch])
    return {k: make_feed(inp, sizes, rng) for k, inp in spec.inputs.items()}


def _peers(model: Any, spec: ModelSpec, feeds: dict[str, np.ndarray], plain: Path) -> dict[str, Callable[[], Any]]:
    """Each peer's run on `feeds`; the plain ONNX export is written to `plain`."""
    args = tuple(torch.from_numpy(feeds[n].copy()) for n in spec.inputs)
    peers: dict[str, Callable[[], Any]] = {}

    def eager() -> Any:
        with torch.no_grad():
            return model(*args)

    peers["eager"] = eager
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            scripted = torch.jit.trace(model, args, check_trace=False)  # type: ignore[no-untyped-call]
            traced = torch.jit.optimize_for_inference(torch.jit.freeze(scripted))
            traced(*args)
            peers["jit-frozen"] = lambda: traced(*args)
        except Exception as e:
            print(f"    jit-frozen unavailable: {type(e).__name__}: {str(e)[:100]}")
        try:
            import torch._inductor.config as inductor_config

            inductor_config.freezing = True
            compiled = torch.compile(model, backend="inductor")
            compiled(*args)  # type: ignore[no-untyped-call]
            peers["compile-frozen"] = lambda: compiled(*args)  # type: ignore[no-untyped-call]
        except Exception as e:
            print(f"    compile-frozen unavailable: {type(e).__name__}: {str(e)[:100]}")
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # its progress lines
                torch.onnx.export(model, args, str(plain), dynamo=True, input_names=list(spec.inputs))
            peers["ort-plain"] = _plain_session(plain, feeds)
        except Exception as e:
            print(f"    ort-plain unavailable: {type(e).__name__}: {str(e)[:100]}")
    return peers


def _plain_session(path: Path, feeds: dict[str, np.ndarray]) -> Callable[[], Any]:
    """A run of a new ONNX Runtime session on `path` with default options, `THREADS` threads."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return lambda: session.run(None, {n: feeds[n] for n in names})


def _recommended(pkg: Path, spec: ModelSpec, batch: int) -> tuple[str, Callable[[], Any]] | None:
    options = OrtOptions(intra_op_threads=THREADS)
    report = bench_package(pkg, spec=spec, batches=(batch,), options=options, plan="shape", trust=True)
    best = report.recommended(batch)
    if best is None:
        return None
    runtime = (
        OrtRuntime(OrtOptions(providers=(best.provider,), intra_op_threads=THREADS, fixed_dims=best.fixed_dims))
        if best.runtime == "ort"
        else runtime_for("torchscript" if best.runtime == "torchscript" else "exported_program")
    )
    assert runtime is not None
    session = runtime.load(pkg / best.artifact, signature=open_package(pkg).signature)
    feeds = _feeds(spec, batch)
    return f"{best.artifact} ({best.label})", lambda: session.run(feeds)


def _rerace(
    ours: Callable[[], Any], peer: Callable[[], Any], twin: Callable[[], Any] | None
) -> tuple[tuple[float, float, float], tuple[float, float, float] | None]:
    """A second, longer race of the recommendation against that one peer (and the peer's `twin`).

    With 20-odd rows, one whose interval lies wholly below 1.0 turns up by chance or by the host's
    drift in some runs; a gap that is real shows again here. `twin`, a second session of the same
    plain file, measures the noise floor: two sessions of one file raced side by side differ by up
    to 2-3%, some with the whole interval off 1.0 (measured on the face embedder and MobileNetV2).
    Returns (ratio, low, high) of peer / ours and, with a twin, of peer / twin.
    """
    fns = [ours, peer] if twin is None else [ours, peer, twin]
    timings = race(fns, min_seconds=6.0, min_rounds=40, warmup=5)
    mine, theirs = timings[0], timings[1]
    result = (paired_ratio(theirs, mine), *paired_interval(theirs, mine))
    if twin is None:
        return result, None
    return result, (paired_ratio(theirs, timings[2]), *paired_interval(theirs, timings[2]))


def main() -> None:
    """Export, recommend, race against the peers, print ratios."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*")
    parser.add_argument("--batch", default="1,16")
    parsed = parser.parse_args()
    torch.set_num_threads(THREADS)
    batches = [int(b) for b in parsed.batch.split(",")]
    against_best: list[tuple[float, float, bool]] = []  # ratio, interval's high end, below in the re-race
    print(
        f"{'model':26} {'batch':>5}  {'recommended':56} "
        + " ".join(f"{p:>14}" for p in PEERS)
        + f" {'vs best':>8}  95% interval"
    )
    for name in parsed.names or SPECS.names():
        spec = SPECS.get(name)
        model = spec.build().eval()
        with tempfile.TemporaryDirectory() as tmp:
            pkg = Path(tmp) / "pkg"
            if not export_package(spec, pkg, precisions=("fp32", "fp16", "int8")):
                print(f"{name:26} export failed")
                continue
            for batch in batches:
                dim = spec.dim("batch" if "batch" in spec.symbols() else spec.symbols()[0])
                if batch < dim.min or (dim.max and batch > dim.max):
                    continue
                chosen = _recommended(pkg, spec, batch)
                if chosen is None:
                    print(f"{name:26} {batch:>5}  no artifact matched eager at this batch")
                    continue
                label, run = chosen
                feeds = _feeds(spec, batch)
                plain = Path(tmp) / f"plain-{batch}.onnx"
                peers = _peers(model, spec, feeds, plain)
                timings = race([run, *peers.values()], min_seconds=3.0, min_rounds=30, warmup=5)
                ours = timings[0]
                ratios = {p: paired_ratio(t, ours) for p, t in zip(peers, timings[1:], strict=True)}
                fastest = min(ratios, key=ratios.__getitem__)
                best, (low, high) = ratios[fastest], paired_interval(timings[1 + list(peers).index(fastest)], ours)
                cells = " ".join(f"{ratios[p]:14.2f}" if p in ratios else f"{'—':>14}" for p in PEERS)
                tail = f"{best:8.2f}  [{low:.2f}, {high:.2f}]  ({ours.p50_ms:.3f} ms)"
                print(f"{name:26} {batch:>5}  {label[:56]:56} {cells} {tail}", flush=True)
                confirmed = False
                if high < 1.0:
                    twin = _plain_session(plain, feeds) if fastest == "ort-plain" else None
                    (ratio, lo, hi), floor = _rerace(run, peers[fastest], twin)
                    line = f"{'':34}re-raced against {fastest}: {ratio:.2f} [{lo:.2f}, {hi:.2f}]"
                    if floor is not None:
                        line += f"; a second session of the same file: {floor[0]:.2f} [{floor[1]:.2f}, {floor[2]:.2f}]"
                    print(line)
                    confirmed = hi < 1.0 and (floor is None or hi < floor[1])
                against_best.append((best, high, confirmed))
    if against_best:
        median = statistics.median(r for r, _, _ in against_best)
        print(f"median ratio against the fastest peer: {median:.2f} over {len(against_best)} rows")
        below = sum(r < 1.0 for r, _, _ in against_best)
        sure = sum(high < 1.0 for _, high, _ in against_best)
        real = sum(again for _, _, again in against_best)
        print(
            f"rows below 1.0: {below}, of which {sure} with the whole 95% interval below 1.0 "
            f"and {real} also below in the re-race, and below a second session of the plain file there"
        )
    print("ratio = peer / recommended latency: median over race rounds of the two block medians' ratio")
    print("(>= 1.0: recommended is as fast); interval: 95% bootstrap interval of that median ratio")
    print("ort[...]: session planned for the benchmarked shape, like the plain export (other sizes are refused)")


if __name__ == "__main__":
    main()
