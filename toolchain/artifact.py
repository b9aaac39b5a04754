"""What an exporter produced: `Artifact`, and the `Finding`s it noticed on the way."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
    """

    format: str
    path: str
    files: tuple[str, ...]
    exporter: str
    opset: int = 0
    variant: str = "fp32"
    export_seconds: float = 0.0
    findings: tuple[Finding, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """JSON form, as stored in the manifest."""
        return {
            "format": self.format,
            "path": self.path,
            "files": list(self.files),
            "exporter": self.exporter,
            "opset": self.opset,
            "variant": self.variant,
            "export_seconds": round(self.export_seconds, 3),
            "findings": [f.to_dict() for f in self.findings],
        }
