from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from torch import nn

from exporters._shapes import exported_program_findings
from exporters.onnx import _dynamic_shapes
from tests.conftest import TINY
from toolchain.core.samples import generate_samples
from toolchain.core.spec import Dim, Input, ModelSpec


class ShapeBranch(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 2:
            return x * 2
        return x


class HardCodedView(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(3, -1)


class Add(nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + y


def _spec(factory: Any, *, dims: dict[str, Dim] | None = None, **inputs: Input) -> ModelSpec:
    return ModelSpec(
        name=f"test.{factory.__name__.lower()}",
        factory=factory,
        inputs=inputs or {"x": Input.normal(("batch", 4))},
        outputs=("y",),
        dims=dims if dims is not None else {"batch": Dim(example=3)},
    )


def _capture(spec: ModelSpec, dynamic_shapes: Any) -> torch.export.ExportedProgram:
    torch.manual_seed(0)
    args = tuple(torch.from_numpy(a) for a in generate_samples(spec)[0].feeds.values())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.export.export(spec.build().eval(), args, dynamic_shapes=dynamic_shapes)


def _auto(spec: ModelSpec) -> tuple[dict[int, Any], ...]:
    return tuple(
        {i: torch.export.Dim.AUTO for i, d in enumerate(inp.shape) if isinstance(d, str)}
        for inp in spec.inputs.values()
    )


@pytest.mark.parametrize("hint", ["declared", "auto"])
def test_plain_model_has_no_findings(hint: str) -> None:
    # torch 2.13 reports [1, inf] for Dim(min=1) and [2, inf] for Dim.AUTO (0/1 specialisation).
    program = _capture(TINY, _dynamic_shapes(TINY) if hint == "declared" else _auto(TINY))
    assert exported_program_findings(program, TINY) == []


def test_shape_dependent_branch_is_a_narrowed_dim() -> None:
    # A declared Dim(min=1) makes torch.export refuse this model; Dim.AUTO captures it with range [3, inf].
    spec = _spec(ShapeBranch)
    (finding,) = exported_program_findings(_capture(spec, _auto(spec)), spec)
    assert finding.kind == "narrowed-dim"
    assert finding.message.startswith("dim 'batch' was declared [1, inf] but the export only holds for [3, inf]")


def test_declared_range_narrower_than_spec_is_a_narrowed_dim() -> None:
    spec = _spec(ShapeBranch, dims={"batch": Dim(example=3, max=8)})
    program = _capture(spec, ({0: torch.export.Dim("batch", min=3, max=5)},))
    (finding,) = exported_program_findings(program, spec)
    assert finding.kind == "narrowed-dim"
    assert "declared [1, 8] but the export only holds for [3, 5]" in finding.message


def test_hard_coded_view_is_a_specialized_dim() -> None:
    spec = _spec(HardCodedView)
    (finding,) = exported_program_findings(_capture(spec, _auto(spec)), spec)
    assert finding.kind == "specialized-dim"
    assert finding.message == "input 'x' axis 0 is declared 'batch' but the export fixed it to 3"


def test_distinct_dims_the_model_equates_are_unified() -> None:
    spec = _spec(
        Add,
        dims={"a": Dim(example=3), "b": Dim(example=3)},
        x=Input.normal(("a", 4)),
        y=Input.normal(("b", 4)),
    )
    (finding,) = exported_program_findings(_capture(spec, _auto(spec)), spec)
    assert finding.kind == "unified-dims"
    assert "['a', 'b'] are declared distinct" in finding.message
