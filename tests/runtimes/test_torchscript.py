from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from exporters.torchscript import TorchScriptExporter
from runtimes.torchscript import TorchScriptRuntime, TorchScriptSession
from tests.conftest import TINY
from toolchain.core.errors import FeedError, InferenceError, RuntimeLoadError
from toolchain.core.samples import generate_samples
from toolchain.core.signature import Signature, TensorSig

SIGNATURE = Signature(
    inputs=(TensorSig("x", "float32", ("batch", 4)),),
    outputs=(TensorSig("y", "float32", ("batch", 2)),),
)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("torchscript")
    artifact = TorchScriptExporter().export(TINY.build().eval(), TINY, generate_samples(TINY)[0], workdir)
    return workdir / artifact.path


@pytest.fixture
def session(model_path: Path) -> TorchScriptSession:
    return TorchScriptRuntime().load(model_path, signature=SIGNATURE)


def test_runtime_declares_what_it_runs() -> None:
    runtime = TorchScriptRuntime()
    assert runtime.name == "torchscript"
    assert runtime.formats == ("torchscript",)
    assert runtime.runs_code is True
    assert runtime.available()


def test_runs_and_names_outputs(session: TorchScriptSession) -> None:
    out = session.run({"x": np.ones((5, 4), np.float32)})
    assert list(out) == ["y"]
    assert out["y"].shape == (5, 2)
    assert out["y"].dtype == np.float32


@pytest.mark.parametrize(
    ("feeds", "message"),
    [
        ({"x": np.ones((2, 4), np.float64)}, r"input 'x': expected float32\[batch, 4\], got float64\[2, 4\]"),
        ({}, r"missing \['x'\]"),
        ({"x": np.ones((2, 5), np.float32)}, "axis 1 must be 4, got 5"),
    ],
)
def test_bad_feeds_are_feed_errors(session: TorchScriptSession, feeds: dict[str, np.ndarray], message: str) -> None:
    with pytest.raises(FeedError, match=message):
        session.run(feeds)


def test_failure_inside_the_module_is_an_inference_error(model_path: Path) -> None:
    loose = Signature(inputs=(TensorSig("x", "float32", ("batch", "?")),), outputs=SIGNATURE.outputs)
    session = TorchScriptRuntime().load(model_path, signature=loose)
    with pytest.raises(InferenceError, match=rf"{model_path.name}: TorchScript failed: "):
        session.run({"x": np.ones((2, 5), np.float32)})


def test_missing_file_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeLoadError, match=r"absent\.pt: no such TorchScript file"):
        TorchScriptRuntime().load(tmp_path / "absent.pt", signature=SIGNATURE)


def test_garbage_file_is_a_load_error(tmp_path: Path) -> None:
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a zip archive")
    with pytest.raises(RuntimeLoadError, match=r"model\.pt: torch\.jit\.load could not load it"):
        TorchScriptRuntime().load(bad, signature=SIGNATURE)


def test_missing_signature_is_a_load_error(model_path: Path) -> None:
    with pytest.raises(RuntimeLoadError, match="carries no input or output names; pass the package's signature"):
        TorchScriptRuntime().load(model_path)


def test_load_prints_nothing(model_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        TorchScriptRuntime().load(model_path, signature=SIGNATURE).run({"x": np.ones((2, 4), np.float32)})
    assert not [w for w in caught if "deprecated" in str(w.message)]
    captured = capfd.readouterr()
    assert captured.out + captured.err == ""


def test_importing_the_module_does_not_import_torch() -> None:
    code = "import sys, runtimes.torchscript, exporters.torchscript; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
