"""Exporters, one module per export path, collected in `EXPORTERS` in the order paths are tried.

Each module imports torch and its exporter lazily, so importing this package stays cheap.
"""

from __future__ import annotations

from exporters.exported_program import ExportedProgramExporter
from exporters.onnx import OnnxExporter
from exporters.onnx_legacy import LegacyOnnxExporter
from exporters.torchscript import TorchScriptExporter
from toolchain.core.protocols import Exporter
from toolchain.core.registry import Registry

__all__ = ["EXPORTERS"]

EXPORTERS: Registry[Exporter] = Registry("exporter")
EXPORTERS.register("onnx", OnnxExporter())
EXPORTERS.register("onnx_legacy", LegacyOnnxExporter())
EXPORTERS.register("torchscript", TorchScriptExporter())
EXPORTERS.register("torchscript_trace", TorchScriptExporter(trace=True))
EXPORTERS.register("exported_program", ExportedProgramExporter())
