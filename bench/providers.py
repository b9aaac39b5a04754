"""Each package's ONNX artifacts on every execution provider here: parity, and paired timing ratios.

For each ONNX artifact of each package given: replay the golden samples on every available provider
(``auto`` order: TensorRT, CUDA, ..., then CPU) and print how many sample sets passed and the worst
error as a multiple of the allowed. Then race, side by side on the largest golden sample, each
device provider with and without an IO binding and the CPU session, and print paired ratios
(``timing.paired_ratio``): plain/binding > 1.0 means the binding pays; cpu/device > 1.0 means the
device is faster. Needs only onnxruntime (onnxruntime-gpu for device providers) and numpy.
Run: ``python bench/providers.py PACKAGE [PACKAGE ...]``.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.ort import OrtOptions, OrtRuntime, OrtSession, expand_providers
from toolchain.core.errors import ToolchainError
from toolchain.core.parity import Tolerance
from toolchain.package.format import Package, load_array, open_package
from toolchain.package.verify import replay
from toolchain.perf.timing import paired_ratio, race


def main() -> None:
    """Print parity per provider and the paired timing ratios for each package given."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("packages", nargs="+", type=Path)
    parser.add_argument("--seconds", type=float, default=1.5, help="Least time each race runs.")
    args = parser.parse_args()
    providers = expand_providers(("auto",))
    print(f"providers here: {', '.join(providers)}", flush=True)
    for path in args.packages:
        package = open_package(path)
        sample = max(
            package.samples, key=lambda s: sum(package.file(str(v)).stat().st_size for v in s["inputs"].values())
        )
        feeds = {k: load_array(package.file(str(v))) for k, v in sample["inputs"].items()}
        for entry in (a for a in package.artifacts if a["format"] == "onnx"):
            tag = f"{package.name} {entry['path']}"
            tolerance = Tolerance.from_dict(entry["tolerance"]) if "tolerance" in entry else package.tolerance
            sessions = {}
            for provider in providers:
                try:
                    session = OrtRuntime(OrtOptions(providers=(provider,))).load(
                        package.file(str(entry["path"])), signature=package.signature
                    )
                except ToolchainError as e:
                    print(f"{tag} on {provider}: not started: {str(e)[:200]}", flush=True)
                    continue
                reports = replay(package, session, tolerance)
                worst = max((o.worst_ratio for r in reports for o in r.outputs), default=0.0)
                passed = sum(bool(r) for r in reports)
                print(f"{tag} on {provider}: {passed}/{len(reports)} sample sets passed, worst {worst:.3g}x of allowed")
                sessions[provider] = session
            _race(tag, package, entry, sessions, feeds, args.seconds)


def _race(
    tag: str,
    package: Package,
    entry: Mapping[str, Any],
    sessions: dict[str, OrtSession],
    feeds: dict[str, np.ndarray],
    seconds: float,
) -> None:
    devices = [p for p in sessions if p != "cpu"]
    if not devices:
        return
    runs, names = [], []
    for provider in devices:
        bound = OrtRuntime(replace(sessions[provider].options, io_binding=True)).load(
            package.file(str(entry["path"])), signature=package.signature
        )
        runs += [lambda s=sessions[provider]: s.run(feeds), lambda s=bound: s.run(feeds)]
        names += [provider, f"{provider}+binding"]
    if "cpu" in sessions:
        runs.append(lambda s=sessions["cpu"]: s.run(feeds))
        names.append("cpu")
    timings = dict(zip(names, race(runs, min_seconds=seconds, min_rounds=10), strict=True))
    shape = ", ".join(f"{k}{list(v.shape)}" for k, v in feeds.items())
    line = f"{tag} at {shape}: " + ", ".join(f"{n} {t.p50_ms:.3f} ms" for n, t in timings.items())
    for provider in devices:
        line += f"; {provider} plain/binding {paired_ratio(timings[provider], timings[provider + '+binding']):.2f}"
        if "cpu" in timings:
            line += f", cpu/{provider} {paired_ratio(timings['cpu'], timings[provider]):.2f}"
    print(line, flush=True)


if __name__ == "__main__":
    main()
