"""The small Protocols that exporters and runtimes implement."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from toolchain.core.artifact import Artifact
    from toolchain.core.samples import SampleSet
    from toolchain.core.signature import Signature
    from toolchain.core.spec import ModelSpec

__all__ = ["Exporter", "Runtime", "Session"]


class Exporter(Protocol):
    """Turns an eager module into an `Artifact` on disk."""

    name: str
    format: str

    def export(self, model: Any, spec: ModelSpec, sample: SampleSet, workdir: Path) -> Artifact:
        """Export `model` (in eval mode) captured on `sample` into `workdir`; raise `ExportError`."""
        ...


class Session(Protocol):
    """A loaded artifact, ready to run."""

    signature: Signature

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on named numpy inputs; return named numpy outputs."""
        ...


class Runtime(Protocol):
    """Loads artifacts of some formats into sessions."""

    name: str
    formats: tuple[str, ...]
    runs_code: bool
    """Loading executes code from the artifact (TorchScript, ``.pt2``): only for trusted packages."""

    def available(self) -> bool:
        """Whether this host can run it (its library imports)."""
        ...

    def load(self, path: Path, *, signature: Signature | None = None) -> Session:
        """Load the artifact at `path`; raise `RuntimeLoadError`."""
        ...
