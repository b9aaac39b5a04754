from __future__ import annotations

import inspect
from pathlib import Path

import onnx
import pytest
import torch
from onnx import numpy_helper
from onnxscript import opset18 as op
from torch import nn

import zoo
from exporters import EXPORTERS
from exporters.onnx import OnnxExporter
from toolchain.build.pipeline import export_package
from toolchain.core.portable import portable_path
from toolchain.core.samples import generate_samples
from toolchain.core.spec import SPECS, Dim, Input, ModelSpec
from toolchain.diagnose.localize import localize


@torch.library.custom_op("toolchain_test::shift", mutates_args=())
def shift(x: torch.Tensor) -> torch.Tensor:
    return x + 1.0


@shift.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


def wrong_shift(x):  # a translation that computes a slightly different function
    return op.Add(x, op.CastLike(op.Constant(value_float=1.01), x))


class Block(nn.Module):
    def __init__(self, custom: bool) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.custom = custom

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.fc(x))
        if self.custom:
            y = shift(y)  # the call localisation must point at
        return y


class Deep(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(custom=i == 2) for i in range(5))
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


DEEP = ModelSpec(name="test.deep", factory=Deep, inputs={"x": Input.normal(("batch", 8))}, dims={"batch": Dim()})
CALL_LINE = next(i for i, line in enumerate(inspect.getsource(Block).splitlines()) if "shift(y)" in line)


def test_wrong_custom_translation_is_pinned_to_the_block_and_the_call_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    faulty = OnnxExporter(custom_translation_table={torch.ops.toolchain_test.shift.default: wrong_shift})
    monkeypatch.setitem(EXPORTERS._entries, "onnx", faulty)
    result = export_package(DEEP, tmp_path / "pkg", formats=["onnx"])
    path = result.path("onnx")
    assert path.status == "rejected"
    finding = path.localization
    assert finding is not None
    assert finding.module == "blocks.2"
    assert finding.module_class.endswith("Block")
    assert finding.inputs_agree
    file, line = finding.source.rsplit(":", 1)
    # NOTE: the graph's stack traces name files as the package ships them: relative, without this host's folders.
    assert file in (__file__, portable_path(__file__))
    assert int(line) == inspect.getsourcelines(Block)[1] + CALL_LINE
    assert "first divergence at module `blocks.2`" in path.reason


@pytest.mark.parametrize("artifact", ["onnx/model.onnx", "onnx_legacy/model.onnx"])
def test_scaled_initializer_of_a_zoo_model_names_its_module(dlrm_package: Path, tmp_path: Path, artifact: str) -> None:
    spec = SPECS.get("feed.dlrm_small")
    model = onnx.load(str(dlrm_package / artifact))
    state = spec.build().state_dict()
    target = state["bottom.2.weight"].numpy()
    init = next(i for i in model.graph.initializer if numpy_helper.to_array(i).shape == target.shape)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.02, init.name))
    faulty = tmp_path / "model.onnx"
    onnx.save(model, str(faulty))
    sample = generate_samples(spec)[0]
    finding = localize(spec, spec.build().eval(), faulty, sample, tolerance=spec.tolerance)
    assert finding is not None
    assert finding.module == "bottom.2"
    assert finding.inputs_agree
    feed = str(Path(zoo.__file__).parent / "feed.py")
    assert finding.source.rsplit(":", 1)[0] in (feed, portable_path(feed))
    assert (dlrm_package / artifact).read_bytes() != faulty.read_bytes()  # the package was not touched


def test_faithful_artifact_has_nothing_to_localize(dlrm_package: Path) -> None:
    spec = SPECS.get("feed.dlrm_small")
    sample = generate_samples(spec)[1]
    assert (
        localize(spec, spec.build().eval(), dlrm_package / "onnx/model.onnx", sample, tolerance=spec.tolerance) is None
    )


def test_diagnose_command_prints_the_culprit(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from toolchain.cli import app

    faulty = OnnxExporter(custom_translation_table={torch.ops.toolchain_test.shift.default: wrong_shift})
    monkeypatch.setitem(EXPORTERS._entries, "onnx", faulty)
    result = CliRunner().invoke(app, ["diagnose", "tests.diagnose.test_localize:DEEP", "--sample", "batch-1"])
    assert result.exit_code == 1, result.output
    assert "first divergence at module `blocks.2` (tests.diagnose.test_localize.Block" in result.output
    assert "on sample 'batch-1'" in result.output
    assert f"test_localize.py:{inspect.getsourcelines(Block)[1] + CALL_LINE}" in result.output


def test_diagnose_refuses_non_onnx_paths() -> None:
    from toolchain.core.errors import TargetError
    from toolchain.diagnose.diagnosis import diagnose

    with pytest.raises(TargetError, match="ONNX paths"):
        diagnose(DEEP, exporter="torchscript")


class Overflows(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(16, 16)
        self.c = nn.Linear(16, 4)
        with torch.no_grad():
            self.b.weight.mul_(2e5)  # activations beyond fp16's 65504 here, and only here

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.b(torch.relu(self.a(x)))
        return self.c(torch.tanh(h / 1e6))


def test_fp16_overflow_names_the_layer(tmp_path: Path) -> None:
    import warnings

    from onnxconverter_common import float16

    from toolchain.core.parity import Tolerance

    spec = ModelSpec(name="test.overflows", factory=Overflows, inputs={"x": Input.normal(("batch", 8))})
    model = spec.build().eval()
    sample = generate_samples(spec)[0]
    artifact = OnnxExporter().export(model, spec, sample, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the converter warns about every constant it truncates
        half = float16.convert_float_to_float16(onnx.load(str(tmp_path / artifact.path)), keep_io_types=True)
    onnx.save(half, str(tmp_path / "model.fp16.onnx"))
    fp16 = Tolerance(atol=1e-2, rtol=1e-2)  # NOTE: the looser tolerance an fp16 variant is judged by
    finding = localize(spec, model, tmp_path / "model.fp16.onnx", sample, tolerance=fp16)
    assert finding is not None
    assert finding.module == "b"
    assert finding.inputs_agree
    assert finding.output_error > 1e4  # the overflowed values
