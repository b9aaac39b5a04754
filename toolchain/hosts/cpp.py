"""The C++ host: TorchScript artifacts replayed by ``cpp/verify.cpp`` with libtorch (``torch::jit::load``)."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from toolchain.core.errors import HostError
from toolchain.hosts.install import cpp_verifier
from toolchain.hosts.result import HostResult, from_json
from toolchain.package import trust as trust_list

__all__ = ["bench_cpp", "verify_cpp"]


def verify_cpp(package: Path, *, trust: bool = False, threads: int = 1, timeout: float = 900) -> HostResult:
    """Verify `package`'s TorchScript artifacts in C++.

    Loading TorchScript runs code, so, as in the Python verifier, they are loaded only for a package this
    machine exported (its trust list) or with `trust`; otherwise they are reported as refused.
    """
    package = Path(package).resolve()
    trusted = trust or trust_list.is_trusted(package)
    with tempfile.TemporaryDirectory(prefix="toolchain-cpp-") as tmp:
        out = Path(tmp) / "result.json"
        args = [str(package), "--json", str(out), "--threads", str(threads), *(["--trust"] if trusted else [])]
        proc = _run(args, timeout=timeout)
        if proc.returncode not in (0, 1) or not out.is_file():
            raise HostError(f"C++ verifier could not run on {package} (exit {proc.returncode}): {_tail(proc)}")
        return from_json(out.read_text(), host="cpp", package=package)


def bench_cpp(package: Path, model: str, feeds: Path, *, threads: int, runs: int) -> dict[str, Any]:
    """Median latency of TorchScript `model` on the ``.npy`` feeds in folder `feeds` (a trusted package)."""
    with tempfile.TemporaryDirectory(prefix="toolchain-cpp-") as tmp:
        out = Path(tmp) / "bench.json"
        args = [str(Path(package).resolve()), "--bench", str(feeds), "--model", model, "--json", str(out), "--trust"]
        proc = _run([*args, "--runs", str(runs), "--threads", str(threads)], timeout=600)
        if proc.returncode != 0 or not out.is_file():
            raise HostError(f"C++ bench of {model} failed (exit {proc.returncode}): {_tail(proc)}")
        data: dict[str, Any] = json.loads(out.read_text())
    return data


def _run(args: list[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
    binary = cpp_verifier()
    try:
        return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        raise HostError(f"C++ verifier took more than {timeout:.0f} s") from e


def _tail(proc: subprocess.CompletedProcess[str]) -> str:
    return " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])[-600:]
