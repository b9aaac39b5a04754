from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from toolchain.build.pipeline import export_package
from toolchain.core.spec import Dim, Input, ModelSpec
from toolchain.package.format import _sha256


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


TINY = ModelSpec(
    name="test.tiny",
    factory=Tiny,
    inputs={"x": Input.normal(("batch", 4))},
    outputs=("y",),
    dims={"batch": Dim(example=3)},
)


@pytest.fixture(scope="session", autouse=True)
def private_trust_list(tmp_path_factory: pytest.TempPathFactory):
    """Keep the machine's real trust list out of the tests (subprocesses inherit it too)."""
    saved = os.environ.get("TOOLCHAIN_HOME")
    os.environ["TOOLCHAIN_HOME"] = str(tmp_path_factory.mktemp("toolchain-home"))
    yield
    if saved is None:
        del os.environ["TOOLCHAIN_HOME"]
    else:
        os.environ["TOOLCHAIN_HOME"] = saved


@pytest.fixture(scope="session")
def tiny_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "pkg"
    result = export_package(TINY, out)
    assert result, result.stages
    return out


@pytest.fixture(scope="session")
def dlrm_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import zoo  # noqa: F401
    from toolchain.core.spec import SPECS

    out = tmp_path_factory.mktemp("dlrm") / "pkg"
    result = export_package(SPECS.get("feed.dlrm_small"), out)
    assert result, result.stages
    return out


@pytest.fixture
def copy_of(tmp_path: Path):
    def copy(package: Path) -> Path:
        target = tmp_path / package.name
        shutil.copytree(package, target)
        return target

    return copy


def rehash(package: Path, rel: str) -> None:
    """Recompute the manifest entry of `rel` so that only parity can catch a change to it."""
    manifest_path = package / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for entry in manifest["files"]:
        if entry["path"] == rel:
            entry["size"] = (package / rel).stat().st_size
            entry["sha256"] = _sha256(package / rel)
    manifest_path.write_text(json.dumps(manifest))
