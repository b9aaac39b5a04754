"""One purpose-built model per hazard that silently breaks exports elsewhere.

For each model and each export path, the toolchain must either keep an artifact that really matches
eager at every declared size (re-checked here on fresh inputs it never saw) or reject the path with
a reason. No path may pass silently with wrong numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from runtimes import runtime_for
from runtimes.eager import EagerSession
from toolchain.build.pipeline import ALL_FORMATS, export_package
from toolchain.core.errors import SpecError
from toolchain.core.interface import input_signature, package_signature
from toolchain.core.parity import compare
from toolchain.core.registry import Registry
from toolchain.core.samples import generate_samples
from toolchain.core.spec import Dim, Input, ModelSpec, exportable

HAZARDS: Registry[ModelSpec] = Registry("hazard")
X = {"x": Input.normal(("batch", 4))}
DIMS = {"batch": Dim(example=3, max=16)}
POS, NEG = np.full((2, 4), 1.5, np.float32), np.full((2, 4), -1.5, np.float32)


@exportable(
    name="hazard.value_branch", inputs=X, dims=DIMS, samples={"pos": {"x": POS}, "neg": {"x": NEG}}, registry=HAZARDS
)
class ValueBranch(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x * 2
        return x - 1


@exportable(name="hazard.item_as_size", inputs=X, dims=DIMS, registry=HAZARDS)
class ItemAsSize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = int(x.abs().argmax(dim=1)[0].item()) + 1
        return x[:, :k] * 2


@exportable(
    name="hazard.hard_coded_view",
    inputs={"x": Input.normal(("batch", 8))},
    dims={"batch": Dim(example=4, min=2, max=16)},
    registry=HAZARDS,
)
class HardCodedView(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(4, -1) + 1


@exportable(name="hazard.loop_over_batch", inputs=X, dims=DIMS, registry=HAZARDS)
class LoopOverBatch(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = [x[i] * float(i + 1) for i in range(x.size(0))]
        return torch.stack(rows)


@exportable(name="hazard.train_mode", inputs=X, dims=DIMS, registry=HAZARDS)
class TrainMode(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.bn = nn.BatchNorm1d(4)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.bn(self.fc(x)))


@exportable(name="hazard.inplace_view", inputs=X, dims=DIMS, registry=HAZARDS)
class InplaceOnView(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        view = y[:, 1:3]
        view.index_put_((torch.tensor([0]),), torch.ones(1, 2))
        return y * 3


# What each path does with each hazard on torch 2.13 (kept = matched eager everywhere; rejected = refused).
EXPECTED_KEPT = {
    "hazard.value_branch": {"torchscript"},
    "hazard.item_as_size": {"onnx", "torchscript"},
    "hazard.hard_coded_view": {"onnx", "onnx_legacy", "torchscript", "torchscript_trace"},
    "hazard.loop_over_batch": {"torchscript"},
    "hazard.train_mode": set(ALL_FORMATS),
    "hazard.inplace_view": {"onnx", "torchscript", "torchscript_trace", "exported_program"},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", HAZARDS.names())
def test_no_path_passes_silently_with_wrong_numbers(name: str, tmp_path: Path) -> None:
    spec = HAZARDS.get(name)
    result = export_package(spec, tmp_path / "pkg")
    for path in result.paths:
        if path.status == "rejected":
            assert path.reason, path.exporter
            continue
        assert path.status == "kept"
        assert path.artifact is not None
        _recheck_on_unseen_inputs(spec, tmp_path / "pkg" / path.artifact.path, path.artifact.format)
    assert {p.exporter for p in result.kept} == EXPECTED_KEPT[name], [(p.exporter, p.reason) for p in result.paths]


def test_rejection_names_the_sample_and_the_likely_cause(tmp_path: Path) -> None:
    result = export_package(HAZARDS.get("hazard.loop_over_batch"), tmp_path / "pkg", formats=["onnx", "onnx_legacy"])
    onnx = result.path("onnx")
    assert "sample 'batch-1' (batch=1)" in onnx.reason
    assert "likely cause: [specialized-dim]" in onnx.reason
    report = (tmp_path / "pkg" / "report.md").read_text() if (tmp_path / "pkg").exists() else ""
    assert report == ""  # every path rejected: nothing written
    legacy = result.path("onnx_legacy")
    assert "sample 'batch-1'" in legacy.reason


def _recheck_on_unseen_inputs(spec: ModelSpec, artifact: Path, fmt: str) -> None:
    samples = generate_samples(spec, seed=12345)
    eager = EagerSession(spec.build().eval(), signature=input_signature(spec))
    expected = [eager.run(s.feeds) for s in samples]
    runtime = runtime_for(fmt)
    assert runtime is not None
    session = runtime.load(artifact, signature=package_signature(spec, samples, expected))
    for sample, exp in zip(samples, expected, strict=True):
        report = compare(exp, session.run(sample.feeds), spec.tolerance, sample=sample.name)
        assert report, f"{fmt} kept but wrong on inputs it never saw: {report}"


def test_train_mode_is_exported_in_eval_mode_and_said(tmp_path: Path) -> None:
    result = export_package(HAZARDS.get("hazard.train_mode"), tmp_path / "pkg", formats=["onnx"])
    assert result
    assert any(f.kind == "training-mode" and "drop" in f.message for f in result.findings)


def test_misspelled_dynamic_dim_is_refused_when_declared() -> None:
    with pytest.raises(SpecError, match="'bacth'"):
        exportable(name="hazard.typo", inputs=X, dims={"bacth": Dim()}, registry=HAZARDS)
