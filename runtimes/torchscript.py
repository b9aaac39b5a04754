"""TorchScript: load a ``torch.jit`` artifact and run it on numpy feeds. Loading it runs code."""

from __future__ import annotations

import warnings
from pathlib import Path

from runtimes.eager import EagerSession, torch_available
from toolchain.core.errors import RuntimeLoadError, first_line
from toolchain.core.signature import Signature

__all__ = ["TorchScriptRuntime", "TorchScriptSession"]


TorchScriptSession = EagerSession
"""Sessions over loaded modules are eager sessions whose errors name the file."""


class TorchScriptRuntime:
    """Runs ``torchscript`` artifacts with ``torch.jit.load``; trusted files only."""

    name = "torchscript"
    formats: tuple[str, ...] = ("torchscript",)
    runs_code = True
    """Loading a TorchScript file executes code from it; the caller must check that it is trusted."""

    def available(self) -> bool:
        """True when torch imports."""
        return torch_available()

    def load(self, path: Path, *, signature: Signature | None = None) -> EagerSession:
        """Load the TorchScript file at `path` onto the CPU.

        Args:
            path: the ``.pt`` file written by ``torch.jit.save``.
            signature: input order and output names; required.

        Raises:
            RuntimeLoadError: when the file is missing or unreadable, or `signature` is not given.
        """
        path = Path(path)
        if not path.is_file():
            raise RuntimeLoadError(f"{path}: no such TorchScript file")
        if signature is None:
            raise RuntimeLoadError(
                f"{path}: a TorchScript file carries no input or output names; pass the package's signature"
            )
        import torch

        try:
            with warnings.catch_warnings():
                # NOTE: the caller chose this format on purpose; torch's deprecation notice is not theirs to fix.
                warnings.filterwarnings("ignore", r"`torch\.jit\.load` is deprecated", DeprecationWarning)
                # NOTE: torch.jit.load is unannotated in torch; the ignore is for strict mypy only.
                module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
        except Exception as e:
            raise RuntimeLoadError(f"{path}: torch.jit.load could not load it: {first_line(e)}") from e
        module.eval()
        return EagerSession(module, signature=signature, source=f"{path}: TorchScript")
