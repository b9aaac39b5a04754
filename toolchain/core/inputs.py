"""What a model is fed: `Input` (shape, dtype, value domain) and `Dim` (a symbolic size and its range)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from toolchain.core.errors import SpecError

__all__ = ["DOMAINS", "DTYPES", "IDENTIFIER", "Dim", "Input"]

DTYPES = ("float32", "float16", "float64", "int64", "int32", "bool")
DOMAINS = ("normal", "uniform", "ids", "mask", "padding_mask", "offsets", "lengths")
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
"""An input, output or dim name: a Python identifier (it becomes a keyword argument and a graph name)."""


@dataclass(frozen=True)
class Dim:
    """A symbolic dimension: the size used for export and the range it must work on.

    Args:
        example: size used to capture the model; must be >= 2 (exporters specialise 0 and 1).
        min: smallest size the model must accept.
        max: largest size, or 0 for unbounded.
    """

    example: int = 4
    min: int = 1
    max: int = 0

    def __post_init__(self) -> None:
        if self.example < 2:
            raise SpecError(f"Dim.example must be >= 2 (exporters specialise 0 and 1), got {self.example}")
        if self.min < 1 or self.min > self.example:
            raise SpecError(f"Dim.min must be in [1, example={self.example}], got {self.min}")
        if self.max and self.max < self.example:
            raise SpecError(f"Dim.max must be 0 (unbounded) or >= example={self.example}, got {self.max}")

    def sizes(self) -> tuple[int, ...]:
        """Sizes to verify: the export size, the smallest, ``2 * example + 1`` and the largest declared."""
        larger = self.example * 2 + 1
        if self.max:
            larger = min(larger, self.max)
        return tuple(dict.fromkeys((self.example, self.min, larger, self.max or larger)))

    def to_dict(self) -> dict[str, int]:
        """JSON form."""
        return {"example": self.example, "min": self.min, "max": self.max}


@dataclass(frozen=True)
class Input:
    """One named model input: symbolic shape, dtype and the domain its values come from.

    Use the constructors: `Input.normal`, `Input.uniform`, `Input.ids`, `Input.mask`, `Input.padding_mask`,
    `Input.key_padding_mask`, `Input.offsets`, `Input.lengths`.
    """

    shape: tuple[int | str, ...]
    dtype: str = "float32"
    domain: str = "normal"
    low: float = 0.0
    high: float = 1.0
    over: str = ""
    """For ``offsets``: the symbolic dim of the flat index input the offsets point into; for ``lengths``:
    the symbolic dim the lengths count positions of (a length never exceeds its size)."""
    pad: int | None = None
    """The value that means padding: a padding id (``ids``), or the mask value at padded positions
    (``padding_mask``: 0 by default, 1 for PyTorch's ``key_padding_mask`` convention)."""
    side: str = "end"
    """For ``padding_mask``: where the padding sits in each row, ``"end"`` or ``"start"``."""
    min_valid: int = 1
    """For ``padding_mask`` and ``lengths``: the fewest valid (unpadded) positions a row has; 0 allows empty rows."""

    def __post_init__(self) -> None:
        if not isinstance(self.shape, tuple):
            raise SpecError(f"Input.shape must be a tuple like ('batch', 16), got {self.shape!r}")
        for d in self.shape:
            size = isinstance(d, int) and not isinstance(d, bool) and d >= 1
            if not size and not (isinstance(d, str) and IDENTIFIER.match(d)):
                raise SpecError(
                    f"shape {self.shape!r}: each dim must be an int >= 1 or a symbolic name like 'batch', got {d!r}"
                )
        if self.dtype not in DTYPES:
            raise SpecError(f"dtype {self.dtype!r} is not supported; use one of {', '.join(DTYPES)}")
        if self.domain not in DOMAINS:
            raise SpecError(f"domain {self.domain!r} is not supported; use one of {', '.join(DOMAINS)}")
        if self.domain in ("uniform", "ids") and not self.low < self.high:
            raise SpecError(f"{self.domain} input needs low < high, got low={self.low} high={self.high}")
        if self.domain == "ids" and not self.dtype.startswith("int"):
            raise SpecError(f"ids input needs an integer dtype (int64 or int32), got {self.dtype}")
        if self.domain in ("normal", "uniform") and not self.dtype.startswith("float"):
            raise SpecError(f"{self.domain} input needs a float dtype, got {self.dtype}; for ids use Input.ids")
        if self.domain == "offsets" and (len(self.shape) != 1 or not IDENTIFIER.match(self.over)):
            raise SpecError("offsets input needs a 1-d shape like ('batch',) and over='<dim of the flat ids>'")
        if self.domain == "lengths" and (not IDENTIFIER.match(self.over) or not self.dtype.startswith("int")):
            raise SpecError("lengths input needs over='<the symbolic dim it counts, like seq>' and an integer dtype")
        if self.domain == "padding_mask" and not self.shape:
            raise SpecError("padding_mask input needs at least one axis (the sequence is the last)")
        if self.side not in ("end", "start"):
            raise SpecError(f"padding side must be 'end' or 'start', got {self.side!r}")
        if self.domain == "padding_mask" and self.pad not in (None, 0, 1):
            raise SpecError(f"padding_mask pad must be 0 or 1 (the mask value at padded positions), got {self.pad!r}")
        if self.domain == "ids" and self.pad is not None and not self.low <= self.pad < self.high:
            raise SpecError(f"ids padding id {self.pad} must lie in [low={self.low:g}, high={self.high:g})")
        if not isinstance(self.min_valid, int) or self.min_valid < 0:
            raise SpecError(f"min_valid must be an int >= 0, got {self.min_valid!r}")

    @classmethod
    def normal(cls, shape: tuple[int | str, ...], *, dtype: str = "float32") -> Input:
        """Standard-normal floats."""
        return cls(shape, dtype, "normal")

    @classmethod
    def uniform(cls, shape: tuple[int | str, ...], *, low: float, high: float, dtype: str = "float32") -> Input:
        """Floats uniform in ``[low, high)``."""
        return cls(shape, dtype, "uniform", low, high)

    @classmethod
    def ids(
        cls,
        shape: tuple[int | str, ...],
        *,
        high: int,
        low: int = 0,
        padding_id: int | None = None,
        dtype: str = "int64",
    ) -> Input:
        """Integer ids (token or row indices) uniform in ``[low, high)``.

        Value draws include both ends and `padding_id` (an embedding's ``padding_idx``), when given.
        """
        return cls(shape, dtype, "ids", low, high, pad=padding_id)

    @classmethod
    def mask(cls, shape: tuple[int | str, ...], *, dtype: str = "bool") -> Input:
        """Arbitrary 0/1 values.

        Value draws add the structured rows real masks have (all valid, runs from either end). For padding
        masks declare `padding_mask`, whose rows never leave its convention.
        """
        return cls(shape, dtype, "mask", 0, 2)

    @classmethod
    def padding_mask(
        cls,
        shape: tuple[int | str, ...],
        *,
        pad: int = 0,
        side: str = "end",
        min_valid: int = 1,
        dtype: str = "bool",
    ) -> Input:
        """Padding masks over the last axis: each row holds a run of valid positions, then padding.

        Args:
            shape: the mask's shape; the sequence is the last axis.
            pad: the mask value at padded positions: 0 (1 marks valid tokens, as attention masks do) or 1
                (``True`` at padding: PyTorch's ``key_padding_mask``; see `key_padding_mask`).
            side: where the padding sits, ``"end"`` (right padding) or ``"start"`` (left padding).
            min_valid: the fewest valid positions in a row (0 allows fully padded rows).
            dtype: ``bool``, an integer or a float dtype.
        """
        return cls(shape, dtype, "padding_mask", 0, 2, pad=pad, side=side, min_valid=min_valid)

    @classmethod
    def key_padding_mask(cls, shape: tuple[int | str, ...], *, side: str = "end", min_valid: int = 1) -> Input:
        """PyTorch's ``key_padding_mask`` convention: bool, ``True`` at padded positions.

        As ``nn.MultiheadAttention`` and ``nn.TransformerEncoder`` take it.
        """
        return cls.padding_mask(shape, pad=1, side=side, min_valid=min_valid)

    @classmethod
    def offsets(cls, shape: tuple[int | str, ...], *, over: str, dtype: str = "int64") -> Input:
        """Start offsets of ragged bags in a flat id input of length `over` (sorted, first is 0)."""
        return cls(shape, dtype, "offsets", 0, 1, over)

    @classmethod
    def lengths(cls, shape: tuple[int | str, ...], *, over: str, min_valid: int = 1, dtype: str = "int64") -> Input:
        """Valid lengths of padded rows (``pack_padded_sequence``'s ``lengths``), in ``[min_valid, size of over]``.

        Value draws include full rows and rows of `min_valid` positions. Declare lengths this way rather
        than as ``ids``: a length beyond the sequence a sample set has is an input no model ever sees.
        """
        return cls(shape, dtype, "lengths", 0, 1, over, min_valid=min_valid)

    @property
    def symbols(self) -> tuple[str, ...]:
        """The symbolic dim names in this shape (and the dim an offsets input points into)."""
        own = tuple(d for d in self.shape if isinstance(d, str))
        return (*own, self.over) if self.over and self.over not in own else own

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "shape": list(self.shape),
            "dtype": self.dtype,
            "domain": self.domain,
            "low": self.low,
            "high": self.high,
            "over": self.over,
            "pad": self.pad,
            "side": self.side,
            "min_valid": self.min_valid,
        }
