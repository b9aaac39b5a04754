"""One small name -> object registry used for specs, exporters and runtimes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from toolchain.core.errors import SpecError, TargetError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Named objects of one kind, filled by explicit `register` calls.

    Args:
        kind: what the entries are ("model", "exporter"); used in messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, obj: T, *, override: bool = False) -> T:
        """Add `obj` under `name`; refuse an existing name unless `override`."""
        if name in self._entries and not override:
            raise SpecError(
                f"a {self.kind} named {name!r} is already registered; "
                f"choose another name or pass override=True to replace it"
            )
        self._entries[name] = obj
        return obj

    def get(self, name: str) -> T:
        """Return the entry called `name`, or fail listing the known names."""
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise TargetError(f"no {self.kind} named {name!r}; known: {known}") from None

    def unregister(self, name: str) -> None:
        """Remove `name` if present (tests and re-registration use this)."""
        self._entries.pop(name, None)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
