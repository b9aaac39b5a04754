"""Parity assertions for any test suite: `assert_parity` fails with the table of achieved vs allowed error."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from toolchain.core.parity import ParityReport, Tolerance, compare

__all__ = ["assert_parity"]

_DEFAULT = Tolerance()


def assert_parity(
    expected: Any,
    actual: Any,
    *,
    tolerance: Tolerance = _DEFAULT,
    sample: str = "",
) -> ParityReport:
    """Assert that `actual` matches `expected` within `tolerance` (numpy's ``atol + rtol * |expected|``).

    Args:
        expected: the reference: an array (numpy, or anything with ``.numpy()`` such as a torch tensor),
            a sequence of arrays, or a mapping of output name to array.
        actual: the candidate, in the same form as `expected`.
        tolerance: allowed error; per-output overrides apply to mappings' names.
        sample: name of the inputs the outputs came from, shown in the failure message.

    Returns:
        The passing `ParityReport` (achieved error per output).

    Raises:
        AssertionError: when any output differs beyond the tolerance, with the parity table.
    """
    __tracebackhide__ = True  # NOTE: pytest then shows the caller's line, not this one.
    report = compare(_named(expected), _named(actual), tolerance, sample=sample)
    if not report:
        raise AssertionError(f"parity failed\n{report}")
    return report


def _named(value: Any) -> dict[str, np.ndarray]:
    if isinstance(value, Mapping):
        return {str(k): _array(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return {f"output{i}": _array(v) for i, v in enumerate(value)}
    return {"output": _array(value)}


def _array(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # NOTE: a torch tensor, without importing torch here.
        value = value.detach().cpu().numpy()
    return np.asarray(value)
