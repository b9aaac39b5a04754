from __future__ import annotations

from pathlib import Path

import pytest

from tests.package.hostile import Canary, copy_package, opened, to_external
from toolchain.build.pipeline import export_package


@pytest.fixture(scope="session")
def zoo_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real package: a zoo model exported once, ONNX only, to damage copies of."""
    import zoo  # noqa: F401
    from toolchain.core.spec import SPECS

    out = tmp_path_factory.mktemp("zoo") / "pkg"
    result = export_package(SPECS.get("face.match_lr"), out, formats=["onnx"], optimize=False)
    assert result, result.stages
    return out


@pytest.fixture(scope="session")
def external_package(zoo_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same package with its ONNX weights in an external-data file, as the exporter writes big models."""
    pkg = copy_package(zoo_package, tmp_path_factory.mktemp("external"))
    to_external(pkg)
    return pkg


@pytest.fixture
def hostile(tmp_path: Path):
    """Copy a package into a fresh folder that also holds the canary (``secret.bin``) beside it."""
    opened()

    def make(src: Path) -> Path:
        return copy_package(src, tmp_path)

    return make


@pytest.fixture
def canary(tmp_path: Path):
    watched = Canary(tmp_path / "secret.bin", b"outside the package: never read\n" * 4).arm()
    yield watched
    watched.assert_untouched()


@pytest.fixture
def no_runtime(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Record (and refuse) any ONNX Runtime session creation: hostile input must be refused before it."""
    import onnxruntime

    calls: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        calls.append(args[0] if args else kwargs)
        raise AssertionError("ONNX Runtime was handed a hostile model")

    monkeypatch.setattr(onnxruntime, "InferenceSession", refuse)
    return calls
