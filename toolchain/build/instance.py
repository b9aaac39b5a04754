"""Export a model *instance* with example inputs: what ``torch.onnx.export(model, args)`` takes.

`@exportable` declares a class or factory, so the toolchain can build fresh models; an instance is
copied instead (``copy.deepcopy``: the reference and every exporter get a copy as it was handed over,
and the instance itself is never run or changed).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from toolchain.build.pipeline import ExportResult, export_package
from toolchain.core.errors import SpecError
from toolchain.core.parity import Tolerance
from toolchain.core.registry import Registry
from toolchain.core.spec import Dim, Input, ModelSpec, exportable

__all__ = ["export_instance"]

_NOT_NAME = re.compile(r"[^A-Za-z0-9_.\-]+")


def export_instance(
    model: Any,
    *,
    inputs: Mapping[str, Any],
    out: Path | str,
    dims: Mapping[str, Dim] | None = None,
    outputs: Sequence[str] = ("output",),
    data: Iterable[Any] = (),
    name: str = "",
    tolerance: Tolerance | None = None,
    ignore_padded: Mapping[str, str] | None = None,
    formats: Sequence[str] = (),
    precisions: Sequence[str] = ("fp32",),
    optimize: bool = True,
    force: bool = False,
    progress: Callable[[str], None] = lambda message: None,
) -> ExportResult:
    """Export an ``nn.Module`` *instance* through every path, verify it against eager, package what passes.

    The instance is copied (the reference and every exporter get copies as it was handed over; the
    instance itself is never run or changed).

    Args:
        model: the module instance.
        inputs: input name -> an example tensor or array (its shape fixed, and itself a sample set
            ``data-0``), or a declaration as in `exportable` (`Input` or a shape tuple with symbolic
            dims); in ``forward``'s order.
        out: the package folder to write.
        dims: symbolic dim name -> `Dim`, for declared inputs.
        outputs: names of the model's outputs, in return order.
        data: real input batches, replayed as sample sets and shipped (see `exportable`).
        name: the package's model name (default: the class name, lower-cased).
        tolerance: allowed error against eager (default `Tolerance()`).
        ignore_padded: output -> padding-mask input whose padded positions are not compared (see `exportable`).
        formats: export paths (default: every one); ``("auto",)`` for the best ONNX path only.
        precisions: ``"fp32"``, ``"fp16"``, ``"int8"`` variants.
        optimize: run the optimisation passes under the parity gate.
        force: replace an existing package at `out`.
        progress: receives one line per step.

    Returns:
        The `ExportResult`: truthy when a package was written; ``paths`` say why each path was kept or not.
    """
    import torch

    if not isinstance(model, torch.nn.Module):
        raise SpecError(f"toolchain.export needs an nn.Module instance, got {type(model).__name__}")
    declared: dict[str, Input | tuple[int | str, ...]] = {}
    examples: dict[str, np.ndarray] = {}
    for key, value in inputs.items():
        if isinstance(value, Input | tuple):
            declared[key] = value
            continue
        array = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)
        declared[key] = _input_of(key, array)
        examples[key] = array
    if examples and len(examples) != len(inputs):
        raise SpecError(
            "toolchain.export: give every input as an example tensor, or declare every input (Input or a shape "
            "tuple) and pass examples as data=[...]"
        )
    batches = [examples, *data] if examples else list(data)
    registry: Registry[ModelSpec] = Registry("model")
    spec_name = name or _NOT_NAME.sub("_", type(model).__name__.lower())
    snapshot = copy.deepcopy(model)

    def build() -> Any:
        return copy.deepcopy(snapshot)

    build.__qualname__ = type(model).__qualname__
    build.__module__ = type(model).__module__
    build.__doc__ = type(model).__doc__
    exportable(
        name=spec_name,
        inputs=declared,
        outputs=outputs,
        dims=dims or {},
        tolerance=tolerance or Tolerance(),
        ignore_padded=ignore_padded or {},
        data=batches,
        registry=registry,
    )(build)
    spec = registry.get(spec_name)
    return export_package(
        spec, Path(out), formats=formats, precisions=precisions, optimize=optimize, force=force, progress=progress
    )


def _input_of(name: str, array: np.ndarray) -> Input:
    """The `Input` an example array stands for: its dtype, its shape fixed, values like it."""
    shape = tuple(int(n) for n in array.shape)
    if array.dtype == np.bool_:
        return Input.mask(shape)
    if array.dtype.kind in "iu":
        high = int(array.max()) + 1 if array.size else 1
        return Input.ids(
            shape, low=min(0, int(array.min()) if array.size else 0), high=max(high, 1), dtype=str(array.dtype)
        )
    if array.dtype.kind == "f":
        return Input.normal(shape, dtype=str(array.dtype))
    raise SpecError(f"toolchain.export: example input {name!r} has dtype {array.dtype}; use float, int or bool")
