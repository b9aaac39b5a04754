from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runtimes import RUNTIMES, runtime_for
from runtimes.ort import OrtOptions, OrtRuntime, expand_providers, resolve_providers, short_name
from toolchain.core.errors import FeedError, InferenceError, RuntimeLoadError
from toolchain.package.format import open_package


@pytest.fixture
def session(tiny_package: Path):
    package = open_package(tiny_package)
    return OrtRuntime().load(tiny_package / "onnx/model.onnx", signature=package.signature)


def test_runs_and_names_outputs(session) -> None:
    out = session.run({"x": np.ones((5, 4), np.float32)})
    assert list(out) == ["y"]
    assert out["y"].shape == (5, 2)
    assert out["y"].dtype == np.float32


@pytest.mark.parametrize(
    ("feeds", "message"),
    [
        ({}, r"missing \['x'\]"),
        ({"x": np.ones((2, 4), np.float32), "z": np.ones(1)}, r"unexpected \['z'\]"),
        ({"x": np.ones((2, 4), np.float64)}, r"input 'x': expected float32\[batch, 4\], got float64\[2, 4\]"),
        ({"x": np.ones((2, 4, 1), np.float32)}, "input 'x': expected float32"),
        ({"x": np.ones((2, 5), np.float32)}, "axis 1 must be 4, got 5"),
        ({"x": [[1.0] * 4]}, "expected a numpy array"),
    ],
)
def test_bad_feeds_are_named(session, feeds, message: str) -> None:
    with pytest.raises(FeedError, match=message):
        session.run(feeds)


def test_native_signature_is_read_from_the_model(tiny_package: Path) -> None:
    session = OrtRuntime().load(tiny_package / "onnx/model.onnx")
    (inp,) = session.signature.inputs
    assert (inp.name, inp.dtype, inp.shape) == ("x", "float32", ("batch", 4))


def test_shared_symbol_must_agree_across_inputs(dlrm_package: Path) -> None:
    package = open_package(dlrm_package)
    session = OrtRuntime().load(dlrm_package / "onnx/model.onnx", signature=package.signature)
    feeds = {"dense": np.zeros((2, 13), np.float32), "sparse": np.zeros((3, 8, 4), np.int64)}
    with pytest.raises(FeedError, match="dim 'batch' is 3 here but 2"):
        session.run(feeds)


def test_corrupt_model_is_a_load_error(tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a protobuf")
    with pytest.raises(RuntimeLoadError, match="could not load"):
        OrtRuntime().load(bad)
    with pytest.raises(RuntimeLoadError, match="no such ONNX file"):
        OrtRuntime().load(tmp_path / "absent.onnx")


def test_unavailable_provider_lists_the_available_ones(tiny_package: Path) -> None:
    runtime = OrtRuntime(OrtOptions(providers=("NoSuchExecutionProvider",)))
    with pytest.raises(RuntimeLoadError, match=r"\['NoSuchExecutionProvider'\] not available .*available: .*cpu"):
        runtime.load(tiny_package / "onnx/model.onnx")


def test_short_provider_names_and_session_options(tiny_package: Path) -> None:
    options = OrtOptions(providers=("cpu",), intra_op_threads=1, graph_optimization="basic", io_binding=True)
    session = OrtRuntime(options).load(tiny_package / "onnx/model.onnx")
    assert session.providers == ["CPUExecutionProvider"]
    x = np.ones((2, 4), np.float32)
    plain = OrtRuntime().load(tiny_package / "onnx/model.onnx").run({"x": x})
    bound = session.run({"x": x})
    np.testing.assert_allclose(bound["y"], plain["y"], rtol=1e-6)
    with pytest.raises(RuntimeLoadError, match=r"\['cuda'\] not available"):
        resolve_providers(("cuda",))
    with pytest.raises(ValueError, match="graph_optimization must be one of"):
        OrtOptions(graph_optimization="max")


def test_registry_finds_ort_for_onnx() -> None:
    assert runtime_for("onnx") is RUNTIMES.get("ort")
    assert runtime_for("no-such-format") is None


def test_a_checked_feed_layout_does_not_hide_a_wrong_one_later(tiny_package: Path) -> None:
    session = OrtRuntime().load(tiny_package / "onnx/model.onnx", signature=open_package(tiny_package).signature)
    session.run({"x": np.ones((2, 4), np.float32)})
    session.run({"x": np.ones((2, 4), np.float32)})
    with pytest.raises(FeedError, match="input 'x'"):
        session.run({"x": np.ones((2, 4), np.float64)})
    with pytest.raises(FeedError, match="input 'x'"):
        session.run({"x": np.ones((2, 5), np.float32)})


def test_a_session_planned_for_one_batch_refuses_others_rather_than_run_them(tiny_package: Path) -> None:
    package = open_package(tiny_package)
    free = OrtRuntime().load(tiny_package / "onnx/model.onnx", signature=package.signature)
    planned = OrtRuntime(OrtOptions(fixed_dims=(("batch", 3),))).load(
        tiny_package / "onnx/model.onnx", signature=package.signature
    )
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(planned.run({"x": x})["y"], free.run({"x": x})["y"])
    with pytest.raises(InferenceError, match="ONNX Runtime failed"):
        planned.run({"x": np.ones((2, 4), np.float32)})


def test_feeds_in_another_order_or_dtype_are_checked_again(session) -> None:
    session.run({"x": np.ones((2, 4), np.float32)})
    with pytest.raises(FeedError, match="got float64"):
        session.run({"x": np.ones((2, 4), np.float64)})


@pytest.fixture
def unstartable_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """ONNX Runtime lists CUDA (as onnxruntime-gpu does) but cannot start it (no GPU, no CUDA libraries)."""
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])


def test_auto_tries_accelerated_providers_first_then_cpu(unstartable_cuda: None) -> None:
    assert expand_providers(("auto",)) == ("cuda", "cpu")
    assert expand_providers(("CUDAExecutionProvider", "CPU", "auto")) == ("cuda", "cpu")


def test_auto_is_cpu_alone_on_a_cpu_build() -> None:
    assert expand_providers(("auto",)) == ("cpu",)


def test_a_provider_that_falls_back_to_cpu_is_an_error_not_a_silent_cpu_run(
    tiny_package: Path, unstartable_cuda: None, capsys: pytest.CaptureFixture[str]
) -> None:
    fell_back = r"could not start cuda \(it fell back to cpu\): .*CUDAExecutionProvider"
    with pytest.raises(RuntimeLoadError, match=fell_back):
        OrtRuntime(OrtOptions(providers=("cuda",))).load(tiny_package / "onnx/model.onnx")
    assert capsys.readouterr().out == ""  # ONNX Runtime's own "EP Error" print stays out of the user's output


def test_sessions_name_their_provider_and_bind_io_only_when_asked(tiny_package: Path) -> None:
    session = OrtRuntime().load(tiny_package / "onnx/model.onnx")
    assert session.provider == "cpu" and not session._bind
    assert OrtRuntime(OrtOptions(io_binding=True)).load(tiny_package / "onnx/model.onnx")._bind
    assert short_name("CUDAExecutionProvider") == "cuda" and short_name("MyExecutionProvider") == "MyExecutionProvider"


def test_the_reason_a_provider_did_not_start_is_onnx_runtimes_own(
    tiny_package: Path, unstartable_cuda: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import onnxruntime as ort

    class FallingBack(ort.InferenceSession):  # what onnxruntime-gpu does when cuDNN is missing
        def __init__(self, path: str, sess_options: Any = None, providers: Any = None) -> None:
            print("*************** EP Error ***************")
            print(
                "EP Error /onnxruntime_src/onnxruntime/core/x.cc:729 void f(Options&, const P&) libcudnn.so.9: "
                "cannot open shared object file when using ['CUDAExecutionProvider']"
            )
            print("Falling back to ['CPUExecutionProvider'] and retrying.")
            super().__init__(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "InferenceSession", FallingBack)
    with pytest.raises(RuntimeLoadError, match=r"fell back to cpu\): libcudnn.so.9: cannot open shared object file;"):
        OrtRuntime(OrtOptions(providers=("cuda",))).load(tiny_package / "onnx/model.onnx")
    assert capsys.readouterr().out == ""
