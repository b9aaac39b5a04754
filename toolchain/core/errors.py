"""The one exception family: every failure the toolchain can explain is a `ToolchainError`."""

from __future__ import annotations

__all__ = [
    "EvaluationError",
    "ExportError",
    "FeedError",
    "GateError",
    "HostError",
    "InferenceError",
    "LimitError",
    "PackageError",
    "ParityError",
    "RegistryError",
    "RuntimeLoadError",
    "SpecError",
    "TargetError",
    "ToolchainError",
    "first_line",
]


def first_line(error: BaseException) -> str:
    """``Type: first line of the message`` (at most 500 characters), for one-line error reports."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:500]}" if text else type(error).__name__


class ToolchainError(Exception):
    """Base of every error the toolchain raises on purpose; the CLI prints it as one line."""


class SpecError(ToolchainError):
    """A model declaration (`@exportable`, `ModelSpec`) is malformed."""


class TargetError(ToolchainError):
    """A TARGET given on the command line does not name a model the toolchain can build."""


class ExportError(ToolchainError):
    """An exporter could not produce an artifact."""


class RuntimeLoadError(ToolchainError):
    """A runtime could not load an artifact."""


class FeedError(ToolchainError):
    """Inputs given to a session do not match the model's signature."""


class InferenceError(ToolchainError):
    """A runtime failed while running a loaded model."""


class ParityError(ToolchainError):
    """An artifact does not compute the same function as the eager model."""


class PackageError(ToolchainError):
    """A package folder is missing, corrupted, or would be overwritten."""


class GateError(ToolchainError):
    """The parity gate cannot run: a baseline file is missing or malformed, or an executor is unavailable."""


class LimitError(PackageError):
    """An untrusted package's model went past the memory or time limit it is loaded and run under."""


class HostError(ToolchainError):
    """A verifier host (Node.js, a browser, C++) is missing what it needs or could not run."""


class RegistryError(ToolchainError):
    """The model registry refused an action (a promotion against its rules) or cannot find what was named."""


class EvaluationError(ToolchainError):
    """Labelled data given to `toolchain evaluate` is malformed, or no metric is declared that fits it."""
