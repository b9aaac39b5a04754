from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import toolchain
from runtimes.ort import OrtRuntime
from toolchain.core.errors import SpecError
from toolchain.core.spec import Dim


class Tagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.fc(x), -1)


def test_an_instance_exports_with_example_inputs_and_stays_untouched(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Tagger()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = toolchain.export(model, inputs={"x": torch.randn(5, 6)}, out=tmp_path / "pkg", formats=["onnx"])
    assert result, result.failed_stage
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [s.name for s in result.samples][-1] == "data-0"
    session = OrtRuntime().load(tmp_path / "pkg" / "onnx" / "model.onnx", signature=result.signature)
    x = np.random.default_rng(3).standard_normal((5, 6)).astype(np.float32)
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(session.run({"x": x})["output"], expected, rtol=1e-4, atol=1e-5)


def test_an_instance_with_declared_dims_exports_every_size_and_its_data(tmp_path: Path) -> None:
    data = [torch.randn(n, 6) for n in (2, 11)]
    result = toolchain.export(
        Tagger(),
        inputs={"x": ("batch", 6)},
        dims={"batch": Dim(example=4, max=16)},
        data=data,
        out=tmp_path / "pkg",
        formats=["onnx", "torchscript"],
    )
    assert result and {p.exporter for p in result.kept} == {"onnx", "torchscript"}
    assert {"batch-1", "batch-16", "data-0", "data-1"} <= {s.name for s in result.samples}
    report = (tmp_path / "pkg" / "report.md").read_text()
    assert "Real data: 2 batch(es)" in report


def test_exportable_on_an_instance_points_at_toolchain_export() -> None:
    with pytest.raises(SpecError, match=r"nn.Module instance \(Tagger\).*toolchain.export\(model"):
        toolchain.exportable(name="inst.tagger", inputs={"x": ("batch", 6)})(Tagger())
