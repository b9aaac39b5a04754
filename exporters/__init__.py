"""Exporters, one module per export path, collected in `EXPORTERS`.

Each module imports torch and its exporter lazily, so importing this package stays cheap.
"""

from __future__ import annotations

from exporters.onnx import OnnxExporter
from toolchain.protocols import Exporter
from toolchain.registry import Registry

__all__ = ["EXPORTERS"]

EXPORTERS: Registry[Exporter] = Registry("exporter")
EXPORTERS.register("onnx", OnnxExporter())
