"""What a model is and what "the same function" means: specs, samples, signatures, parity; imports no plugin."""

from __future__ import annotations

from toolchain.core.checks import TaskCheck
from toolchain.core.errors import (
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
from toolchain.core.parity import ParityReport, Tolerance, compare
from toolchain.core.spec import SPECS, Dim, Input, ModelSpec, exportable

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
