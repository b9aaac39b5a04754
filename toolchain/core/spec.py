"""How to build a model and feed it: `ModelSpec` and `@exportable` (inputs and dims: `toolchain.core.inputs`)."""

from __future__ import annotations

import inspect
import itertools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, TypeVar

import numpy as np

from toolchain.core.checks import TaskCheck
from toolchain.core.errors import SpecError
from toolchain.core.inputs import DTYPES, IDENTIFIER, Dim, Input
from toolchain.core.parity import PaddedBy, Tolerance
from toolchain.core.registry import Registry

__all__ = [
    "DTYPES",
    "FORMATS",
    "PRECISIONS",
    "SPECS",
    "VARIANT_TOLERANCES",
    "Dim",
    "Input",
    "ModelSpec",
    "exportable",
    "spec_for",
]

FORMATS = ("onnx", "onnx_legacy", "torchscript", "torchscript_trace", "exported_program")
"""Every export path, in the order they are tried."""
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_NO_DIMS: Mapping[str, Dim] = MappingProxyType({})
_NO_SAMPLES: Mapping[str, Mapping[str, Any]] = MappingProxyType({})
_NO_TOLERANCES: Mapping[str, Tolerance] = MappingProxyType({})
_NO_PADDED: Mapping[str, str] = MappingProxyType({})

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class ModelSpec:
    """Everything the toolchain needs to build, feed and judge one model."""

    name: str
    factory: Callable[[], Any]
    inputs: Mapping[str, Input]
    outputs: tuple[str, ...] = ("output",)
    dims: Mapping[str, Dim] = field(default_factory=dict)
    tolerance: Tolerance = field(default_factory=Tolerance)
    tags: tuple[str, ...] = ()
    formats: tuple[str, ...] = FORMATS
    """The export paths that apply to this model; the model's docstring says why any is left out."""
    version: str = "1"
    seed: int = 0
    samples: Mapping[str, Mapping[str, np.ndarray]] = field(default_factory=dict)
    """Extra named sample sets (e.g. inputs that take another branch), checked like the generated ones."""
    checks: tuple[TaskCheck, ...] = ()
    """Task-level checks (top-1, cosine, ranking) that fp16 and int8 variants must pass too."""
    variant_tolerance: Mapping[str, Tolerance] = field(default_factory=dict)
    """Precision -> allowed error for that variant, over `VARIANT_TOLERANCES`."""
    data: tuple[Mapping[str, np.ndarray], ...] = ()
    """The user's real input batches (checked against the inputs), replayed as sample sets ``data-0``, ..."""
    allow_frozen_values: bool = False
    """Ship a trace that froze a tensor's value into a constant (a value branch) even when retracing on
    other inputs records another graph; off by default, since such a trace is right only for inputs
    that take the export sample's branch."""

    def tolerance_for(self, precision: str) -> Tolerance:
        """The element-wise tolerance of a precision variant (``"fp32"`` is the spec's own)."""
        if precision == "fp32":
            return self.tolerance
        own = self.variant_tolerance.get(precision, VARIANT_TOLERANCES[precision])
        # NOTE: positions declared not comparable (padding under an eager fast path) are so in every variant.
        return replace(own, ignore_padded=self.tolerance.ignore_padded) if self.tolerance.ignore_padded else own

    @property
    def source(self) -> str:
        """Where the model is defined, as ``module:qualname`` (``file.py:qualname`` for a file imported by path)."""
        from toolchain.core.target import module_label  # NOTE: target imports this module.

        return f"{module_label(getattr(self.factory, '__module__', '?'))}:{getattr(self.factory, '__qualname__', '?')}"

    @property
    def description(self) -> str:
        """First line of the factory's docstring."""
        doc = inspect.getdoc(self.factory) or ""
        return doc.splitlines()[0] if doc else ""

    def dim(self, name: str) -> Dim:
        """The declared (or default) `Dim` for a symbolic name."""
        return self.dims.get(name, Dim())

    def symbols(self) -> tuple[str, ...]:
        """Every symbolic dim used by the inputs, in order of first use."""
        return tuple(dict.fromkeys(s for inp in self.inputs.values() for s in inp.symbols))

    def build(self) -> Any:
        """Seed torch, call the factory and check the module's `forward` against the inputs.

        Returns the module as the factory made it (training mode untouched).
        """
        import torch

        torch.manual_seed(self.seed)
        model = self.factory()
        if not isinstance(model, torch.nn.Module):
            raise SpecError(
                f"{self.source} returned {type(model).__name__}, not a torch.nn.Module; "
                "decorate an nn.Module class or a function that returns one"
            )
        _check_forward(model.forward, list(self.inputs), where=self.source)
        return model


SPECS: Registry[ModelSpec] = Registry("model")

VARIANT_TOLERANCES: Mapping[str, Tolerance] = MappingProxyType(
    {"fp16": Tolerance(atol=1e-2, rtol=1e-2), "int8": Tolerance(atol=5e-2, rtol=1e-1)}
)
"""Default element-wise tolerances of precision variants, paired with the spec's task checks."""
PRECISIONS = ("fp32", *VARIANT_TOLERANCES)


def exportable(
    *,
    name: str,
    inputs: Mapping[str, Input | tuple[int | str, ...]],
    outputs: Sequence[str] = ("output",),
    dims: Mapping[str, Dim] = _NO_DIMS,
    tolerance: Tolerance = Tolerance(),  # noqa: B008 - frozen, shared safely
    tags: Iterable[str] = (),
    formats: Sequence[str] = FORMATS,
    version: str = "1",
    seed: int = 0,
    samples: Mapping[str, Mapping[str, Any]] = _NO_SAMPLES,
    checks: Iterable[TaskCheck] = (),
    variant_tolerance: Mapping[str, Tolerance] = _NO_TOLERANCES,
    data: Iterable[Any] = (),
    allow_frozen_values: bool = False,
    ignore_padded: Mapping[str, str] = _NO_PADDED,
    override: bool = False,
    registry: Registry[ModelSpec] = SPECS,
) -> Callable[[F], F]:
    """Declare how to export a model; register its `ModelSpec` and return the object unchanged.

    Apply to an `nn.Module` class whose constructor needs no arguments, or to a function with no
    required arguments that returns a module. Inputs are listed in `forward`'s argument order.

    Args:
        name: registry key, e.g. ``"feed.dlrm_small"``.
        inputs: input name -> `Input` (a bare shape tuple means standard-normal float32).
        outputs: names for the model's outputs, in return order.
        dims: symbolic dim name -> `Dim` (export size and range); undeclared symbols get `Dim()`.
        tolerance: allowed error against eager for fp32 artifacts.
        tags: free-form labels (``"ranking"``, ``"vision"``).
        formats: export paths that apply (default: all of `FORMATS`); explain any left out in the
            model's docstring.
        version: version written into the package manifest and folder name.
        seed: torch seed used before calling the factory, so random weights are reproducible.
        samples: extra named sample sets, name -> {input name: array}; use them for inputs the
            generated ones may miss (another branch, edge values). Every artifact must pass them too.
        checks: task-level checks (`TaskCheck.top1`, ``cosine``, ``ranking``) that fp16 and int8
            variants must pass beside their looser element-wise tolerance.
        variant_tolerance: precision (``"fp16"``, ``"int8"``) -> `Tolerance` for that variant,
            replacing the default in `VARIANT_TOLERANCES`.
        data: real input batches (an iterable or DataLoader of mappings name -> array or tensor, of
            tuples in ``forward``'s order, or of single arrays): the first `MAX_DATA_BATCHES` are checked
            against `inputs` now, then replayed on every artifact as sample sets ``data-0``, ... and
            shipped as golden samples. For a DataLoader of ``(inputs, labels)``: ``(x for x, _ in loader)``.
        allow_frozen_values: keep a traced artifact (``torchscript_trace``, legacy ONNX, a traced
            ``torchscript``) that turned a tensor's value into a Python constant although a new trace
            on other inputs records another graph. Off: such a path is rejected, naming the line. Turn
            it on only when every input the model will see takes the export sample's branch.
        ignore_padded: output name -> name of a `Input.padding_mask` input: that output is compared with
            eager only where the mask marks positions valid. Off by default; declare it only after an export
            named an eager fast path (``nn.TransformerEncoder`` returns 0 at padded positions, exported
            graphs do not) and your consumers never read padded positions. Recorded in the package.
        override: replace an existing registration of the same name.
        registry: where to register (tests pass their own).
    """
    spec_inputs = _check_inputs(inputs)
    out_names = _check_outputs(outputs, spec_inputs)
    _check_dims(dims, spec_inputs)
    extra = _check_samples(samples, spec_inputs)
    data_batches = _first_batches(data)
    if not isinstance(tolerance, Tolerance):
        raise SpecError(f"tolerance must be a toolchain.Tolerance, got {type(tolerance).__name__}")
    unknown = sorted(set(tolerance.per_output) - set(out_names))
    if unknown:
        raise SpecError(f"tolerance.per_output names unknown output(s) {unknown}; outputs are {list(out_names)}")
    tolerance = _with_padding_rule(tolerance, ignore_padded, spec_inputs, out_names)
    spec_checks = _check_task_checks(checks, variant_tolerance, out_names)
    unknown_formats = [f for f in formats if f not in FORMATS] if not isinstance(formats, str) else [formats]
    if unknown_formats or not formats:
        raise SpecError(f"formats must be a non-empty list drawn from {list(FORMATS)}, got {formats!r}")
    if not isinstance(name, str) or not _NAME.match(name):
        raise SpecError(f"name must be letters, digits, '_', '.', '-' (like 'feed.dlrm'), got {name!r}")

    def decorate(obj: F) -> F:
        if not inspect.isclass(obj) and hasattr(obj, "forward") and hasattr(obj, "state_dict"):
            raise SpecError(
                f"@exportable(name={name!r}) was applied to an nn.Module instance ({type(obj).__name__}), not a "
                "class or factory; decorate the class, or export the instance with "
                "toolchain.export(model, inputs=..., out=...)"
            )
        _check_factory(obj, list(spec_inputs))
        spec = ModelSpec(
            name=name,
            factory=obj,
            inputs=MappingProxyType(spec_inputs),
            outputs=out_names,
            dims=MappingProxyType(dict(dims)),
            tolerance=tolerance,
            tags=tuple(tags),
            formats=tuple(formats),
            version=str(version),
            seed=seed,
            samples=MappingProxyType(extra),
            checks=spec_checks,
            variant_tolerance=MappingProxyType(dict(variant_tolerance)),
            allow_frozen_values=bool(allow_frozen_values),
        )
        if data_batches:
            from toolchain.core.data import checked_data  # NOTE: here, since data.py builds on this module

            spec = replace(spec, data=checked_data(spec, data_batches))
        registry.register(name, spec, override=override)
        return obj

    return decorate


def _with_padding_rule(
    tolerance: Tolerance, ignore_padded: Mapping[str, str], inputs: Mapping[str, Input], outputs: Sequence[str]
) -> Tolerance:
    """`tolerance` with ``ignore_padded`` declared as output -> padding-mask input name, checked."""
    if not ignore_padded:
        return tolerance
    if not isinstance(ignore_padded, Mapping):
        raise SpecError(f"ignore_padded must map output names to mask input names, got {type(ignore_padded).__name__}")
    rules = {}
    for output, mask in ignore_padded.items():
        if output not in outputs:
            raise SpecError(f"ignore_padded names unknown output {output!r}; outputs are {list(outputs)}")
        declared = inputs.get(mask) if isinstance(mask, str) else None
        if declared is None or declared.domain != "padding_mask":
            raise SpecError(
                f"ignore_padded[{output!r}] must name an input declared with Input.padding_mask or "
                f"Input.key_padding_mask (so the padding value is known), got {mask!r}"
            )
        rules[output] = PaddedBy(mask, int(declared.pad or 0))
    return replace(tolerance, ignore_padded=MappingProxyType(rules))


def _first_batches(data: Iterable[Any]) -> list[Any]:
    from toolchain.core.data import MAX_DATA_BATCHES

    if isinstance(data, Mapping | np.ndarray) or hasattr(data, "detach"):
        return [data]  # one batch given on its own
    try:
        return list(itertools.islice(iter(data), MAX_DATA_BATCHES))
    except TypeError:
        raise SpecError(f"data must be an iterable of input batches, got {type(data).__name__}") from None


def spec_for(obj: object, *, registry: Registry[ModelSpec] = SPECS) -> ModelSpec | None:
    """The spec registered for a decorated class or factory, if any."""
    for key in registry:
        spec = registry.get(key)
        if spec.factory is obj:
            return spec
    return None


def _check_task_checks(
    checks: Iterable[TaskCheck], variant_tolerance: Mapping[str, Tolerance], out_names: tuple[str, ...]
) -> tuple[TaskCheck, ...]:
    found = tuple(checks)
    for check in found:
        if not isinstance(check, TaskCheck):
            raise SpecError(f"checks must hold toolchain.TaskCheck objects, got {type(check).__name__}")
        if check.output not in out_names:
            raise SpecError(
                f"check {check.kind!r} reads unknown output {check.output!r}; outputs are {list(out_names)}"
            )
    for precision, tol in variant_tolerance.items():
        if precision not in VARIANT_TOLERANCES:
            raise SpecError(f"variant_tolerance key {precision!r} is not one of {list(VARIANT_TOLERANCES)}")
        if not isinstance(tol, Tolerance):
            raise SpecError(f"variant_tolerance[{precision!r}] must be a toolchain.Tolerance")
    return found


def _check_inputs(inputs: Mapping[str, Input | tuple[int | str, ...]]) -> dict[str, Input]:
    if not isinstance(inputs, Mapping) or not inputs:
        raise SpecError("inputs must be a non-empty mapping like {'x': ('batch', 16)}")
    checked: dict[str, Input] = {}
    for key, value in inputs.items():
        if not isinstance(key, str) or not IDENTIFIER.match(key):
            raise SpecError(f"input name {key!r} must be a Python identifier matching forward's argument")
        if isinstance(value, tuple):
            value = Input.normal(value)
        if not isinstance(value, Input):
            raise SpecError(f"input {key!r} must be an Input or a shape tuple, got {type(value).__name__}")
        checked[key] = value
    return checked


def _check_outputs(outputs: Sequence[str], inputs: Mapping[str, Input]) -> tuple[str, ...]:
    if isinstance(outputs, str) or not outputs:
        raise SpecError(f"outputs must be a non-empty list of names like ['score'], got {outputs!r}")
    names = tuple(outputs)
    for out in names:
        if not isinstance(out, str) or not IDENTIFIER.match(out):
            raise SpecError(f"output name {out!r} must be an identifier (letters, digits, '_')")
        if out in inputs:
            raise SpecError(f"output name {out!r} is also an input name; rename one of them")
    if len(set(names)) != len(names):
        raise SpecError(f"output names must be distinct, got {list(names)}")
    return names


def _check_dims(dims: Mapping[str, Dim], inputs: Mapping[str, Input]) -> None:
    used = {s for inp in inputs.values() for s in inp.symbols}
    for key, dim in dims.items():
        if not isinstance(dim, Dim):
            raise SpecError(f"dims[{key!r}] must be a toolchain.Dim, got {type(dim).__name__}")
        if key not in used:
            raise SpecError(
                f"dims declares {key!r} but no input shape uses it (a misspelling?); "
                f"symbolic dims in the inputs: {sorted(used) or 'none'}"
            )


def _check_samples(samples: Mapping[str, Mapping[str, Any]], inputs: Mapping[str, Input]) -> dict[str, Any]:
    checked: dict[str, dict[str, np.ndarray]] = {}
    for name, feeds in samples.items():
        if not isinstance(name, str) or not _NAME.match(name) or name == "export":
            raise SpecError(f"sample set name {name!r} must be letters, digits, '_', '.', '-' and not 'export'")
        if not isinstance(feeds, Mapping) or set(feeds) != set(inputs):
            given = sorted(feeds) if isinstance(feeds, Mapping) else type(feeds).__name__
            raise SpecError(f"sample set {name!r} must give every input {sorted(inputs)}, got {given}")
        arrays = {}
        for key, inp in inputs.items():
            array = np.asarray(feeds[key], dtype=inp.dtype)
            fixed_ok = all(isinstance(d, str) or d == n for d, n in zip(inp.shape, array.shape, strict=False))
            if array.ndim != len(inp.shape) or not fixed_ok:
                raise SpecError(f"sample set {name!r}: input {key!r} has shape {array.shape}, declared {inp.shape}")
            arrays[key] = array
        checked[name] = arrays
    return checked


def _check_factory(obj: object, names: list[str]) -> None:
    if not callable(obj):
        raise SpecError(f"@exportable needs a class or function, got {type(obj).__name__}")
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        params = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        return
    if inspect.isclass(obj):
        params = params[1:]  # self
    required = [p.name for p in params if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if required:
        raise SpecError(
            f"{getattr(obj, '__qualname__', obj)} needs arguments {required} to build; give them defaults "
            "or decorate a no-argument factory function that builds the model"
        )
    if inspect.isclass(obj) and hasattr(obj, "forward"):
        _check_forward(obj.forward, names, where=obj.__qualname__, skip_self=True)


def _check_forward(forward: Callable[..., Any], names: list[str], *, where: str, skip_self: bool = False) -> None:
    """Check that `forward` takes the declared inputs positionally, in order."""
    try:
        params = list(inspect.signature(forward).parameters.values())
    except (TypeError, ValueError):
        return
    if skip_self:
        params = params[1:]
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if positional[: len(names)] != names:
        raise SpecError(
            f"{where}: forward takes {positional}, but inputs are declared as {names}; "
            "declare inputs with forward's argument names, in the same order"
        )
    extra = [p.name for p in params[len(names) :] if p.default is p.empty and p.kind != p.VAR_KEYWORD]
    if extra:
        raise SpecError(f"{where}: forward also requires {extra}, which no declared input feeds")
