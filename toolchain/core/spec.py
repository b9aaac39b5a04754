"""How to build a model and feed it: `ModelSpec`, its inputs and dims, and `@exportable`."""

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

DTYPES = ("float32", "float16", "float64", "int64", "int32", "bool")
DOMAINS = ("normal", "uniform", "ids", "mask", "padding_mask", "offsets", "lengths")
FORMATS = ("onnx", "onnx_legacy", "torchscript", "torchscript_trace", "exported_program")
"""Every export path, in the order they are tried."""
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NO_DIMS: Mapping[str, Dim] = MappingProxyType({})
_NO_SAMPLES: Mapping[str, Mapping[str, Any]] = MappingProxyType({})
_NO_TOLERANCES: Mapping[str, Tolerance] = MappingProxyType({})
_NO_PADDED: Mapping[str, str] = MappingProxyType({})

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Dim:
    """A symbolic dimension: the size used for export and the range it must work on.

    Args:
        example: size used to capture the model; must be >= 2 (exporters specialise 0 and 1).
        min: smallest size the model must accept.
        max: largest size, or 0 for unbounded.
    """

    example: int = 4
    min: int = 1
    max: int = 0

    def __post_init__(self) -> None:
        if self.example < 2:
            raise SpecError(f"Dim.example must be >= 2 (exporters specialise 0 and 1), got {self.example}")
        if self.min < 1 or self.min > self.example:
            raise SpecError(f"Dim.min must be in [1, example={self.example}], got {self.min}")
        if self.max and self.max < self.example:
            raise SpecError(f"Dim.max must be 0 (unbounded) or >= example={self.example}, got {self.max}")

    def sizes(self) -> tuple[int, ...]:
        """Sizes to verify: the export size, the smallest, ``2 * example + 1`` and the largest declared."""
        larger = self.example * 2 + 1
        if self.max:
            larger = min(larger, self.max)
        return tuple(dict.fromkeys((self.example, self.min, larger, self.max or larger)))

    def to_dict(self) -> dict[str, int]:
        """JSON form."""
        return {"example": self.example, "min": self.min, "max": self.max}


@dataclass(frozen=True)
class Input:
    """One named model input: symbolic shape, dtype and the domain its values come from.

    Use the constructors: `Input.normal`, `Input.uniform`, `Input.ids`, `Input.mask`, `Input.padding_mask`,
    `Input.key_padding_mask`, `Input.offsets`, `Input.lengths`.
    """

    shape: tuple[int | str, ...]
    dtype: str = "float32"
    domain: str = "normal"
    low: float = 0.0
    high: float = 1.0
    over: str = ""
    """For ``offsets``: the symbolic dim of the flat index input the offsets point into; for ``lengths``:
    the symbolic dim the lengths count positions of (a length never exceeds its size)."""
    pad: int | None = None
    """The value that means padding: a padding id (``ids``), or the mask value at padded positions
    (``padding_mask``: 0 by default, 1 for PyTorch's ``key_padding_mask`` convention)."""
    side: str = "end"
    """For ``padding_mask``: where the padding sits in each row, ``"end"`` or ``"start"``."""
    min_valid: int = 1
    """For ``padding_mask`` and ``lengths``: the fewest valid (unpadded) positions a row has; 0 allows empty rows."""

    def __post_init__(self) -> None:
        if not isinstance(self.shape, tuple):
            raise SpecError(f"Input.shape must be a tuple like ('batch', 16), got {self.shape!r}")
        for d in self.shape:
            ok = (isinstance(d, int) and not isinstance(d, bool) and d >= 1) or (isinstance(d, str) and _IDENT.match(d))
            if not ok:
                raise SpecError(
                    f"shape {self.shape!r}: each dim must be an int >= 1 or a symbolic name like 'batch', got {d!r}"
                )
        if self.dtype not in DTYPES:
            raise SpecError(f"dtype {self.dtype!r} is not supported; use one of {', '.join(DTYPES)}")
        if self.domain not in DOMAINS:
            raise SpecError(f"domain {self.domain!r} is not supported; use one of {', '.join(DOMAINS)}")
        if self.domain in ("uniform", "ids") and not self.low < self.high:
            raise SpecError(f"{self.domain} input needs low < high, got low={self.low} high={self.high}")
        if self.domain == "ids" and not self.dtype.startswith("int"):
            raise SpecError(f"ids input needs an integer dtype (int64 or int32), got {self.dtype}")
        if self.domain in ("normal", "uniform") and not self.dtype.startswith("float"):
            raise SpecError(f"{self.domain} input needs a float dtype, got {self.dtype}; for ids use Input.ids")
        if self.domain == "offsets" and (len(self.shape) != 1 or not _IDENT.match(self.over)):
            raise SpecError("offsets input needs a 1-d shape like ('batch',) and over='<dim of the flat ids>'")
        if self.domain == "lengths" and (not _IDENT.match(self.over) or not self.dtype.startswith("int")):
            raise SpecError("lengths input needs over='<the symbolic dim it counts, like seq>' and an integer dtype")
        if self.domain == "padding_mask" and not self.shape:
            raise SpecError("padding_mask input needs at least one axis (the sequence is the last)")
        if self.side not in ("end", "start"):
            raise SpecError(f"padding side must be 'end' or 'start', got {self.side!r}")
        if self.domain == "padding_mask" and self.pad not in (None, 0, 1):
            raise SpecError(f"padding_mask pad must be 0 or 1 (the mask value at padded positions), got {self.pad!r}")
        if self.domain == "ids" and self.pad is not None and not self.low <= self.pad < self.high:
            raise SpecError(f"ids padding id {self.pad} must lie in [low={self.low:g}, high={self.high:g})")
        if not isinstance(self.min_valid, int) or self.min_valid < 0:
            raise SpecError(f"min_valid must be an int >= 0, got {self.min_valid!r}")

    @classmethod
    def normal(cls, shape: tuple[int | str, ...], *, dtype: str = "float32") -> Input:
        """Standard-normal floats."""
        return cls(shape, dtype, "normal")

    @classmethod
    def uniform(cls, shape: tuple[int | str, ...], *, low: float, high: float, dtype: str = "float32") -> Input:
        """Floats uniform in ``[low, high)``."""
        return cls(shape, dtype, "uniform", low, high)

    @classmethod
    def ids(
        cls,
        shape: tuple[int | str, ...],
        *,
        high: int,
        low: int = 0,
        padding_id: int | None = None,
        dtype: str = "int64",
    ) -> Input:
        """Integer ids (token or row indices) uniform in ``[low, high)``.

        Value draws include both ends and `padding_id` (an embedding's ``padding_idx``), when given.
        """
        return cls(shape, dtype, "ids", low, high, pad=padding_id)

    @classmethod
    def mask(cls, shape: tuple[int | str, ...], *, dtype: str = "bool") -> Input:
        """Arbitrary 0/1 values.

        Value draws add the structured rows real masks have (all valid, runs from either end). For padding
        masks declare `padding_mask`, whose rows never leave its convention.
        """
        return cls(shape, dtype, "mask", 0, 2)

    @classmethod
    def padding_mask(
        cls,
        shape: tuple[int | str, ...],
        *,
        pad: int = 0,
        side: str = "end",
        min_valid: int = 1,
        dtype: str = "bool",
    ) -> Input:
        """Padding masks over the last axis: each row holds a run of valid positions, then padding.

        Args:
            shape: the mask's shape; the sequence is the last axis.
            pad: the mask value at padded positions: 0 (1 marks valid tokens, as attention masks do) or 1
                (``True`` at padding: PyTorch's ``key_padding_mask``; see `key_padding_mask`).
            side: where the padding sits, ``"end"`` (right padding) or ``"start"`` (left padding).
            min_valid: the fewest valid positions in a row (0 allows fully padded rows).
            dtype: ``bool``, an integer or a float dtype.
        """
        return cls(shape, dtype, "padding_mask", 0, 2, pad=pad, side=side, min_valid=min_valid)

    @classmethod
    def key_padding_mask(cls, shape: tuple[int | str, ...], *, side: str = "end", min_valid: int = 1) -> Input:
        """PyTorch's ``key_padding_mask`` convention: bool, ``True`` at padded positions.

        As ``nn.MultiheadAttention`` and ``nn.TransformerEncoder`` take it.
        """
        return cls.padding_mask(shape, pad=1, side=side, min_valid=min_valid)

    @classmethod
    def offsets(cls, shape: tuple[int | str, ...], *, over: str, dtype: str = "int64") -> Input:
        """Start offsets of ragged bags in a flat id input of length `over` (sorted, first is 0)."""
        return cls(shape, dtype, "offsets", 0, 1, over)

    @classmethod
    def lengths(cls, shape: tuple[int | str, ...], *, over: str, min_valid: int = 1, dtype: str = "int64") -> Input:
        """Valid lengths of padded rows (``pack_padded_sequence``'s ``lengths``), in ``[min_valid, size of over]``.

        Value draws include full rows and rows of `min_valid` positions. Declare lengths this way rather
        than as ``ids``: a length beyond the sequence a sample set has is an input no model ever sees.
        """
        return cls(shape, dtype, "lengths", 0, 1, over, min_valid=min_valid)

    @property
    def symbols(self) -> tuple[str, ...]:
        """The symbolic dim names in this shape (and the dim an offsets input points into)."""
        own = tuple(d for d in self.shape if isinstance(d, str))
        return (*own, self.over) if self.over and self.over not in own else own

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "shape": list(self.shape),
            "dtype": self.dtype,
            "domain": self.domain,
            "low": self.low,
            "high": self.high,
            "over": self.over,
            "pad": self.pad,
            "side": self.side,
            "min_valid": self.min_valid,
        }


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
        if not isinstance(key, str) or not _IDENT.match(key):
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
        if not isinstance(out, str) or not _IDENT.match(out):
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
