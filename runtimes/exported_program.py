"""``torch.export`` programs (``.pt2``) as a runtime: load with ``torch.export.load``, run its module."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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
            with _parsed_once():
                module = torch.export.load(str(path)).module()
        except Exception as e:
            raise RuntimeLoadError(f"{path}: torch.export.load could not load it: {first_line(e)}") from e
        finally:
            log.setLevel(level)
        return EagerSession(module, signature=signature, source=f"{path}: exported program")


@contextmanager
def _parsed_once() -> Iterator[None]:
    """While open, ``torch.export.load`` parses each distinct symbolic expression of a program once.

    NOTE: the deserializer parses every size and stride expression of every tensor (``s77*4096``) with
    sympy and then prints each sub-expression back, ~1,400 times for 136 distinct ones on a small ResNet:
    half of a 1 s load. A repeated parse returns the expression the first one stored (the deserializer
    caches every expression by its text) after re-applying the same hint and range, so each distinct
    (text, hint) is parsed once per load here. A torch without that method loads as before.
    """
    try:
        from torch._export.serde.serialize import GraphModuleDeserializer
    except ImportError:
        yield
        return
    original = GraphModuleDeserializer.__dict__.get("_parse_sym_expr")
    if original is None:
        yield
        return

    def parse_once(self: Any, expr_str: str, hint: Any = None) -> Any:
        memo = self.__dict__.setdefault("_toolchain_parsed", {})
        key = (expr_str, type(hint), hint)
        if key not in memo:
            memo[key] = original(self, expr_str, hint)
        return memo[key]

    GraphModuleDeserializer._parse_sym_expr = parse_once  # type: ignore[method-assign]
    try:
        yield
    finally:
        GraphModuleDeserializer._parse_sym_expr = original  # type: ignore[method-assign]
