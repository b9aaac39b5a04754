from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from toolchain.build.converters import _check_kept, fp16, int8_dynamic, int8_static, quantiser_names
from toolchain.core.errors import ExportError


def _two_layer_model(path: Path, *, head_outlier: float, scale: float = 1.0) -> Path:
    """``y = head(relu(embed(x))) * scale``; one huge weight in `head` ruins per-tensor int8 of it."""
    import onnx
    from onnx import numpy_helper

    mul = "[scale] y = Mul(z, s)" if scale != 1.0 else "[scale] y = Identity(z)"
    model = onnx.parser.parse_model(f"""<ir_version: 8, opset_import: ["" : 17]>
        g (float[N, 8] x) => (float[N, 4] y) {{
            [embed] h = Gemm <transB = 1> (x, w1, b1)
            [relu] r = Relu(h)
            [head] z = Gemm <transB = 1> (r, w2, b2)
            {mul}
        }}""")
    rng = np.random.default_rng(0)
    w1 = rng.normal(0.0, 0.3, (16, 8)).astype(np.float32)
    b1 = np.full(16, 3.0, np.float32)  # NOTE: relu stays active, so int8 error in `embed` stays relative.
    w1[15], b1[15] = 0.0, 0.0  # NOTE: r[15] == 0, so the outlier below sets head's int8 scale, not its value.
    w2 = rng.normal(0.0, 0.1, (4, 16)).astype(np.float32)
    w2[0, 15] = head_outlier
    b2 = np.zeros(4, np.float32)
    values = {"w1": w1, "b1": b1, "w2": w2, "b2": b2} | ({"s": np.array(scale, np.float32)} if scale != 1.0 else {})
    model.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in values.items())
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _samples() -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return {name: {"x": rng.normal(size=(16, 8)).astype(np.float32)} for name in ("a", "b")}


def _run(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, feeds)[0])


def test_the_quantisers_gemm_rewrite_is_caught_when_exclusion_names_the_gemm(tmp_path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src = _two_layer_model(tmp_path / "model.onnx", head_outlier=50.0)
    dst = tmp_path / "q.onnx"
    quantize_dynamic(src, dst, weight_type=QuantType.QInt8, nodes_to_exclude=["head"])
    with pytest.raises(ExportError, match=r"quantised node `head` \(Gemm\) although asked to leave it in fp32"):
        _check_kept(onnx.load(str(src)), onnx.load(str(dst)), frozenset({"head"}))


def test_quantiser_names_add_the_names_of_a_rewritten_gemm(tmp_path: Path) -> None:
    proto = onnx.load(str(_two_layer_model(tmp_path / "model.onnx", head_outlier=1.0)))
    assert quantiser_names(proto, frozenset({"head", "relu"})) == [
        "head",
        "head_Add",
        "head_MatMul",
        "head_Transpose",
        "relu",
    ]


@pytest.mark.parametrize("build", [int8_dynamic, int8_static], ids=["dynamic", "static"])
def test_excluded_nodes_stay_fp32_and_the_others_are_quantised(tmp_path: Path, build: Callable[..., None]) -> None:
    src = _two_layer_model(tmp_path / "model.onnx", head_outlier=50.0)
    dst = tmp_path / "q.onnx"
    feeds = list(_samples().values())
    build(src, dst, frozenset({"head", "relu"}), feeds)
    quantised = onnx.load(str(dst))
    _check_kept(onnx.load(str(src)), quantised, frozenset({"head", "relu"}))
    with pytest.raises(ExportError, match=r"node `embed` \(Gemm\)"):
        _check_kept(onnx.load(str(src)), quantised, frozenset({"embed"}))
    expected = _run(src, feeds[0])
    np.testing.assert_allclose(_run(dst, feeds[0]), expected, rtol=0.1, atol=0.1)


def test_fp16_keeps_a_blocked_graph_output_in_fp32_and_writes_a_valid_sorted_graph(tmp_path: Path) -> None:
    src = _two_layer_model(tmp_path / "model.onnx", head_outlier=1.0, scale=1e5)
    dst = tmp_path / "model.fp16.onnx"
    fp16(src, dst, frozenset({"scale"}), [])
    model = onnx.load(str(dst))
    onnx.checker.check_model(model)
    assert [o.name for o in model.graph.output] == ["y"]
    assert next(n for n in model.graph.node if n.name == "scale").output[0] == "y"
    feeds = _samples()["a"]
    expected = _run(src, feeds)
    assert np.abs(expected).max() > 65504
    np.testing.assert_allclose(_run(dst, feeds), expected, rtol=1e-2, atol=1e-2 * float(np.abs(expected).max()))
