"""``torch.export`` programs (``.pt2``) as a runtime: load with ``torch.export.load``, run its module."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.eager import flatten_outputs
from toolchain.errors import InferenceError, RuntimeLoadError
from toolchain.signature import Signature

__all__ = ["ExportedProgramRuntime", "ExportedProgramSession"]


class ExportedProgramSession:
    """A loaded ``.pt2`` program that checks feeds before running.

    Args:
        path: the file it was loaded from, for messages.
        module: the program's callable module (``ExportedProgram.module()``).
        signature: input order and output names.
    """

    def __init__(self, path: Path, module: Any, *, signature: Signature) -> None:
        self.path = path
        self.signature = signature
        self._module = module

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check `feeds` against the signature, then run positionally; outputs by name.

        Raises:
            FeedError: when the feeds do not match the signature.
            InferenceError: when the program fails, including a size outside its range constraints.
        """
        import torch

        self.signature.check_feeds(feeds)
        args = [torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self.signature.input_names]
        try:
            with torch.no_grad():
                result = self._module(*args)
        except Exception as e:
            # NOTE: a size outside the program's range constraints fails its guards (an AssertionError).
            raise InferenceError(f"{self.path}: exported program failed: {_first_line(e)}") from e
        return flatten_outputs(result, self.signature.output_names)


class ExportedProgramRuntime:
    """Runs ``exported_program`` artifacts with ``torch.export.load``; loading runs code (trusted use only)."""

    name = "exported_program"
    formats: tuple[str, ...] = ("exported_program",)
    runs_code = True

    def available(self) -> bool:
        """True when torch imports."""
        try:
            import torch  # noqa: F401
        except ImportError:
            return False
        return True

    def load(self, path: Path, *, signature: Signature | None = None) -> ExportedProgramSession:
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
            raise RuntimeLoadError(f"{path}: torch.export.load could not load it: {_first_line(e)}") from e
        finally:
            log.setLevel(level)
        return ExportedProgramSession(path, module, signature=signature)


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return f"{type(error).__name__}: {text.splitlines()[0][:500]}"
