"""Task-level checks for precision variants: top-1 agreement, cosine similarity, ranking agreement.

Element-wise tolerances say how far numbers moved; these say whether the model still does its job
(picks the same class, points the same way, orders items the same). Pure numpy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["CheckResult", "TaskCheck"]

_KINDS = ("top1", "cosine", "ranking")
_MAX_RANKED = 2048


@dataclass(frozen=True)
class CheckResult:
    """What one task check achieved beside what it allows; truthy when it passed."""

    kind: str
    output: str
    achieved: float
    allowed: float
    reason: str = ""

    def __bool__(self) -> bool:
        return not self.reason and self.achieved >= self.allowed

    def describe(self) -> str:
        """One line, e.g. ``top1(logits): ok 1 (allowed >= 0.99)``."""
        verdict = "ok" if self else "FAIL"
        text = f"{self.kind}({self.output}): {verdict} {self.achieved:.4g} (allowed >= {self.allowed:g})"
        return f"{text}; {self.reason}" if self.reason else text

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "kind": self.kind,
            "output": self.output,
            "achieved": self.achieved,
            "allowed": self.allowed,
            "passed": bool(self),
            "reason": self.reason,
        }


@dataclass(frozen=True)
class TaskCheck:
    """A check on one output that a spec pairs with the looser tolerance of fp16/int8 variants.

    Args:
        kind: ``"top1"`` (argmax over the last axis agrees on this fraction of rows), ``"cosine"``
            (every row's cosine similarity over the last axis is at least this), ``"ranking"`` (this
            fraction of item pairs, over all elements, keep their order).
        output: the output it reads.
        threshold: the lowest passing value, in [0, 1].
    """

    kind: str
    output: str
    threshold: float

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"TaskCheck.kind must be one of {_KINDS}, got {self.kind!r}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"TaskCheck.threshold must lie in [0, 1], got {self.threshold!r}")

    @classmethod
    def top1(cls, output: str, *, min_agreement: float = 0.99) -> TaskCheck:
        """Classifier: the arg-max class agrees on at least `min_agreement` of the rows."""
        return cls("top1", output, min_agreement)

    @classmethod
    def cosine(cls, output: str, *, min_similarity: float = 0.99) -> TaskCheck:
        """Embedding: every row's cosine similarity with the reference is at least `min_similarity`."""
        return cls("cosine", output, min_similarity)

    @classmethod
    def ranking(cls, output: str, *, min_agreement: float = 0.95) -> TaskCheck:
        """Scorer: at least `min_agreement` of the item pairs keep their order."""
        return cls("ranking", output, min_agreement)

    def evaluate(self, expected: Mapping[str, np.ndarray], actual: Mapping[str, np.ndarray]) -> CheckResult:
        """Run the check on one sample's outputs."""
        if self.output not in expected or self.output not in actual:
            return CheckResult(self.kind, self.output, 0.0, self.threshold, reason="output missing")
        exp = np.asarray(expected[self.output], dtype=np.float64)
        act = np.asarray(actual[self.output], dtype=np.float64)
        if exp.shape != act.shape:
            return CheckResult(self.kind, self.output, 0.0, self.threshold, reason=f"shape {act.shape} != {exp.shape}")
        if not np.isfinite(act).all():
            return CheckResult(self.kind, self.output, 0.0, self.threshold, reason="non-finite values")
        achieved = {"top1": _top1, "cosine": _cosine, "ranking": _ranking}[self.kind](exp, act)
        return CheckResult(self.kind, self.output, achieved, self.threshold)

    def to_dict(self) -> dict[str, Any]:
        """JSON form, as stored in a package manifest."""
        return {"kind": self.kind, "output": self.output, "threshold": self.threshold}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskCheck:
        """Inverse of `to_dict`."""
        return cls(str(data["kind"]), str(data["output"]), float(data["threshold"]))


def _rows(x: np.ndarray) -> np.ndarray:
    return x.reshape(-1, x.shape[-1]) if x.ndim else x.reshape(1, 1)


def _top1(exp: np.ndarray, act: np.ndarray) -> float:
    if exp.size == 0:
        return 1.0
    e, a = _rows(exp), _rows(act)
    return float(np.mean(np.argmax(e, axis=-1) == np.argmax(a, axis=-1)))


def _cosine(exp: np.ndarray, act: np.ndarray) -> float:
    if exp.size == 0:
        return 1.0
    e, a = _rows(exp), _rows(act)
    norms = np.linalg.norm(e, axis=-1) * np.linalg.norm(a, axis=-1)
    dots = np.sum(e * a, axis=-1)
    # NOTE: two all-zero rows point "the same way"; one zero row against a non-zero one does not.
    sims = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), np.where(dots == 0, 1.0, 0.0))
    both_zero = (np.linalg.norm(e, axis=-1) == 0) & (np.linalg.norm(a, axis=-1) == 0)
    return float(np.min(np.where(both_zero, 1.0, sims)))


def _ranking(exp: np.ndarray, act: np.ndarray) -> float:
    e, a = exp.reshape(-1), act.reshape(-1)
    if e.size > _MAX_RANKED:  # NOTE: pairs grow quadratically; an even spread of items keeps it bounded.
        keep = np.linspace(0, e.size - 1, _MAX_RANKED).astype(np.int64)
        e, a = e[keep], a[keep]
    if e.size < 2:
        return 1.0
    de = np.sign(e[:, None] - e[None, :])
    da = np.sign(a[:, None] - a[None, :])
    ordered = de != 0  # NOTE: ties in the reference have no order to keep.
    if not ordered.any():
        return 1.0
    return float(np.mean(de[ordered] == da[ordered]))
