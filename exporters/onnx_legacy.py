"""ONNX through the TorchScript-based exporter (``torch.onnx.export(dynamo=False)``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from exporters._capture import capture_findings, summarize_error
from exporters.onnx import onnx_artifact
from toolchain.core.artifact import Artifact
from toolchain.core.errors import ExportError
from toolchain.core.samples import SampleSet
from toolchain.core.spec import ModelSpec

__all__ = ["LegacyOnnxExporter"]


class LegacyOnnxExporter:
    """Exports by tracing with ``torch.onnx.export(dynamo=False)``; symbolic dims become ``dynamic_axes``.

    Tracing records one run: Python control flow on sizes is frozen at the export size without a
    trace of it in the graph's inputs, so only parity at other sizes catches it.
    """

    name = "onnx_legacy"
    format = "onnx"

    def __init__(self, *, opset: int = 0) -> None:
        self.opset = opset  # NOTE: 0 means 17, the newest opset the TorchScript exporter is well tested on.

    def export(self, model: Any, spec: ModelSpec, sample: SampleSet, workdir: Path) -> Artifact:
        """Export `model` into ``workdir/onnx_legacy/model.onnx``.

        Raises:
            ExportError: when tracing or conversion fails, with torch's reason.
        """
        import torch

        rel = "onnx_legacy/model.onnx"
        target = Path(workdir) / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        args = tuple(torch.from_numpy(sample.feeds[n].copy()) for n in spec.inputs)
        start = time.perf_counter()
        with capture_findings() as findings:
            try:
                torch.onnx.export(
                    model,
                    args,
                    str(target),
                    dynamo=False,
                    input_names=list(spec.inputs),
                    output_names=list(spec.outputs),
                    dynamic_axes=_dynamic_axes(spec),
                    opset_version=self.opset or 17,
                )
            except Exception as e:
                raise ExportError(f"{spec.name}: torch.onnx.export(dynamo=False) failed: {summarize_error(e)}") from e
        seconds = time.perf_counter() - start
        return onnx_artifact(
            workdir, rel, spec, exporter="torch.onnx.export(dynamo=False)", seconds=seconds, findings=findings
        )


def _dynamic_axes(spec: ModelSpec) -> dict[str, dict[int, str]]:
    """Every input axis declared with a symbolic name.

    Outputs are left out: the spec names outputs but not their shapes. The exporter's shape inference
    then carries input symbols through where it can (``batch``) and names the rest itself
    (``Addy_dim_0``); ONNX Runtime accepts either, and parity at other sizes checks the values.
    """
    axes = {name: {i: d for i, d in enumerate(inp.shape) if isinstance(d, str)} for name, inp in spec.inputs.items()}
    return {name: a for name, a in axes.items() if a}
