from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from toolchain import Dim, Input, TaskCheck, Tolerance, exportable
from toolchain.build.pipeline import export_package
from toolchain.build.variants import variants_for
from toolchain.core.registry import Registry
from toolchain.core.spec import ModelSpec
from toolchain.package.verify import verify_package


class Energy(nn.Module):
    """Squares of large activations: beyond fp16's 65504 inside, normalised to (0, 1) on the way out."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x * 300.0) ** 2
        return s / s.sum(dim=-1, keepdim=True)


class Overflowing(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.energy = Energy()
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.energy(torch.relu(self.embed(x)) + 1.0))


def _spec(registry: Registry[ModelSpec], factory: type[nn.Module], name: str) -> ModelSpec:
    exportable(
        name=name,
        inputs={"x": Input.normal(("batch", 8))},
        outputs=["logits"],
        dims={"batch": Dim(example=4, max=32)},
        checks=[TaskCheck.top1("logits", min_agreement=0.9)],
        registry=registry,
    )(factory)
    return registry.get(name)


def test_fp16_overflow_is_repaired_by_keeping_exactly_that_layer_in_fp32(tmp_path: Path) -> None:
    spec = _spec(Registry("model"), Overflowing, "t.overflow")
    result = export_package(spec, tmp_path / "pkg", formats=["onnx"], precisions=["fp32", "fp16"])
    assert result, result.failed_stage
    fp16 = result.variant("fp16")
    assert fp16.status == "kept", fp16.reason
    assert fp16.repair is not None
    assert fp16.repair.kept_modules == ["energy"]
    import onnx

    proto = onnx.load(str(tmp_path / "pkg" / "onnx" / "model.onnx"))
    from toolchain.diagnose.localize import node_scopes

    energy_nodes = sorted(n.name for n in proto.graph.node if "energy" in node_scopes(n))
    assert energy_nodes
    assert fp16.repair.keep == energy_nodes
    manifest_keep = next(a for a in result.shipped if a.variant == "fp16").artifact
    assert manifest_keep is not None and list(manifest_keep.keep) == energy_nodes
    assert verify_package(tmp_path / "pkg")


def test_the_range_scan_finds_the_values_fp16_cannot_hold(tmp_path: Path) -> None:
    import onnx

    from toolchain.build.precision import FP16_MAX, _beyond_fp16
    from toolchain.core.samples import generate_samples

    spec = _spec(Registry("model"), Overflowing, "t.overflow")
    assert export_package(spec, tmp_path / "pkg", formats=["onnx"], optimize=False)
    proto = onnx.load(str(tmp_path / "pkg" / "onnx" / "model.onnx"))
    hot = _beyond_fp16(proto, [s.feeds for s in generate_samples(spec)])
    assert {n.op_type for n in proto.graph.node if n.name in hot} == {"Pow", "ReduceSum"}
    # NOTE: ONNX Runtime's CPU kernels compute fp16 ops in fp32, hiding this on CPU; an fp16 kernel
    # (CUDA, TensorRT) stores the square itself in fp16: 300**2 is already beyond its range.
    with np.errstate(over="ignore"):
        assert np.isinf(np.float16(300.0) ** 2) and FP16_MAX < (300.0**2)


def test_variant_artifacts_carry_their_own_gate_into_the_manifest(tmp_path: Path) -> None:
    import json

    class Small(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    spec = _spec(Registry("model"), Small, "t.small")
    result = export_package(spec, tmp_path / "pkg", formats=["onnx"], precisions=["fp16", "int8"])
    assert result
    manifest = json.loads((tmp_path / "pkg" / "manifest.json").read_text())
    by_variant = {a["variant"]: a for a in manifest["artifacts"]}
    assert {"fp32", "fp16"} <= set(by_variant)
    assert by_variant["fp16"]["tolerance"] == Tolerance(1e-2, 1e-2).to_dict()
    assert by_variant["fp16"]["checks"] == [{"kind": "top1", "output": "logits", "threshold": 0.9}]
    assert "tolerance" not in by_variant["fp32"]
    report = verify_package(tmp_path / "pkg")
    assert report and len(report.checks) == len(manifest["artifacts"])


def test_unknown_precision_is_refused_with_the_choices() -> None:
    from toolchain.core.errors import TargetError

    with pytest.raises(TargetError, match=r"unknown precision.*fp32, fp16, int8"):
        variants_for(["fp8"])
    assert variants_for(["fp32", "int8"]) == ("int8-dynamic", "int8-static")
