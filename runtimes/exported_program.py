"""``torch.export`` programs (``.pt2``) as a runtime: load with ``torch.export.load``, run its module."""

from __future__ import annotations

import logging
from pathlib import Path

from runtimes.eager import EagerSession, torch_available
from toolchain.core.errors import RuntimeLoadError, first_line
from toolchain.core.signature import Signature

__all__ = ["ExportedProgramRuntime", "ExportedProgramSession"]


ExportedProgramSession = EagerSession
"""Sessions over loaded modules are eager sessions whose errors name the file."""


class ExportedProgramRuntime:
    """Runs ``exported_program`` artifacts with ``torch.export.load``; loading runs code (trusted use only)."""

    name = "exported_program"
    formats: tuple[str, ...] = ("exported_program",)
    runs_code = True

    def available(self) -> bool:
        """True when torch imports."""
        return torch_available()

    def load(self, path: Path, *, signature: Signature | None = None) -> EagerSession:
        """Load the ``.pt2`` file at `path`.

        Args:
            path: the ``.pt2`` file.
            signature: the package signature; required, since a program keeps no input or output names.

        Raises:
            RuntimeLoadError: when the file is missing or unreadable, or no signature is given.
        """
        path = Path(path)
        if not path.is_file():
            raise RuntimeLoadError(f"{path}: no such exported program (.pt2) file")
        if signature is None:
            raise RuntimeLoadError(
                f"{path}: .pt2 sessions need the package signature for input and output names; pass signature="
            )
        import torch

        # NOTE: on a bad file torch.export.load logs each loader's traceback to stderr before raising;
        # the error it raises says enough, so keep the log quiet while loading.
        log = logging.getLogger("torch.export")
        level = log.level
        log.setLevel(logging.ERROR)
        try:
            module = torch.export.load(str(path)).module()
        except Exception as e:
            raise RuntimeLoadError(f"{path}: torch.export.load could not load it: {first_line(e)}") from e
        finally:
            log.setLevel(level)
        return EagerSession(module, signature=signature, source=f"{path}: exported program")
