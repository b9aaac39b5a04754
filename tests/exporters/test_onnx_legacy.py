from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from exporters.onnx_legacy import LegacyOnnxExporter
from runtimes.eager import EagerSession
from runtimes.ort import OrtRuntime
from tests.conftest import TINY
from tests.exporters.test_shapes import ShapeBranch
from toolchain.core.artifact import Artifact
from toolchain.core.errors import ExportError, InferenceError
from toolchain.core.parity import ParityReport, compare
from toolchain.core.samples import generate_samples
from toolchain.core.signature import Signature, TensorSig
from toolchain.core.spec import Dim, Input, ModelSpec


class ZerosOfBatch(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.zeros(x.size(0), 4)


class LoopOverBatch(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[i] * 2 for i in range(x.size(0))])


class Svd(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.svd(x)[1]


def _spec(factory: type[nn.Module]) -> ModelSpec:
    return ModelSpec(
        name=f"test.{factory.__name__.lower()}",
        factory=factory,
        inputs={"x": Input.normal(("batch", 4))},
        outputs=("y",),
        dims={"batch": Dim(example=3)},
    )


def _signature(width: int) -> Signature:
    return Signature(
        inputs=(TensorSig("x", "float32", ("batch", 4)),),
        outputs=(TensorSig("y", "float32", ("batch", width)),),
    )


def _export(spec: ModelSpec, workdir: Path) -> tuple[nn.Module, Artifact]:
    torch.manual_seed(0)
    model = spec.build().eval()
    return model, LegacyOnnxExporter().export(model, spec, generate_samples(spec)[0], workdir)


def _reports(spec: ModelSpec, model: nn.Module, path: Path, width: int) -> dict[str, ParityReport | str]:
    """Parity per sample against eager, or the InferenceError's message when ONNX Runtime fails."""
    eager = EagerSession(model, signature=_signature(width))
    session = OrtRuntime().load(path, signature=_signature(width))
    results: dict[str, ParityReport | str] = {}
    for sample in generate_samples(spec, seed=1):
        try:
            results[sample.name] = compare(eager.run(sample.feeds), session.run(sample.feeds), spec.tolerance)
        except InferenceError as e:
            results[sample.name] = str(e)
    return results


def test_batch_stays_symbolic_and_matches_eager(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    model, artifact = _export(TINY, tmp_path)
    captured = capfd.readouterr()
    assert captured.out + captured.err == ""
    assert (artifact.format, artifact.path, artifact.files) == (
        "onnx",
        "onnx_legacy/model.onnx",
        ("onnx_legacy/model.onnx",),
    )
    assert (artifact.exporter, artifact.opset) == ("torch.onnx.export(dynamo=False)", 17)
    # NOTE: the legacy exporter's own deprecation notice is recorded, nothing else is found.
    assert {f.kind for f in artifact.findings} == {"deprecation"}
    proto = onnx.load(str(tmp_path / artifact.path))
    (graph_input,) = proto.graph.input
    assert [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim] == ["batch", 4]
    assert [o.name for o in proto.graph.output] == ["y"]
    results = _reports(TINY, model, tmp_path / artifact.path, 2)
    assert list(results) == ["export", "batch-1", "batch-7", "values-wide", "values-shifted"]
    assert all(isinstance(r, ParityReport) and r for r in results.values()), results


def test_traced_size_in_zeros_stays_dynamic(tmp_path: Path) -> None:
    spec = _spec(ZerosOfBatch)
    model, artifact = _export(spec, tmp_path)
    assert not [f for f in artifact.findings if f.kind == "specialized-dim"]
    assert all(isinstance(r, ParityReport) and r for r in _reports(spec, model, tmp_path / artifact.path, 4).values())


def test_loop_over_batch_is_baked_in_and_caught_by_parity(tmp_path: Path) -> None:
    # The trace unrolls the loop three times with no TracerWarning, and the graph input keeps 'batch',
    # so there is no specialized-dim finding: only running at other sizes catches it.
    spec = _spec(LoopOverBatch)
    model, artifact = _export(spec, tmp_path)
    assert not [f for f in artifact.findings if f.kind == "specialized-dim"]
    proto = onnx.load(str(tmp_path / artifact.path))
    assert [d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim] == [3, 4]
    results = _reports(spec, model, tmp_path / artifact.path, 4)
    assert results["export"]
    batch_7 = results["batch-7"]
    assert isinstance(batch_7, ParityReport) and not batch_7
    assert "shape (3, 4) != expected (7, 4)" in batch_7.outputs[0].reason
    assert isinstance(results["batch-1"], str) and "Gather" in results["batch-1"]


def test_shape_branch_is_a_tracer_warning_and_a_parity_failure(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    spec = _spec(ShapeBranch)
    model, artifact = _export(spec, tmp_path)
    captured = capfd.readouterr()
    assert captured.out + captured.err == ""
    assert any(
        f.kind == "warning" and "TracerWarning" in f.message and "test_shapes.py" in f.source for f in artifact.findings
    )
    results = _reports(spec, model, tmp_path / artifact.path, 4)
    assert results["export"] and results["batch-7"]
    assert isinstance(results["batch-1"], ParityReport) and not results["batch-1"]


def test_unsupported_operator_is_an_export_error(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    pattern = r"test\.svd: torch\.onnx\.export\(dynamo=False\) failed: UnsupportedOperatorError: .*linalg_svd"
    with pytest.raises(ExportError, match=pattern):
        _export(_spec(Svd), tmp_path)
    captured = capfd.readouterr()
    assert captured.out + captured.err == ""


def test_every_file_in_the_folder_is_listed(tmp_path: Path) -> None:
    _, artifact = _export(TINY, tmp_path)
    listed = {p.relative_to(tmp_path).as_posix() for p in (tmp_path / "onnx_legacy").iterdir()}
    assert set(artifact.files) == listed
    assert np.all([(tmp_path / f).stat().st_size > 0 for f in artifact.files])
