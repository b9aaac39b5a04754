"""TorchScript: load a ``torch.jit`` artifact and run it on numpy feeds. Loading it runs code."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.eager import flatten_outputs
from toolchain.errors import InferenceError, RuntimeLoadError
from toolchain.signature import Signature

__all__ = ["TorchScriptRuntime", "TorchScriptSession"]


class TorchScriptSession:
    """A loaded TorchScript module that checks feeds and runs positionally in signature order.

    Args:
        module: the loaded ``torch.jit.ScriptModule``.
        path: the file it was loaded from, for messages.
        signature: input order and output names (a TorchScript file carries neither).
    """

    def __init__(self, module: Any, *, path: Path, signature: Signature) -> None:
        self._module = module
        self.path = path
        self.signature = signature

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check `feeds` against the signature, then run; outputs by the signature's names.

        Raises:
            FeedError: when `feeds` do not match the signature.
            InferenceError: when the module fails while running.
        """
        import torch

        self.signature.check_feeds(feeds)
        args = [torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self.signature.input_names]
        try:
            with torch.no_grad():
                result = self._module(*args)
        except Exception as e:
            raise InferenceError(f"{self.path}: TorchScript failed: {_first_line(e)}") from e
        return flatten_outputs(result, self.signature.output_names)


class TorchScriptRuntime:
    """Runs ``torchscript`` artifacts with ``torch.jit.load``; trusted files only."""

    name = "torchscript"
    formats: tuple[str, ...] = ("torchscript",)
    runs_code = True
    """Loading a TorchScript file executes code from it; the caller must check that it is trusted."""

    def available(self) -> bool:
        """True when torch imports."""
        try:
            import torch  # noqa: F401
        except ImportError:
            return False
        return True

    def load(self, path: Path, *, signature: Signature | None = None) -> TorchScriptSession:
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
            raise RuntimeLoadError(f"{path}: torch.jit.load could not load it: {_first_line(e)}") from e
        module.eval()
        return TorchScriptSession(module, path=path, signature=signature)


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:500]
