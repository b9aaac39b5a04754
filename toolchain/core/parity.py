"""Numerical parity between a reference and a candidate, in numpy alone.

An element passes when ``|actual - expected| <= atol + rtol * |expected|`` (numpy's rule). NaN and
Inf must sit at exactly the same positions with the same sign; a non-finite value where the reference
is finite always fails. Shapes and dtypes must match exactly. A tolerance may declare outputs compared
only where a padding mask input marks positions valid (`Tolerance.ignore_padded`, an opt-in recorded
in the package); every other element is compared.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from toolchain.core.checks import CheckResult, TaskCheck

__all__ = ["OutputParity", "PaddedBy", "ParityReport", "Tolerance", "compare"]


@dataclass(frozen=True)
class PaddedBy:
    """An output's positions that a padding mask input marks as padding: not compared.

    Args:
        input: the mask input's name; its shape leads the output's shape (``(batch, seq)`` for an output
            ``(batch, seq, d)``).
        pad: the mask value at padded positions (1 for PyTorch's ``key_padding_mask``).
    """

    input: str
    pad: int

    def positions(self, mask: np.ndarray, output_shape: tuple[int, ...]) -> np.ndarray | str:
        """Boolean array of `output_shape`, True where padded; or why the mask does not fit the output."""
        if tuple(mask.shape) != tuple(output_shape[: mask.ndim]):
            shape = tuple(mask.shape)
            return f"padding mask {self.input!r} of shape {shape} does not lead the output's shape {output_shape}"
        padded = np.asarray(mask) == self.pad
        return np.broadcast_to(padded.reshape(padded.shape + (1,) * (len(output_shape) - mask.ndim)), output_shape)


@dataclass(frozen=True)
class Tolerance:
    """Allowed error: ``atol + rtol * |expected|`` per element, overridable per output.

    Args:
        atol: absolute tolerance.
        rtol: relative tolerance.
        per_output: output name -> `Tolerance` used for that output instead (its own
            `per_output` and `ignore_padded` are ignored).
        ignore_padded: output name -> `PaddedBy`: that output is compared only at positions its mask
            input marks valid (an eager fast path that writes zeros at padding, which exporters do not
            reproduce). Off unless declared; applied only when `compare` is given the feeds.
    """

    atol: float = 1e-5
    rtol: float = 1e-4
    per_output: Mapping[str, Tolerance] = field(default_factory=dict)
    ignore_padded: Mapping[str, PaddedBy] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for label, value in (("atol", self.atol), ("rtol", self.rtol)):
            if not (isinstance(value, int | float) and np.isfinite(value) and value >= 0):
                raise ValueError(f"Tolerance.{label} must be a finite number >= 0, got {value!r}")
        for name, tol in self.per_output.items():
            if not isinstance(tol, Tolerance):
                raise ValueError(f"Tolerance.per_output[{name!r}] must be a Tolerance, got {type(tol).__name__}")
        for name, rule in self.ignore_padded.items():
            if not isinstance(rule, PaddedBy):
                raise ValueError(f"Tolerance.ignore_padded[{name!r}] must be a PaddedBy, got {type(rule).__name__}")

    def for_output(self, name: str) -> tuple[float, float]:
        """The (atol, rtol) that applies to output `name`."""
        tol = self.per_output.get(name, self)
        return float(tol.atol), float(tol.rtol)

    def to_dict(self) -> dict[str, Any]:
        """JSON form, as stored in a package manifest (``ignore_padded`` only when declared)."""
        data: dict[str, Any] = {
            "atol": self.atol,
            "rtol": self.rtol,
            "per_output": {k: {"atol": v.atol, "rtol": v.rtol} for k, v in self.per_output.items()},
        }
        if self.ignore_padded:
            data["ignore_padded"] = {k: {"input": v.input, "pad": v.pad} for k, v in self.ignore_padded.items()}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Tolerance:
        """Inverse of `to_dict`."""
        per = {k: cls(float(v["atol"]), float(v["rtol"])) for k, v in data.get("per_output", {}).items()}
        padded = {k: PaddedBy(str(v["input"]), int(v["pad"])) for k, v in data.get("ignore_padded", {}).items()}
        return cls(float(data["atol"]), float(data["rtol"]), per, padded)


@dataclass(frozen=True)
class OutputParity:
    """What was achieved on one output, beside what was allowed."""

    name: str
    passed: bool
    atol: float
    rtol: float
    max_abs: float = 0.0
    max_rel: float = 0.0
    mismatch_fraction: float = 0.0
    worst_ratio: float = 0.0
    """Largest ``|a - e| / (atol + rtol*|e|)`` over finite elements: <= 1 means every element passed."""
    nonfinite_mismatches: int = 0
    reason: str = ""
    """Why the output failed beyond numbers (missing, shape, dtype, NaN/Inf positions)."""
    ignored: int = 0
    """Elements not compared: padded positions under `Tolerance.ignore_padded`."""

    def describe(self) -> str:
        """One line: achieved vs allowed, and the reason when it failed."""
        verdict = "ok" if self.passed else "FAIL"
        text = (
            f"{self.name}: {verdict} max_abs={self.max_abs:.3g} max_rel={self.max_rel:.3g} "
            f"mismatch={self.mismatch_fraction:.2%} (allowed atol={self.atol:g} rtol={self.rtol:g})"
        )
        if self.ignored:
            text += f" [{self.ignored} padded element(s) not compared, as declared]"
        return f"{text}; {self.reason}" if self.reason else text

    def to_dict(self) -> dict[str, Any]:
        """JSON form (floats as given, NaN-free)."""
        return {
            "passed": self.passed,
            "max_abs": self.max_abs,
            "max_rel": self.max_rel,
            "mismatch_fraction": self.mismatch_fraction,
            "worst_ratio": self.worst_ratio,
            "nonfinite_mismatches": self.nonfinite_mismatches,
            "atol": self.atol,
            "rtol": self.rtol,
            "reason": self.reason,
            "ignored": self.ignored,
        }


@dataclass(frozen=True)
class ParityReport:
    """Parity of every output on one sample; truthy only when every output passed."""

    outputs: tuple[OutputParity, ...]
    sample: str = ""
    error: str = ""
    """Set when the candidate could not be run at all on this sample."""
    checks: tuple[CheckResult, ...] = ()
    """Task-level checks (top-1, cosine, ranking) that had to pass as well."""

    def __bool__(self) -> bool:
        return not self.error and all(o.passed for o in self.outputs) and all(self.checks)

    @property
    def failures(self) -> tuple[OutputParity, ...]:
        """The outputs that failed."""
        return tuple(o for o in self.outputs if not o.passed)

    def __str__(self) -> str:
        head = f"sample {self.sample!r}: " if self.sample else ""
        if self.error:
            return f"{head}FAIL could not run: {self.error}"
        verdict = "passed" if self else "FAILED"
        lines = [f"{head}{verdict}", *(f"  {o.describe()}" for o in self.outputs)]
        return "\n".join(lines + [f"  {c.describe()}" for c in self.checks])

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "sample": self.sample,
            "passed": bool(self),
            "error": self.error,
            "outputs": {o.name: o.to_dict() for o in self.outputs},
            "checks": [c.to_dict() for c in self.checks],
        }

    @classmethod
    def could_not_run(cls, error: str, *, sample: str = "") -> ParityReport:
        """A failed report for a candidate that raised instead of producing outputs."""
        return cls(outputs=(), sample=sample, error=error)


def compare(
    expected: Mapping[str, np.ndarray],
    actual: Mapping[str, np.ndarray],
    tolerance: Tolerance,
    *,
    sample: str = "",
    checks: Sequence[TaskCheck] = (),
    feeds: Mapping[str, np.ndarray] | None = None,
) -> ParityReport:
    """Compare every expected output with the candidate's.

    Args:
        expected: reference outputs by name.
        actual: candidate outputs by name; extra names are ignored, missing ones fail.
        tolerance: allowed error.
        sample: name of the sample the outputs were computed on, for messages.
        checks: task-level checks that must pass too (used for fp16/int8 variants).
        feeds: the inputs the outputs were computed from; with them, `Tolerance.ignore_padded` applies
            (without them every element is compared, the stricter reading).
    """
    results = []
    for name, exp in expected.items():
        atol, rtol = tolerance.for_output(name)
        if name not in actual:
            results.append(OutputParity(name, False, atol, rtol, reason="missing from candidate outputs"))
            continue
        exp_array, act_array = np.asarray(exp), np.asarray(actual[name])
        rule = tolerance.ignore_padded.get(name)
        skip: np.ndarray | None = None
        if rule is not None and feeds is not None and rule.input in feeds and exp_array.shape == act_array.shape:
            found = rule.positions(np.asarray(feeds[rule.input]), exp_array.shape)
            if isinstance(found, str):
                results.append(OutputParity(name, False, atol, rtol, reason=found))
                continue
            skip = found
        results.append(_compare_one(name, exp_array, act_array, atol, rtol, skip=skip))
    evaluated = tuple(c.evaluate(expected, actual) for c in checks)
    return ParityReport(outputs=tuple(results), sample=sample, checks=evaluated)


def _compare_one(
    name: str, exp: np.ndarray, act: np.ndarray, atol: float, rtol: float, *, skip: np.ndarray | None = None
) -> OutputParity:
    if exp.shape != act.shape:
        return OutputParity(name, False, atol, rtol, reason=f"shape {act.shape} != expected {exp.shape}")
    if exp.dtype != act.dtype:
        return OutputParity(name, False, atol, rtol, reason=f"dtype {act.dtype} != expected {exp.dtype}")
    if exp.size == 0:
        return OutputParity(name, True, atol, rtol)
    ignored = 0
    if skip is not None and skip.any():
        # NOTE: padded positions take the reference's own value, so they pass exactly and count nowhere.
        act, ignored = np.where(skip, exp, act), int(skip.sum())
    if exp.dtype.kind in "biu":
        atol = rtol = 0.0  # NOTE: integer and boolean outputs (ids, masks, counts) must match exactly.
    exp64, act64 = exp.astype(np.float64), act.astype(np.float64)
    exp_finite, act_finite = np.isfinite(exp64), np.isfinite(act64)
    both = exp_finite & act_finite
    # Non-finite positions must agree exactly: same position, same kind (nan / +inf / -inf).
    bad_nonfinite = (exp_finite != act_finite) | (
        ~exp_finite & ~act_finite & ~((np.isnan(exp64) & np.isnan(act64)) | (exp64 == act64))
    )
    diff = np.abs(np.subtract(act64, exp64, where=both, out=np.zeros_like(exp64)))
    allowed = atol + rtol * np.abs(exp64, where=both, out=np.zeros_like(exp64))
    elem_fail = (both & (diff > allowed)) | bad_nonfinite
    abs_exp = np.abs(exp64, where=both, out=np.zeros_like(exp64))
    nonzero = both & (abs_exp > 0)
    rel = np.divide(diff, abs_exp, where=nonzero, out=np.zeros_like(exp64))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(allowed > 0, diff / np.where(allowed > 0, allowed, 1.0), np.where(diff > 0, np.inf, 0.0))
    n_nonfinite = int(bad_nonfinite.sum())
    n_fail = int(elem_fail.sum())
    return OutputParity(
        name=name,
        passed=n_fail == 0,
        atol=atol,
        rtol=rtol,
        max_abs=float(diff.max()),
        max_rel=float(rel.max()),
        mismatch_fraction=n_fail / exp.size,
        worst_ratio=float(ratio[both].max()) if both.any() else 0.0,
        nonfinite_mismatches=n_nonfinite,
        reason=f"{n_nonfinite} NaN/Inf position(s) differ from expected" if n_nonfinite else "",
        ignored=ignored,
    )
