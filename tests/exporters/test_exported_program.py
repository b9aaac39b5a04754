from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from exporters.exported_program import ExportedProgramExporter
from tests.conftest import TINY
from tests.exporters.test_shapes import HardCodedView, ShapeBranch
from toolchain.core.artifact import Artifact
from toolchain.core.errors import ExportError
from toolchain.core.samples import generate_samples
from toolchain.core.spec import Dim, Input, ModelSpec


def _spec(factory: type[nn.Module]) -> ModelSpec:
    return ModelSpec(
        name=f"test.{factory.__name__.lower()}",
        factory=factory,
        inputs={"x": Input.normal(("batch", 4))},
        outputs=("y",),
        dims={"batch": Dim(example=3)},
    )


def _export(spec: ModelSpec, workdir: Path, **options: object) -> Artifact:
    torch.manual_seed(0)
    model = spec.build().eval()
    return ExportedProgramExporter().export(model, spec, generate_samples(spec)[0], workdir, **options)


def test_plain_model_is_saved_without_findings(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    artifact = _export(TINY, tmp_path)
    captured = capfd.readouterr()
    assert captured.out + captured.err == ""
    assert (artifact.format, artifact.path, artifact.files) == (
        "exported_program",
        "exported_program/model.pt2",
        ("exported_program/model.pt2",),
    )
    assert artifact.exporter == "torch.export.export"
    assert artifact.opset == 0
    assert (tmp_path / artifact.path).is_file()
    assert artifact.findings == ()
    loaded = torch.export.load(str(tmp_path / artifact.path))
    assert list(loaded.graph_signature.user_inputs) == ["x"]


# torch 2.13 refuses both with a declared Dim(min=1): the branch "Not all values of batch ... satisfy the
# generated guard 3 <= ...", the view "You marked batch as dynamic but your code specialized it ...".
@pytest.mark.parametrize(
    ("factory", "reason"),
    [(ShapeBranch, r"Not all values of batch"), (HardCodedView, r"specialized it to be a constant \(3\)")],
)
def test_guard_on_a_declared_dim_is_an_export_error(tmp_path: Path, factory: type[nn.Module], reason: str) -> None:
    spec = _spec(factory)
    with pytest.raises(ExportError, match=rf"test\.\w+: torch\.export\.export failed: UserError .*{reason}"):
        _export(spec, tmp_path)


def test_given_program_is_saved_and_judged(tmp_path: Path) -> None:
    spec = _spec(ShapeBranch)
    args = (torch.from_numpy(generate_samples(spec)[0].feeds["x"]),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(ShapeBranch(), args, dynamic_shapes=({0: torch.export.Dim.AUTO},))
    artifact = _export(spec, tmp_path, program=program)
    assert (tmp_path / artifact.path).is_file()
    assert [f.kind for f in artifact.findings] == ["narrowed-dim"]
    assert "export only holds for [3, inf]" in artifact.findings[0].message


def test_export_noise_becomes_findings_not_output(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    class Warns(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            warnings.warn("user code says careful", UserWarning, stacklevel=1)
            return x + 1

    artifact = _export(_spec(Warns), tmp_path)
    captured = capfd.readouterr()
    assert "careful" not in captured.out + captured.err
    assert any(
        f.kind == "warning" and "careful" in f.message and "test_exported_program.py" in f.source
        for f in artifact.findings
    )
