from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from exporters.onnx import OnnxExporter
from tests.conftest import TINY
from toolchain.core.errors import ExportError
from toolchain.core.samples import generate_samples
from toolchain.core.spec import Dim, Input, ModelSpec


def _export(spec: ModelSpec, workdir: Path):
    model = spec.build().eval()
    return OnnxExporter().export(model, spec, generate_samples(spec)[0], workdir)


def test_symbolic_dims_stay_symbolic_in_the_graph(tmp_path: Path) -> None:
    artifact = _export(TINY, tmp_path)
    assert artifact.path == "onnx/model.onnx"
    assert artifact.files == ("onnx/model.onnx",)
    assert artifact.opset >= 18
    model = onnx.load(str(tmp_path / artifact.path))
    (graph_input,) = model.graph.input
    assert graph_input.name == "x"
    dims = graph_input.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch"
    assert dims[1].dim_value == 4
    assert [o.name for o in model.graph.output] == ["y"]
    assert not [f for f in artifact.findings if f.kind == "specialized-dim"]


class DataDependentBranch(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x * 2
        return x


def test_exporter_failure_is_an_export_error_with_the_reason(tmp_path: Path) -> None:
    spec = ModelSpec(
        name="test.bad",
        factory=DataDependentBranch,
        inputs={"x": Input.normal(("batch", 4))},
        dims={"batch": Dim(example=3)},
    )
    with pytest.raises(ExportError, match=r"test\.bad: torch\.onnx\.export\(dynamo=True\) failed: \w+"):
        _export(spec, tmp_path)


def test_export_noise_becomes_findings_not_output(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    class Warns(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            import warnings

            warnings.warn("user code says careful", UserWarning, stacklevel=1)
            return x + 1

    spec = ModelSpec(name="test.warns", factory=Warns, inputs={"x": Input.normal(("batch", 4))})
    artifact = _export(spec, tmp_path)
    captured = capfd.readouterr()
    assert "careful" not in captured.out + captured.err
    assert any(f.kind == "warning" and "careful" in f.message and "test_onnx.py" in f.source for f in artifact.findings)


def test_the_op_registry_is_built_once_and_custom_translations_stay_in_their_export(tmp_path: Path) -> None:
    from torch.onnx._internal.exporter import _registration

    import exporters._speedups as module

    builds = []
    original = _registration.ONNXRegistry.__dict__["from_torchlib"]

    def counting(cls: type, opset_version: int = 18) -> object:
        builds.append(opset_version)
        return original.__func__(cls, opset_version)

    module._REGISTRIES.clear()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_registration.ONNXRegistry, "from_torchlib", classmethod(counting))
        _export(TINY, tmp_path / "a")

        custom = OnnxExporter(custom_translation_table={torch.ops.aten.relu.default: lambda x: x})
        custom.export(TINY.build().eval(), TINY, generate_samples(TINY)[0], tmp_path / "b")
        _export(TINY, tmp_path / "c")
    assert len(builds) == 1
    base = next(iter(module._REGISTRIES.values()))
    assert all(not meta.is_custom for decomps in base.functions.values() for meta in decomps)
    assert _registration.ONNXRegistry.__dict__["from_torchlib"] is original


def test_the_cia_op_list_is_collected_once_per_op_set(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch._export import utils

    from exporters import _speedups as onnx_exporter

    calls: list[int] = []
    original = utils._collect_all_valid_cia_ops

    def counted() -> set:
        calls.append(1)
        return original()

    monkeypatch.setattr(utils, "_collect_all_valid_cia_ops", counted)
    monkeypatch.setattr(onnx_exporter, "_CIA_OPS", {})
    with onnx_exporter._cached_cia_ops():
        first = utils._collect_all_valid_cia_ops()
        assert utils._collect_all_valid_cia_ops() == first and len(calls) == 1
        library = torch.library.Library("toolchain_test_cia", "DEF")
        library.define("double(Tensor x) -> Tensor")
        library.impl("double", lambda x: x * 2, "CompositeImplicitAutograd")
        again = utils._collect_all_valid_cia_ops()
        assert len(calls) == 2
        assert any("toolchain_test_cia" in str(op) for op in again)
    assert utils._collect_all_valid_cia_ops is counted
