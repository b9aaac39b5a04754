"""The parity gate at scale: models per minute at --jobs 1 and --jobs 2, and a fully cached re-run.

Run: ``python bench/gate_scale.py [--count 200] [--formats auto] [--jobs 1,2] [--against CHECKOUT]``.

Registers ``--count`` variants from ``bench/gate_variants.py`` (width / depth / sequence sweeps of
five zoo-like families, each its own spec) and runs ``toolchain gate`` over them as a user would,
each run a fresh process with a private, empty ``TOOLCHAIN_HOME``: first with ``--no-cache`` at
every ``--jobs`` value (models per minute, wall time including process start), then once more with
nothing changed (every model served from the cache; target: under 10 s for 200 models).

With ``--against CHECKOUT`` (another commit checked out, e.g. ``git worktree add /tmp/base bcf5aeb``), that
checkout's gate is timed over the same variants in the same run, right before this one at each ``--jobs``
value, and the ratio of models per minute is printed (target: at least 2x the code the speed work started from).
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


def run_gate(
    home: Path, count: int, *, jobs: int, formats: str, cache: bool, tree: Path | None = None
) -> tuple[float, dict[str, object]]:
    """Wall seconds of one ``toolchain gate`` process over the variants, and its JSON report.

    `tree`: run the toolchain of that checkout instead of the one installed here.
    """
    home.mkdir(parents=True, exist_ok=True)
    report = home / f"gate-{jobs}-{int(cache)}.json"
    command = [sys.executable, "-m", "toolchain.cli", "gate", str(VARIANTS), "--formats", formats]
    command += ["--jobs", str(jobs), "--quiet", "--json", str(report)] + ([] if cache else ["--no-cache"])
    env = {**os.environ, "TOOLCHAIN_HOME": str(home), "GATE_SCALE_COUNT": str(count)}
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(tree), *filter(None, [os.environ.get("PYTHONPATH", "")])])
    start = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=tree, capture_output=True, text=True, check=False)
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
    parser.add_argument("--against", type=Path, default=None, help="a checkout of another commit, timed beside")
    args = parser.parse_args()
    against = _checkout(args.against) if args.against else None
    with tempfile.TemporaryDirectory(prefix="gate-scale-") as tmp:
        home = Path(tmp) / "here"
        print(f"{args.count} variants, --formats {args.formats}, {os.cpu_count()} CPUs")
        print(f"{'run':<32} {'seconds':>9} {'models/min':>11} {'cached':>7}  verdict")
        for jobs in (int(j) for j in args.jobs.split(",")):
            if against is not None:
                base_s, data = run_gate(
                    Path(tmp) / "against", args.count, jobs=jobs, formats=args.formats, cache=False, tree=against[0]
                )
                _row(f"--jobs {jobs} --no-cache @ {against[1]}", base_s, args.count, data)
            seconds, data = run_gate(home, args.count, jobs=jobs, formats=args.formats, cache=False)
            _row(f"--jobs {jobs} --no-cache", seconds, args.count, data)
            if against is not None:
                print(f"{'':<32} {'':>9} {base_s / seconds:10.2f}x  models/min against {against[1]} (target >= 2x)")
        seconds, data = run_gate(
            home, args.count, jobs=max(int(j) for j in args.jobs.split(",")), formats=args.formats, cache=True
        )
        _row("cached re-run", seconds, args.count, data)


def _checkout(tree: Path) -> tuple[Path, str]:
    """`tree` (a checkout holding toolchain/ and bench/) and its short commit, or exit with why not."""
    tree = tree.resolve()
    if not (tree / "toolchain" / "cli.py").is_file():
        raise SystemExit(f"--against {tree}: not a checkout of this project (no toolchain/cli.py)")
    head = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return tree, head.stdout.strip() or tree.name


def _row(label: str, seconds: float, count: int, data: dict[str, object]) -> None:
    models = data["models"]
    assert isinstance(models, list)
    cached = sum(bool(m.get("cached")) for m in models)
    verdict = "passed" if data["passed"] else f"FAILED: {data['summary']}"
    print(f"{label:<32} {seconds:9.1f} {count / seconds * 60:11.1f} {cached:7d}  {verdict}", flush=True)


if __name__ == "__main__":
    main()
