"""ONNX through the TorchScript-based exporter (``torch.onnx.export(dynamo=False)``)."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from exporters._capture import capture_findings, summarize_error
from exporters.onnx import specialized_dims
from toolchain.artifact import Artifact, Finding
from toolchain.errors import ExportError
from toolchain.samples import SampleSet
from toolchain.spec import ModelSpec

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
        with capture_findings() as findings, _native_output_into(findings):
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
        import onnx

        proto = onnx.load(str(target), load_external_data=False)
        opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
        files = sorted(p.relative_to(workdir).as_posix() for p in target.parent.iterdir() if p.is_file())
        return Artifact(
            format=self.format,
            path=rel,
            files=tuple(files),
            exporter="torch.onnx.export(dynamo=False)",
            opset=opset,
            export_seconds=seconds,
            findings=(*_without_own_notices(findings), *specialized_dims(proto, spec)),
        )


def _dynamic_axes(spec: ModelSpec) -> dict[str, dict[int, str]]:
    """Every input axis declared with a symbolic name.

    Outputs are left out: the spec names outputs but not their shapes. The exporter's shape inference
    then carries input symbols through where it can (``batch``) and names the rest itself
    (``Addy_dim_0``); ONNX Runtime accepts either, and parity at other sizes checks the values.
    """
    axes = {name: {i: d for i, d in enumerate(inp.shape) if isinstance(d, str)} for name, inp in spec.inputs.items()}
    return {name: a for name, a in axes.items() if a}


def _without_own_notices(findings: list[Finding]) -> list[Finding]:
    # NOTE: torch's "legacy TorchScript-based ONNX export" notice uses a stacklevel that points at our
    # call above, so capture_findings' library filter keeps it; it says nothing about the model.
    here = os.path.realpath(__file__)
    return [
        f
        for f in findings
        if not (
            f.message.startswith(("DeprecationWarning", "FutureWarning"))
            and os.path.realpath(f.source.rpartition(":")[0]) == here
        )
    ]


@contextlib.contextmanager
def _native_output_into(findings: list[Finding]) -> Iterator[None]:
    """Send what C++ code writes to file descriptors 1 and 2 into `findings` instead of the terminal.

    NOTE: torch's ``setup_onnx_logging`` tests the function ``_C._jit_is_onnx_log_enabled`` instead of
    calling it, so the TorchScript exporter's C++ log is always on and, when an export fails, prints
    the whole IR graph to stdout; ``capture_findings`` only swaps Python's streams. This swaps the
    process's descriptors, so other threads' native output is held too while the export runs.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [(fd, os.dup(fd)) for fd in (1, 2)]
    with tempfile.TemporaryFile() as sink:
        for fd, _ in saved:
            os.dup2(sink.fileno(), fd)
        try:
            yield
        finally:
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            text = sink.read().decode(errors="replace").strip()
            if text:
                findings.append(Finding("log", f"torch.onnx (native): {text.splitlines()[0][:400]}"))
