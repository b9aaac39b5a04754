"""The parity gate at scale: models per minute at --jobs 1 and --jobs 2, and a fully cached re-run.

Run: ``python bench/gate_scale.py [--count 200] [--formats auto] [--jobs 1,2]``.

Registers ``--count`` variants from ``bench/gate_variants.py`` (width / depth / sequence sweeps of
five zoo-like families, each its own spec) and runs ``toolchain gate`` over them as a user would,
each run a fresh process with a private, empty ``TOOLCHAIN_HOME``: first with ``--no-cache`` at
every ``--jobs`` value (models per minute, wall time including process start), then once more with
nothing changed (every model served from the cache; target: under 10 s for 200 models).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = Path(__file__).with_name("gate_variants.py")


def run_gate(home: Path, count: int, *, jobs: int, formats: str, cache: bool) -> tuple[float, dict[str, object]]:
    """Wall seconds of one ``toolchain gate`` process over the variants, and its JSON report."""
    report = home / f"gate-{jobs}-{int(cache)}.json"
    command = [sys.executable, "-m", "toolchain.cli", "gate", str(VARIANTS), "--formats", formats]
    command += ["--jobs", str(jobs), "--quiet", "--json", str(report)] + ([] if cache else ["--no-cache"])
    env = {**os.environ, "TOOLCHAIN_HOME": str(home), "GATE_SCALE_COUNT": str(count)}
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise SystemExit(f"toolchain gate exited {done.returncode}:\n{done.stderr[-3000:]}")
    data: dict[str, object] = json.loads(report.read_text())
    return seconds, data


def main() -> None:
    """Run the sweep and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200, help="number of model variants (at most 240)")
    parser.add_argument("--formats", default="auto", help="export paths for the gate (default: auto, ONNX only)")
    parser.add_argument("--jobs", default="1,2", help="comma-separated worker counts to time")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gate-scale-") as tmp:
        home = Path(tmp)
        print(f"{args.count} variants, --formats {args.formats}, {os.cpu_count()} CPUs")
        print(f"{'run':<24} {'seconds':>9} {'models/min':>11} {'cached':>7}  verdict")
        for jobs in (int(j) for j in args.jobs.split(",")):
            seconds, data = run_gate(home, args.count, jobs=jobs, formats=args.formats, cache=False)
            _row(f"--jobs {jobs} --no-cache", seconds, args.count, data)
        seconds, data = run_gate(
            home, args.count, jobs=max(int(j) for j in args.jobs.split(",")), formats=args.formats, cache=True
        )
        _row("cached re-run", seconds, args.count, data)


def _row(label: str, seconds: float, count: int, data: dict[str, object]) -> None:
    models = data["models"]
    assert isinstance(models, list)
    cached = sum(bool(m.get("cached")) for m in models)
    verdict = "passed" if data["passed"] else f"FAILED: {data['summary']}"
    print(f"{label:<24} {seconds:9.1f} {count / seconds * 60:11.1f} {cached:7d}  {verdict}", flush=True)


if __name__ == "__main__":
    main()
