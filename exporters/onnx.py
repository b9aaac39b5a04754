"""ONNX through the torch.export-based exporter (``torch.onnx.export(dynamo=True)``)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from exporters._capture import capture_findings, summarize_error
from exporters._portable import portable_onnx
from exporters._shapes import exported_program_findings
from exporters._speedups import export_speedups
from toolchain.core.artifact import Artifact, Finding
from toolchain.core.errors import ExportError
from toolchain.core.samples import SampleSet
from toolchain.core.spec import ModelSpec

__all__ = ["OnnxExporter", "capture_program", "onnx_artifact", "specialized_dims"]

_NO_TABLE: Mapping[Any, Any] = MappingProxyType({})


class OnnxExporter:
    """Exports with ``torch.onnx.export(dynamo=True)``; symbolic dims become ``torch.export.Dim``s."""

    name = "onnx"
    format = "onnx"

    def __init__(
        self,
        *,
        opset: int = 0,
        custom_translation_table: Mapping[Any, Any] = _NO_TABLE,
        loop_free_embedding_bag: bool = True,
    ) -> None:
        """Configure the exporter.

        Args:
            opset: ONNX opset, 0 for the exporter's default.
            custom_translation_table: torch op -> onnxscript function, for custom ops (passed through);
                its entries win over the toolchain's own translations.
            loop_free_embedding_bag: translate ``aten.embedding_bag`` to Gather + reductions
                (`exporters._embedding_bag`) instead of torchlib's ``Loop`` over the bags.
        """
        self.opset = opset
        self.custom_translation_table = dict(custom_translation_table)
        self.loop_free_embedding_bag = loop_free_embedding_bag

    def export(self, model: Any, spec: ModelSpec, sample: SampleSet, workdir: Path, *, program: Any = None) -> Artifact:
        """Export `model` into ``workdir/onnx/model.onnx``.

        Args:
            model: the eager module, in eval mode.
            spec: its spec; symbolic dims are exported with their declared ranges.
            sample: inputs to capture on (the export sizes).
            workdir: folder the artifact is written under.
            program: a program `capture_program` already captured from `model`; translated as is, so one
                capture feeds both this path and the ``.pt2`` one.
        """
        import torch

        rel = "onnx/model.onnx"
        target = Path(workdir) / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        args = tuple(torch.from_numpy(sample.feeds[n].copy()) for n in spec.inputs)
        options: dict[str, Any] = {"opset_version": self.opset} if self.opset else {}
        table = self._translation_table()
        if table:
            options["custom_translation_table"] = table
        _clear_rnn_dispatch_caches()
        start = time.perf_counter()
        with capture_findings() as findings, export_speedups():
            try:
                onnx_program = torch.onnx.export(
                    model if program is None else program,
                    args if program is None else (),
                    dynamo=True,
                    input_names=list(spec.inputs),
                    output_names=list(spec.outputs),
                    dynamic_shapes=_dynamic_shapes(spec),
                    verbose=False,
                    **options,
                )
                assert onnx_program is not None
                onnx_program.save(str(target))
                ep = onnx_program.exported_program
                shape_findings = exported_program_findings(ep, spec) if ep is not None else []
            except Exception as e:
                raise ExportError(f"{spec.name}: torch.onnx.export(dynamo=True) failed: {summarize_error(e)}") from e
        seconds = time.perf_counter() - start
        return onnx_artifact(
            workdir,
            rel,
            spec,
            exporter="torch.onnx.export(dynamo=True)",
            seconds=seconds,
            findings=[*findings, *shape_findings],
        )

    def _translation_table(self) -> dict[Any, Any]:
        """The toolchain's own translations, overridden by the user's `custom_translation_table`."""
        # NOTE: the Loop-free form scatters with reduction="max", which needs opset 18.
        if not self.loop_free_embedding_bag or 0 < self.opset < 18:
            return dict(self.custom_translation_table)
        from exporters._embedding_bag import embedding_bag_table

        # NOTE: torchlib turns every EmbeddingBag into a Loop over its bags, which ONNX Runtime runs
        # bag by bag (0.37x eager on DLRM at batch 16); the Loop-free form is several times faster.
        return {**embedding_bag_table(), **self.custom_translation_table}


def capture_program(model: Any, spec: ModelSpec, sample: SampleSet) -> tuple[Any, list[Finding]]:
    """Capture `model` as a ``torch.export.ExportedProgram`` exactly as ``torch.onnx.export(dynamo=True)`` would.

    The exporter's own capture strategies, in its order (non-strict ``torch.export`` with its dynamic-shape
    patches, then strict), so the ONNX translated from the result is the one a direct export gives.
    Returns the program and what the capture warned or logged.

    Raises:
        ExportError: when every strategy fails, with the first one's reason.
    """
    import torch

    args = tuple(torch.from_numpy(sample.feeds[n].copy()) for n in spec.inputs)
    _clear_rnn_dispatch_caches()
    try:
        from torch.onnx._internal.exporter import _capture_strategies

        strategies = list(_capture_strategies.CAPTURE_STRATEGIES)
    except (ImportError, AttributeError):  # NOTE: private API; a torch without it captures plainly
        strategies = []
    first: Exception | None = None
    program = None
    with capture_findings() as findings, export_speedups():
        for strategy in strategies:
            result = strategy(verbose=False)(model, args, None, _dynamic_shapes(spec))
            program = result.exported_program
            if program is not None:
                break
            first = first or result.exception
        if not strategies:
            try:
                program = torch.export.export(model, args, dynamic_shapes=_dynamic_shapes(spec), strict=False)
            except Exception as e:
                first = e
    if program is not None:
        return program, findings
    raise ExportError(f"{spec.name}: torch.export.export failed: {summarize_error(first or RuntimeError('?'))}")


def onnx_artifact(
    workdir: Path, rel: str, spec: ModelSpec, *, exporter: str, seconds: float, findings: list[Finding]
) -> Artifact:
    """The `Artifact` for an ONNX file just saved at ``workdir/rel``, with its dims checked against `spec`."""
    import onnx

    target = Path(workdir) / rel
    portable_onnx(target)
    proto = onnx.load(str(target), load_external_data=False)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    files = sorted(p.relative_to(workdir).as_posix() for p in target.parent.iterdir() if p.is_file())
    return Artifact(
        format="onnx",
        path=rel,
        files=tuple(files),
        exporter=exporter,
        opset=opset,
        export_seconds=seconds,
        findings=(*findings, *specialized_dims(proto, spec)),
    )


def _clear_rnn_dispatch_caches() -> None:
    """Forget cached RNN kernels so this export sees the exporter's RNN decomposition afresh.

    NOTE: ``torch.onnx.export`` registers a while-loop decomposition for ``aten.lstm``/``aten.gru``
    without clearing their dispatch caches; from the second export in a process on, the cached
    kernel unrolls the sequence and fixes its length at the export size (torch 2.13).
    """
    import torch

    for op in (torch.ops.aten.lstm.input, torch.ops.aten.gru.input):
        cache = getattr(op, "_dispatch_cache", None)
        if cache is not None:
            cache.clear()


def _dynamic_shapes(spec: ModelSpec) -> tuple[dict[int, Any] | None, ...]:
    import torch

    dims = {}
    for sym in spec.symbols():
        d = spec.dim(sym)
        dims[sym] = torch.export.Dim(sym, min=d.min, max=d.max) if d.max else torch.export.Dim(sym, min=d.min)
    return tuple(
        {axis: dims[s] for axis, s in enumerate(inp.shape) if isinstance(s, str)} or None
        for inp in spec.inputs.values()
    )


def specialized_dims(proto: Any, spec: ModelSpec) -> list[Finding]:
    """Findings for every declared symbolic dim that the exported graph fixed to a number."""
    found = []
    graph_inputs = {i.name: i for i in proto.graph.input}
    for name, inp in spec.inputs.items():
        value_info = graph_inputs.get(name)
        if value_info is None:
            found.append(Finding("missing-input", f"input {name!r} is not an input of the exported graph"))
            continue
        dims = value_info.type.tensor_type.shape.dim
        for axis, (want, got) in enumerate(zip(inp.shape, dims, strict=False)):
            if isinstance(want, str) and got.HasField("dim_value"):
                found.append(
                    Finding(
                        "specialized-dim",
                        f"input {name!r} axis {axis} is declared {want!r} but the exported graph fixes it "
                        f"to {got.dim_value}",
                    )
                )
    return found
