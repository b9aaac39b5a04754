"""The Node.js host: a package's ONNX artifacts replayed by ``node/verify.mjs`` with onnxruntime-node."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from toolchain.core.errors import HostError
from toolchain.hosts.install import SOURCE, node_modules, require
from toolchain.hosts.result import HostResult, from_json

__all__ = ["bench_node", "verify_node"]

_SCRIPT = SOURCE / "node" / "verify.mjs"


def verify_node(package: Path, *, threads: int = 1, timeout: float = 900) -> HostResult:
    """Verify `package` in Node.js (its ONNX artifacts; the others are listed as skipped)."""
    package = Path(package).resolve()
    with tempfile.TemporaryDirectory(prefix="toolchain-node-") as tmp:
        out = Path(tmp) / "result.json"
        proc = _node([str(package), "--json", str(out), "--threads", str(threads)], timeout=timeout)
        if proc.returncode not in (0, 1) or not out.is_file():
            raise HostError(f"node verifier could not run on {package} (exit {proc.returncode}): {_tail(proc)}")
        return from_json(out.read_text(), host="node", package=package)


def bench_node(package: Path, model: str, feeds: Path, *, threads: int, runs: int) -> dict[str, Any]:
    """Median latency of `model` (a path in `package`) on the ``.npy`` feeds in folder `feeds`."""
    with tempfile.TemporaryDirectory(prefix="toolchain-node-") as tmp:
        out = Path(tmp) / "bench.json"
        args = [str(Path(package).resolve()), "--bench", str(feeds), "--model", model, "--json", str(out)]
        proc = _node([*args, "--runs", str(runs), "--threads", str(threads)], timeout=600)
        if proc.returncode != 0 or not out.is_file():
            raise HostError(f"node bench of {model} failed (exit {proc.returncode}): {_tail(proc)}")
        data: dict[str, Any] = json.loads(out.read_text())
    return data


def _node(args: list[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
    modules = node_modules()
    node = require("node", "Node.js", "apt-get install -y nodejs npm")
    command = [node, str(_SCRIPT), *args, "--modules", str(modules)]
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        raise HostError(f"node verifier took more than {timeout:.0f} s") from e


def _tail(proc: subprocess.CompletedProcess[str]) -> str:
    return " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])[-600:]
