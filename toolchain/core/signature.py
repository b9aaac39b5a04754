"""A model's input/output signature with symbolic dims, and the check of feeds against it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from toolchain.core.errors import FeedError

__all__ = ["FeedGuard", "Signature", "TensorSig"]

Shape = tuple[int | str, ...]


@dataclass(frozen=True)
class TensorSig:
    """Name, dtype and symbolic shape of one tensor (a str dim is symbolic, ``"?"`` unknown)."""

    name: str
    dtype: str
    shape: Shape

    def describe(self) -> str:
        """``float32[batch, 13]``."""
        return f"{self.dtype}[{', '.join(str(d) for d in self.shape)}]"

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TensorSig:
        """Inverse of `to_dict`."""
        return cls(str(data["name"]), str(data["dtype"]), tuple(data["shape"]))


@dataclass(frozen=True)
class Signature:
    """Inputs and outputs of a model, and the sizes each symbolic dim was verified at."""

    inputs: tuple[TensorSig, ...]
    outputs: tuple[TensorSig, ...]
    verified_sizes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def input_names(self) -> list[str]:
        """Input names in order."""
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        """Output names in order."""
        return [t.name for t in self.outputs]

    def check_feeds(self, feeds: Mapping[str, Any]) -> dict[str, str | int]:
        """Check names, dtypes, ranks and sizes of `feeds`; return the size bound to each symbol.

        Raises:
            FeedError: naming the offending input, with what was expected and what was given.
        """
        missing = [n for n in self.input_names if n not in feeds]
        unexpected = sorted(set(feeds) - set(self.input_names))
        if missing or unexpected:
            raise FeedError(f"feeds must be exactly {self.input_names}; missing {missing}, unexpected {unexpected}")
        bound: dict[str, str | int] = {}
        for sig in self.inputs:
            value = feeds[sig.name]
            if not isinstance(value, np.ndarray):
                raise FeedError(f"input {sig.name!r}: expected a numpy array, got {type(value).__name__}")
            given = f"{value.dtype}{list(value.shape)}"
            if str(value.dtype) != sig.dtype or value.ndim != len(sig.shape):
                raise FeedError(f"input {sig.name!r}: expected {sig.describe()}, got {given}")
            for axis, (want, got) in enumerate(zip(sig.shape, value.shape, strict=True)):
                if isinstance(want, int) and want != got:
                    raise FeedError(
                        f"input {sig.name!r}: axis {axis} must be {want}, got {got} "
                        f"(expected {sig.describe()}, got {given})"
                    )
                if isinstance(want, str) and want != "?" and bound.setdefault(want, got) != got:
                    raise FeedError(
                        f"input {sig.name!r}: dim {want!r} is {got} here but {bound[want]} in an "
                        "earlier input; inputs sharing a symbolic dim must agree"
                    )
        return bound

    def to_dict(self) -> dict[str, Any]:
        """JSON form, as stored in the manifest."""
        return {
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "verified_sizes": {k: list(v) for k, v in self.verified_sizes.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Signature:
        """Inverse of `to_dict`."""
        return cls(
            inputs=tuple(TensorSig.from_dict(t) for t in data["inputs"]),
            outputs=tuple(TensorSig.from_dict(t) for t in data["outputs"]),
            verified_sizes={k: tuple(int(s) for s in v) for k, v in data.get("verified_sizes", {}).items()},
        )


class FeedGuard:
    """Checks feeds against a signature, each feed layout (names, dtypes, shapes) only the first time.

    NOTE: a full check costs ~45 us, as much as running a small model; a layout that passed once
    passes again (the lookup costs < 1 us), so sessions on a hot path check through this.
    """

    _MAX_LAYOUTS = 256

    def __init__(self, signature: Signature) -> None:
        self.signature = signature
        self._passed: set[tuple[Any, ...]] = set()

    def check(self, feeds: Mapping[str, Any]) -> None:
        """`Signature.check_feeds`, skipped for a layout that already passed."""
        try:
            # NOTE: dtype objects hash by value; feeds in another order are a new layout, checked once.
            key: tuple[Any, ...] | None = tuple([(k, v.dtype, v.shape) for k, v in feeds.items()])
        except AttributeError:  # not an array: the full check names it
            key = None
        if key is not None and key in self._passed:
            return
        self.signature.check_feeds(feeds)
        if key is not None and len(self._passed) < self._MAX_LAYOUTS:
            self._passed.add(key)
