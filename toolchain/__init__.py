"""toolchain: export PyTorch models, prove parity with eager on every declared size, ship packages.

The public API is the core's (`toolchain.core`): the names here import neither torch nor onnxruntime.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolchain.core import *  # noqa: F403 - re-exports the core's public API
from toolchain.core import Dim, Tolerance
from toolchain.core import __all__ as _core_names

if TYPE_CHECKING:
    from toolchain.build.pipeline import ExportResult

__all__ = [*_core_names, "export"]
__version__ = "0.1.0"


def export(
    model: Any,
    *,
    inputs: Mapping[str, Any],
    out: Path | str,
    dims: Mapping[str, Dim] | None = None,
    outputs: Sequence[str] = ("output",),
    data: Iterable[Any] = (),
    name: str = "",
    tolerance: Tolerance | None = None,
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
        formats: export paths (default: every one); ``("auto",)`` for the best ONNX path only.
        precisions: ``"fp32"``, ``"fp16"``, ``"int8"`` variants.
        optimize: run the optimisation passes under the parity gate.
        force: replace an existing package at `out`.
        progress: receives one line per step.

    Returns:
        The `ExportResult`: truthy when a package was written; ``paths`` say why each path was kept or not.
    """
    from toolchain.build.instance import export_instance

    return export_instance(
        model,
        inputs=inputs,
        out=out,
        dims=dims,
        outputs=outputs,
        data=data,
        name=name,
        tolerance=tolerance,
        formats=formats,
        precisions=precisions,
        optimize=optimize,
        force=force,
        progress=progress,
    )
