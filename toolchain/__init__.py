"""toolchain: export PyTorch models, prove parity with eager on every declared size, ship packages.

The names here import neither torch nor onnxruntime.
"""

from __future__ import annotations

from toolchain.checks import TaskCheck
from toolchain.errors import (
    ExportError,
    FeedError,
    GateError,
    InferenceError,
    PackageError,
    ParityError,
    RuntimeLoadError,
    SpecError,
    TargetError,
    ToolchainError,
)
from toolchain.parity import ParityReport, Tolerance, compare
from toolchain.spec import SPECS, Dim, Input, ModelSpec, exportable

__all__ = [
    "SPECS",
    "Dim",
    "ExportError",
    "FeedError",
    "GateError",
    "InferenceError",
    "Input",
    "ModelSpec",
    "PackageError",
    "ParityError",
    "ParityReport",
    "RuntimeLoadError",
    "SpecError",
    "TargetError",
    "TaskCheck",
    "Tolerance",
    "ToolchainError",
    "compare",
    "exportable",
]

__version__ = "0.1.0"
