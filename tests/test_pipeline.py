from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tests.conftest import TINY
from toolchain.pipeline import export_package
from toolchain.spec import Dim, Input, ModelSpec


class ShapeBranch(nn.Module):
    """Eager takes another branch at small batches; the exporter freezes the branch it saw."""

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
    result = export_package(_spec(ShapeBranch), tmp_path / "pkg")
    assert not result
    assert result.stage("export").status == "passed"
    assert result.stage("verify").status == "failed"
    assert "sample 'batch-1'" in result.stage("verify").detail
    failed = {r.sample for r in result.reports if not r}
    assert failed == {"batch-1"}
    assert not (tmp_path / "pkg").exists()


def test_model_that_cannot_run_at_a_declared_size_fails_in_reference(tmp_path: Path) -> None:
    result = export_package(_spec(ViewWithFixedBatch), tmp_path / "pkg")
    assert not result
    stage = result.stage("reference")
    assert stage.status == "failed"
    assert "sample 'batch-1' (batch=1), which the spec declares valid" in stage.detail
    assert result.stage("export").status == "not run"


def test_every_stage_is_recorded_and_timed(tmp_path: Path) -> None:
    result = export_package(TINY, tmp_path / "pkg", seed=3)
    assert result
    assert [s.status for s in result.stages] == ["passed"] * 5
    assert result.stage("export").seconds > 0
    assert [s.name for s in result.samples] == ["export", "batch-1", "batch-7"]
    assert any(f.kind == "training-mode" for f in result.findings)
    assert result.package == tmp_path / "pkg"
