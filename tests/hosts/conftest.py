from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from toolchain.build.pipeline import export_package

# NOTE: the root conftest points TOOLCHAIN_HOME at a fresh folder per session (a private trust list); the
# host runtimes (npm packages, the C++ build) stay in the machine's cache that scripts/setup-hosts.sh filled.
os.environ.setdefault(
    "TOOLCHAIN_HOSTS_HOME",
    str(Path(os.environ.get("TOOLCHAIN_HOME") or "~/.cache/toolchain").expanduser() / "hosts"),
)

HOST_FORMATS = ("onnx", "torchscript", "torchscript_trace")


@pytest.fixture(scope="session")
def hosts_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small zoo package with fp32 and fp16 ONNX artifacts and both TorchScript paths, exported once."""
    import zoo  # noqa: F401
    from toolchain.core.spec import SPECS

    out = tmp_path_factory.mktemp("hosts") / "pkg"
    result = export_package(SPECS.get("face.match_lr"), out, formats=HOST_FORMATS, precisions=("fp32", "fp16"))
    assert result, result.stages
    return out


@pytest.fixture
def package_copy(hosts_package: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(hosts_package, target)
    return target
