"""What an exporter produced: `Artifact`, and the `Finding`s it noticed on the way."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from toolchain.core.checks import TaskCheck
from toolchain.core.parity import Tolerance

__all__ = ["Artifact", "Finding"]


@dataclass(frozen=True)
class Finding:
    """Something an exporter noticed that may explain a parity failure later.

    Args:
        kind: short key (``"warning"``, ``"specialized-dim"``, ``"training-mode"``).
        message: what was noticed, in one line.
        source: ``file:line`` it points at, when known.
    """

    kind: str
    message: str
    source: str = ""

    def to_dict(self) -> dict[str, str]:
        """JSON form."""
        return {"kind": self.kind, "message": self.message, "source": self.source}

    def __str__(self) -> str:
        where = f" ({self.source})" if self.source else ""
        return f"[{self.kind}] {self.message}{where}"


@dataclass(frozen=True)
class Artifact:
    """One exported file set, with paths relative to the folder it was exported into.

    Args:
        format: artifact format key (``"onnx"``).
        path: main file, relative (``"onnx/model.onnx"``).
        files: every file belonging to the artifact, relative (``path`` included).
        exporter: which exporter and mode made it.
        opset: ONNX opset, or 0 for non-ONNX formats.
        variant: precision variant (``"fp32"``).
        export_seconds: wall time of the export.
        findings: what the exporter noticed.
        passes: optimisation passes applied, in order.
        keep: for a precision variant, nodes left in fp32 (fp16 block list, int8 exclusion list).
        tolerance: for a precision variant, the tolerance its gate used (the package's otherwise).
        checks: for a precision variant, the task checks its gate used.
    """

    format: str
    path: str
    files: tuple[str, ...]
    exporter: str
    opset: int = 0
    variant: str = "fp32"
    export_seconds: float = 0.0
    findings: tuple[Finding, ...] = field(default_factory=tuple)
    passes: tuple[str, ...] = ()
    keep: tuple[str, ...] = ()
    tolerance: Tolerance | None = None
    checks: tuple[TaskCheck, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON form, as stored in the manifest."""
        return {
            "format": self.format,
            "path": self.path,
            "files": list(self.files),
            "exporter": self.exporter,
            "opset": self.opset,
            "variant": self.variant,
            "findings": [f.to_dict() for f in self.findings],
            "passes": list(self.passes),
            **({"keep": list(self.keep)} if self.keep else {}),
            **({"tolerance": self.tolerance.to_dict()} if self.tolerance else {}),
            **({"checks": [c.to_dict() for c in self.checks]} if self.checks else {}),
        }
