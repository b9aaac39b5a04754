from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from toolchain.core.errors import SpecError, TargetError
from toolchain.core.parity import Tolerance
from toolchain.core.registry import Registry
from toolchain.core.spec import Dim, Input, ModelSpec, exportable, spec_for


class TwoIn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.lin(x) + y.sum()


INPUTS: dict[str, Any] = {"x": ("batch", 8), "y": Input.normal(("batch", 3))}


def _decorate(obj: Any = TwoIn, registry: Registry[ModelSpec] | None = None, **kwargs: Any) -> Any:
    kwargs.setdefault("name", "test.model")
    kwargs.setdefault("inputs", INPUTS)
    return exportable(registry=Registry("model") if registry is None else registry, **kwargs)(obj)


def test_decorating_class_registers_spec_and_returns_same_class() -> None:
    reg: Registry[ModelSpec] = Registry("model")
    result = _decorate(TwoIn, reg, name="test.two_in", outputs=["score"], tags=["demo"], version=2)
    assert result is TwoIn
    spec = reg.get("test.two_in")
    assert spec.factory is TwoIn
    assert list(spec.inputs) == ["x", "y"]
    assert spec.outputs == ("score",) and spec.tags == ("demo",) and spec.version == "2"
    assert spec_for(TwoIn, registry=reg) is spec


def test_decorating_factory_function_registers_spec_and_returns_same_function() -> None:
    reg: Registry[ModelSpec] = Registry("model")

    def make() -> nn.Module:
        return TwoIn()

    assert _decorate(make, reg, name="test.factory") is make
    spec = spec_for(make, registry=reg)
    assert spec is not None and spec.name == "test.factory" and spec.factory is make
    assert spec_for(TwoIn, registry=reg) is None


def test_bare_shape_tuple_becomes_normal_float32_input() -> None:
    reg: Registry[ModelSpec] = Registry("model")
    _decorate(TwoIn, reg)
    spec = reg.get("test.model")
    assert spec.inputs["x"] == Input(("batch", 8), "float32", "normal")
    assert spec.symbols() == ("batch",)


def test_duplicate_name_raises_unless_override() -> None:
    reg: Registry[ModelSpec] = Registry("model")
    _decorate(TwoIn, reg, name="dup")

    def other() -> nn.Module:
        return TwoIn()

    with pytest.raises(SpecError, match="already registered"):
        _decorate(other, reg, name="dup")
    assert reg.get("dup").factory is TwoIn
    _decorate(other, reg, name="dup", override=True)
    assert reg.get("dup").factory is other
    assert len(reg) == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"inputs": {}}, "non-empty"),
        ({"inputs": {"not-ident": (2,)}}, "identifier"),
        ({"inputs": {"x": [2, 3]}}, "must be an Input or a shape tuple"),
        ({"outputs": ["x"]}, "also an input name"),
        ({"outputs": ["a", "a"]}, "distinct"),
        ({"outputs": "score"}, "non-empty list"),
        ({"outputs": ["bad-name"]}, "identifier"),
        ({"dims": {"bacth": Dim()}}, "bacth"),
        ({"dims": {"batch": 4}}, "toolchain.Dim"),
        ({"tolerance": Tolerance(per_output={"nope": Tolerance()})}, "unknown output"),
        ({"tolerance": 1e-3}, "tolerance"),
        ({"name": "has space"}, "name must be"),
        ({"ignore_padded": {"nope": "y"}}, "unknown output 'nope'"),
        ({"ignore_padded": {"output": "y"}}, r"Input.padding_mask or Input.key_padding_mask .* got 'y'"),
        ({"ignore_padded": {"output": "missing"}}, "got 'missing'"),
        ({"ignore_padded": ["output"]}, "must map output names"),
    ],
)
def test_bad_declarations_raise_spec_error(kwargs: dict[str, Any], match: str) -> None:
    reg: Registry[ModelSpec] = Registry("model")
    with pytest.raises(SpecError, match=match):
        _decorate(TwoIn, reg, **kwargs)
    assert len(reg) == 0


@pytest.mark.parametrize("bad", [0, -1, 1.5, "not valid", True, None])
def test_bad_shape_entries_raise(bad: Any) -> None:
    with pytest.raises(SpecError, match="each dim must be"):
        _decorate(inputs={"x": ("batch", bad), "y": ("batch", 3)})


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Input((2,), dtype="float8"), "not supported"),
        (lambda: Input.ids((2,), high=10, dtype="float32"), "integer dtype"),
        (lambda: Input.ids((2,), low=5, high=5), "low < high"),
        (lambda: Input.uniform((2,), low=1.0, high=0.0), "low < high"),
        (lambda: Input.normal((2,), dtype="int64"), "float dtype"),
        (lambda: Input([2, 3]), "tuple"),  # type: ignore[arg-type]
        (lambda: Input.lengths(("batch",), over=""), "over='<the symbolic dim"),
        (lambda: Input.lengths(("batch",), over="seq", dtype="float32"), "integer dtype"),
    ],
)
def test_bad_inputs_raise(make: Any, match: str) -> None:
    with pytest.raises(SpecError, match=match):
        make()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"example": 1}, ">= 2"),
        ({"example": 4, "min": 5}, "Dim.min"),
        ({"example": 4, "min": 0}, "Dim.min"),
        ({"example": 4, "max": 3}, "Dim.max"),
    ],
)
def test_bad_dims_raise(kwargs: dict[str, int], match: str) -> None:
    with pytest.raises(SpecError, match=match):
        Dim(**kwargs)


class NeedsArg(TwoIn):
    def __init__(self, width: int) -> None:
        super().__init__()


class Swapped(nn.Module):
    def forward(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x + y


class Renamed(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class TooFew(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Extra(nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return x


@pytest.mark.parametrize(
    ("cls", "match"),
    [
        (NeedsArg, r"needs arguments \['width'\]"),
        (Swapped, r"forward takes \['y', 'x'\], but inputs are declared as \['x', 'y'\]"),
        (Renamed, r"forward takes \['a', 'b'\]"),
        (TooFew, r"forward takes \['x'\]"),
        (Extra, r"forward also requires \['z'\]"),
    ],
)
def test_class_that_cannot_be_built_or_fed_is_rejected_at_decoration(cls: type, match: str) -> None:
    with pytest.raises(SpecError, match=match):
        _decorate(cls)


def test_build_seeds_torch_so_weights_are_reproducible() -> None:
    reg: Registry[ModelSpec] = Registry("model")
    _decorate(TwoIn, reg, seed=123)
    spec = reg.get("test.model")
    torch.manual_seed(0)
    first = spec.build()
    torch.manual_seed(999)
    second = spec.build()
    assert isinstance(first, TwoIn) and first is not second
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: lambda x, y: x + y, r"returned function, not a torch\.nn\.Module"),
        (lambda: Renamed(), r"forward takes \['a', 'b'\]"),  # only known once the factory has run
    ],
)
def test_build_rejects_what_a_factory_returns(factory: Any, match: str) -> None:
    reg: Registry[ModelSpec] = Registry("model")
    assert _decorate(factory, reg) is factory
    with pytest.raises(SpecError, match=match):
        reg.get("test.model").build()


def test_registry_get_unknown_name_lists_known_names() -> None:
    reg: Registry[ModelSpec] = Registry("model")
    _decorate(TwoIn, reg, name="zoo.alpha")
    _decorate(TwoIn, reg, name="zoo.beta", override=True)
    with pytest.raises(TargetError, match=r"no model named 'zoo\.gamma'; known: zoo\.alpha, zoo\.beta"):
        reg.get("zoo.gamma")
    with pytest.raises(TargetError, match="known: none"):
        Registry("model").get("x")


@pytest.mark.parametrize(
    ("dim", "sizes"),
    [
        (Dim(), (4, 1, 9)),
        (Dim(example=4, min=2), (4, 2, 9)),
        (Dim(example=4, max=6), (4, 1, 6)),
        (Dim(example=4, max=4), (4, 1)),
        (Dim(example=4, min=4, max=4), (4,)),
    ],
)
def test_dim_sizes_export_first_then_min_then_larger_clamped(dim: Dim, sizes: tuple[int, ...]) -> None:
    assert dim.sizes() == sizes


def test_ignore_padded_is_kept_in_the_tolerance_of_every_precision_with_the_mask_convention() -> None:
    reg: Registry[ModelSpec] = Registry("model")
    inputs = {"x": ("batch", 8), "y": Input.key_padding_mask(("batch", 3))}
    _decorate(TwoIn, reg, inputs=inputs, ignore_padded={"output": "y"})
    spec = reg.get("test.model")
    for precision in ("fp32", "fp16", "int8"):
        rule = spec.tolerance_for(precision).ignore_padded["output"]
        assert (rule.input, rule.pad) == ("y", 1)
    assert Tolerance.from_dict(spec.tolerance.to_dict()) == spec.tolerance
