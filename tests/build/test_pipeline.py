from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from tests.conftest import TINY
from toolchain.build.pipeline import ALL_FORMATS, export_package
from toolchain.core.errors import TargetError
from toolchain.core.spec import Dim, Input, ModelSpec


class ShapeBranch(nn.Module):
    """Eager takes another branch at small batches; exporters freeze the branch they saw."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 2:
            return x * 2
        return x


class ViewWithFixedBatch(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(3, -1)


def _spec(factory: type[nn.Module]) -> ModelSpec:
    return ModelSpec(
        name=f"test.{factory.__name__}",
        factory=factory,
        inputs={"x": Input.normal(("batch", 4))},
        dims={"batch": Dim(example=3)},
    )


def test_frozen_branch_is_caught_at_the_other_size_and_nothing_is_written(tmp_path: Path) -> None:
    result = export_package(_spec(ShapeBranch), tmp_path / "pkg", formats=["onnx", "exported_program"])
    assert not result
    assert result.stage("export").status == "failed"
    onnx = result.path("onnx")  # the ONNX exporter applies torch's suggested fix (batch >= 3) and goes on
    assert onnx.status == "rejected"
    assert "sample 'batch-1' (batch=1)" in onnx.reason
    assert "likely cause: [narrowed-dim] dim 'batch'" in onnx.reason
    assert {r.sample for r in onnx.reports if not r} == {"batch-1"}
    program = result.path("exported_program")  # torch.export itself refuses
    assert program.status == "rejected"
    assert "Constraints violated" in program.reason
    assert not (tmp_path / "pkg").exists()


def test_model_that_cannot_run_at_a_declared_size_fails_in_reference(tmp_path: Path) -> None:
    result = export_package(_spec(ViewWithFixedBatch), tmp_path / "pkg")
    assert not result
    stage = result.stage("reference")
    assert stage.status == "failed"
    assert "sample 'batch-1' (batch=1), which the spec declares valid" in stage.detail
    assert result.stage("export").status == "not run"
    assert result.paths == []


def test_every_stage_and_path_is_recorded_and_timed(tmp_path: Path) -> None:
    result = export_package(TINY, tmp_path / "pkg", seed=3)
    assert result
    assert [s.name for s in result.stages] == ["build", "reference", "export", "optimize", "precision", "package"]
    assert [s.status for s in result.stages] == ["passed"] * 6
    assert [p.exporter for p in result.kept] == list(ALL_FORMATS)
    assert all(p.export_seconds > 0 for p in result.paths)
    assert [s.name for s in result.samples] == ["export", "batch-1", "batch-7", "values-wide", "values-shifted"]
    assert any(f.kind == "training-mode" for f in result.findings)
    assert result.package == tmp_path / "pkg"


def test_auto_keeps_the_first_onnx_path_that_passes(tmp_path: Path) -> None:
    result = export_package(TINY, tmp_path / "pkg", formats=["auto"])
    assert [p.exporter for p in result.paths] == ["onnx"]
    assert (tmp_path / "pkg/onnx/model.onnx").is_file()
    assert not (tmp_path / "pkg/onnx_legacy").exists()


def test_unknown_format_is_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(TargetError, match="no exporter named 'onnxx'; known: exported_program, onnx"):
        export_package(TINY, tmp_path / "pkg", formats=["onnxx"])
