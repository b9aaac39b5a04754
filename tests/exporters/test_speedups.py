"""The library speed-ups compute what the libraries compute: same files with and without them."""

from __future__ import annotations

import contextlib
from pathlib import Path

import onnx
import pytest
import torch

import exporters._speedups as speedups
from exporters.onnx import OnnxExporter
from exporters.onnx_legacy import LegacyOnnxExporter
from tests.conftest import TINY
from toolchain.core.samples import generate_samples
from toolchain.core.spec import SPECS


def _graph_bytes(proto: onnx.ModelProto) -> bytes:
    return proto.graph.SerializeToString(deterministic=True)


@pytest.fixture(scope="module")
def attention_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A legacy-exported attention encoder: Slice pairs (a several-output rule's start) and fusable attention."""
    import zoo  # noqa: F401  (registers the zoo)

    spec = SPECS.get("search.text_encoder")
    folder = tmp_path_factory.mktemp("attention")
    artifact = LegacyOnnxExporter().export(spec.build().eval(), spec, generate_samples(spec)[0], folder)
    return folder / artifact.path


def test_pattern_matching_gives_the_same_graphs_with_fewer_matcher_calls(
    attention_onnx: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnx_ir as ir
    import onnxscript.optimizer
    from onnxscript.rewriter import _matcher
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    calls: list[int] = []
    original = _matcher.SimplePatternMatcher.match

    def counted(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(_matcher.SimplePatternMatcher, "match", counted)

    def run() -> tuple[bytes, bytes, int]:
        calls.clear()
        optimized = onnxscript.optimizer.optimize(onnx.load(str(attention_onnx)))
        fused, _ = optimize_for_ort(ir.from_proto(optimized))
        return _graph_bytes(optimized), _graph_bytes(ir.to_proto(fused)), len(calls)

    plain_optimized, plain_fused, plain_calls = run()
    with speedups.fast_pattern_matching():
        assert _matcher.SimplePatternMatcher.match is not counted
        fast_optimized, fast_fused, fast_calls = run()
    assert _matcher.SimplePatternMatcher.match is counted
    assert (fast_optimized, fast_fused) == (plain_optimized, plain_fused)
    assert plain_fused != plain_optimized  # NOTE: the fusions did rewrite something, so the rules matched
    assert fast_calls < plain_calls / 3, (fast_calls, plain_calls)


def test_py_impl_is_the_same_code_without_building_annotations() -> None:
    from torch._ops import OperatorBase

    original = OperatorBase.__dict__["py_impl"]
    op = torch.ops.aten.relu.default
    key = torch._C.DispatchKey.CompositeExplicitAutograd
    assert key not in op.py_kernels
    with speedups._lazy_py_impl():
        lazy = OperatorBase.__dict__["py_impl"]
        assert lazy is not original
        assert lazy.__code__.co_filename == original.__code__.co_filename
        assert lazy.__code__.co_firstlineno == original.__code__.co_firstlineno
        with speedups._lazy_py_impl():  # NOTE: nested: the outer block's function stays
            assert OperatorBase.__dict__["py_impl"] is lazy

        def kernel(*args: object, **kwargs: object) -> object:
            raise AssertionError("never dispatched here")

        try:
            assert op.py_impl(key)(kernel) is kernel
            assert op.py_kernels[key] is kernel
            with pytest.raises(RuntimeError, match="Trying to override a python impl"):
                op.py_impl(key)(kernel)
        finally:
            op.py_kernels.pop(key, None)
            op._dispatch_cache.clear()
    assert OperatorBase.__dict__["py_impl"] is original


def test_a_function_without_source_keeps_its_own() -> None:
    namespace: dict[str, object] = {}
    exec("def made_up(x: int) -> int:\n    return x\n", namespace)
    assert speedups._with_postponed_annotations(namespace["made_up"]) is None  # type: ignore[arg-type]


def test_an_export_is_the_same_with_and_without_the_speedups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = TINY.build().eval()
    sample = generate_samples(TINY)[0]
    fast = OnnxExporter().export(model, TINY, sample, tmp_path / "fast")
    import exporters.onnx as onnx_exporter

    monkeypatch.setattr(onnx_exporter, "export_speedups", contextlib.nullcontext)
    plain = OnnxExporter().export(model, TINY, sample, tmp_path / "plain")
    assert (tmp_path / "fast" / fast.path).read_bytes() == (tmp_path / "plain" / plain.path).read_bytes()
