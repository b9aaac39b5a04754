"""What the non-Python verifiers need, installed or built on first use into ``$TOOLCHAIN_HOME/hosts``.

- ``node`` and ``browser``: ``npm ci`` of ``node/package.json`` (onnxruntime-node, onnxruntime-web) with
  its lock file; Node.js and npm must be on PATH.
- ``browser``: a system Chromium (Debian's ``chromium``) driven by Playwright for Python.
- ``cpp``: ``cpp/verify.cpp`` built with CMake and g++ against the libtorch inside the installed torch
  wheel, found through the wheel's file list; torch is never imported here.

Each step is skipped when a stamp (a hash of what it was built from) shows it is current. Run
``python -m toolchain.hosts.install all`` to prepare every host ahead of time.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path

from toolchain.core.errors import HostError
from toolchain.package.trust import toolchain_home

__all__ = ["SOURCE", "chromium", "cpp_verifier", "hosts_home", "main", "node_modules", "require"]

SOURCE = Path(__file__).resolve().parent
"""The folder holding the hosts' sources (``js/``, ``node/``, ``browser/``, ``cpp/``)."""
_SETUP_HINT = "or run scripts/setup-hosts.sh"


def hosts_home() -> Path:
    """Where host runtimes are installed: ``$TOOLCHAIN_HOSTS_HOME``, default ``$TOOLCHAIN_HOME/hosts``."""
    return Path(os.environ.get("TOOLCHAIN_HOSTS_HOME") or toolchain_home() / "hosts").expanduser()


def require(tool: str, what: str, install: str) -> str:
    """The full path of executable `tool`, or a `HostError` naming what is missing and how to install it."""
    found = shutil.which(tool)
    if found is None:
        raise HostError(f"{what} ({tool!r}) is not on PATH; install it ({install}) {_SETUP_HINT}")
    return found


def node_modules() -> Path:
    """The ``node_modules`` folder with onnxruntime-node and onnxruntime-web, installed on first use."""
    require("node", "Node.js", "apt-get install -y nodejs npm")
    npm = require("npm", "npm", "apt-get install -y npm")
    target = hosts_home() / "node"
    sources = [SOURCE / "node" / "package.json", SOURCE / "node" / "package-lock.json"]
    with _locked(target) as stamp:
        wanted = _digest(sources)
        modules = target / "node_modules"
        if (
            _read(stamp) == wanted
            and (modules / "onnxruntime-node").is_dir()
            and (modules / "onnxruntime-web").is_dir()
        ):
            return modules
        for source in sources:
            shutil.copyfile(source, target / source.name)
        # NOTE: onnxruntime-node's postinstall downloads CUDA binaries from a host outside the npm
        # registry (unreachable here, and needless: the CPU binaries ship inside the npm package).
        _run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=target, what="npm ci", timeout=1200)
        stamp.write_text(wanted)
    return modules


def chromium() -> str:
    """A Chromium executable: ``$TOOLCHAIN_CHROMIUM``, else ``chromium`` or ``chromium-browser`` on PATH."""
    named = os.environ.get("TOOLCHAIN_CHROMIUM")
    if named:
        if not Path(named).is_file():
            raise HostError(f"TOOLCHAIN_CHROMIUM={named!r} is not a file; point it at a Chromium executable")
        return named
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    raise HostError(f"no Chromium on PATH; install Debian's (apt-get install -y chromium) {_SETUP_HINT}")


def cpp_verifier() -> Path:
    """The C++ TorchScript verifier, built with CMake against the torch wheel's libtorch on first use."""
    cmake = require("cmake", "CMake", "apt-get install -y cmake")
    require("g++", "a C++ compiler", "apt-get install -y g++")
    torch_dir = _torch_dir()
    target = hosts_home() / "cpp"
    sources = [*sorted((SOURCE / "cpp").glob("*.[ch]pp")), SOURCE / "cpp" / "CMakeLists.txt"]
    with _locked(target) as stamp:
        wanted = _digest(sources, extra=f"{torch_dir}:{metadata.version('torch')}")
        binary = target / "build" / "toolchain_verify"
        if _read(stamp) == wanted and binary.is_file():
            return binary
        shutil.rmtree(target / "build", ignore_errors=True)
        configure = [cmake, "-S", str(SOURCE / "cpp"), "-B", str(target / "build"), "-DCMAKE_BUILD_TYPE=Release"]
        _run([*configure, f"-DCMAKE_PREFIX_PATH={torch_dir / 'share' / 'cmake'}"], cwd=target, what="cmake configure")
        jobs = str(max(1, min(4, os.cpu_count() or 1)))
        _run([cmake, "--build", str(target / "build"), "-j", jobs], cwd=target, what="cmake build", timeout=1800)
        stamp.write_text(wanted)
    return binary


def _torch_dir() -> Path:
    """The installed torch package folder, from the wheel's metadata (importing torch is not needed)."""
    try:
        dist = metadata.distribution("torch")
    except metadata.PackageNotFoundError as e:
        raise HostError("the C++ verifier builds against the torch wheel's libtorch; pip install torch") from e
    folder = Path(str(dist.locate_file("torch")))
    if not (folder / "share" / "cmake" / "Torch" / "TorchConfig.cmake").is_file():
        raise HostError(
            f"{folder}: the installed torch has no share/cmake/Torch/TorchConfig.cmake (headers and libtorch); "
            "install a torch wheel from PyPI"
        )
    return folder


@contextlib.contextmanager
def _locked(target: Path) -> Iterator[Path]:
    """Hold `target`'s install lock (one installer at a time); yields its stamp file."""
    target.mkdir(parents=True, exist_ok=True)
    with (target / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield target / ".stamp"


def _digest(files: Sequence[Path], *, extra: str = "") -> str:
    digest = hashlib.sha256(extra.encode())
    for file in files:
        digest.update(file.name.encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _run(command: Sequence[str], *, cwd: Path, what: str, timeout: float = 600) -> None:
    try:
        proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        raise HostError(f"{what} in {cwd} took more than {timeout:.0f} s; run it by hand to see why") from e
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-4:])
        raise HostError(f"{what} in {cwd} failed (exit {proc.returncode}): {tail[-800:]}")


def main(argv: Sequence[str] = ()) -> int:
    """``python -m toolchain.hosts.install node|browser|cpp|all``: prepare hosts ahead of time."""
    hosts = list(argv or sys.argv[1:]) or ["all"]
    if "all" in hosts:
        hosts = ["node", "browser", "cpp"]
    try:
        for host in hosts:
            if host == "node":
                print(f"node: {node_modules()}")
            elif host == "browser":
                print(f"browser: {node_modules()} with {chromium()}")
            elif host == "cpp":
                print(f"cpp: {cpp_verifier()}")
            else:
                raise HostError(f"unknown host {host!r}; choose node, browser, cpp or all")
    except HostError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
