"""Task metrics on labelled data: accuracy / top-k, ROC AUC, NDCG@k over query groups, cosine similarity.

A spec declares its metric as a tag, ``metric:KIND[:OUTPUT]`` (``metric:top5:logits``, ``metric:auc``,
``metric:ndcg@10``, ``metric:cosine``), which travels in the package manifest's ``tags``; a package
without one gets the metric its task tags imply (``classifier`` -> accuracy, ``ranking``/``matcher`` ->
AUC, ``embedding``/``encoder`` -> cosine), and ``--metric`` overrides both.

NOTE: numpy, not scikit-learn: the four metrics are ~60 lines here, scikit-learn is no dependency of
ours (with scipy, 164 MB; ``import sklearn.metrics`` 3.2 s against 0.33 s for this package), and
`evaluate` must run wherever the package runs. The AUC is the Mann-Whitney statistic with average
ranks for ties, as ``sklearn.metrics.roc_auc_score``; the tests compare the two where sklearn exists.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from toolchain.core.errors import EvaluationError

__all__ = ["KINDS", "METRIC_TAG", "Metric", "compute", "metric_for"]

KINDS = ("top", "auc", "ndcg", "cosine")
METRIC_TAG = "metric:"
"""Prefix of the spec tag that declares the evaluation metric."""
_IMPLIED = (
    (("classifier", "asr", "translation"), "accuracy"),
    (("ranking", "matcher", "retrieval"), "auc"),
    (("embedding", "encoder"), "cosine"),
)
_SYNTAX = re.compile(r"^(accuracy|top(?P<k>[1-9][0-9]{0,3})|auc|ndcg@(?P<n>[1-9][0-9]{0,3})|cosine)$")


@dataclass(frozen=True)
class Metric:
    """One task metric: what it computes, over which output, and its cut-off.

    Args:
        kind: one of `KINDS` (``top`` is top-k accuracy).
        k: the cut-off of ``top`` and ``ndcg`` (1 for the others).
        output: the model output it reads ('' for the first).
    """

    kind: str
    k: int = 1
    output: str = ""

    @property
    def name(self) -> str:
        """``accuracy``, ``top5``, ``auc``, ``ndcg@10``, ``cosine``."""
        if self.kind == "top":
            return "accuracy" if self.k == 1 else f"top{self.k}"
        return f"ndcg@{self.k}" if self.kind == "ndcg" else self.kind

    @classmethod
    def parse(cls, text: str) -> Metric:
        """``KIND[:OUTPUT]`` as written after ``--metric`` or in a ``metric:`` tag.

        Raises:
            EvaluationError: an unknown metric.
        """
        kind, _, output = text.strip().partition(":")
        match = _SYNTAX.match(kind.lower())
        if match is None:
            raise EvaluationError(
                f"metric {text!r} is not one of accuracy, topK (top5), auc, ndcg@K (ndcg@10), cosine "
                "(optionally :OUTPUT, e.g. top5:logits)"
            )
        if match["k"]:
            return cls("top", int(match["k"]), output)
        if match["n"]:
            return cls("ndcg", int(match["n"]), output)
        return cls("top" if kind.lower() == "accuracy" else kind.lower(), 1, output)


def metric_for(tags: Sequence[str], *, override: str = "") -> tuple[Metric, str]:
    """The metric to compute and where it came from (``--metric``, the declared tag, the task tags).

    Raises:
        EvaluationError: nothing declares or implies a metric, or a declared one is malformed.
    """
    if override:
        return Metric.parse(override), "--metric"
    declared = [t[len(METRIC_TAG) :] for t in tags if t.startswith(METRIC_TAG)]
    if declared:
        return Metric.parse(declared[0]), f"declared by the spec (tag {METRIC_TAG}{declared[0]})"
    for implying, kind in _IMPLIED:
        found = next((t for t in tags if t in implying), None)
        if found:
            return Metric.parse(kind), f"implied by the spec's tag {found!r}"
    raise EvaluationError(
        f"the package declares no evaluation metric (tags {list(tags)}); pass --metric accuracy|top5|auc|ndcg@10|"
        f"cosine, or declare one in the spec: tags=(..., '{METRIC_TAG}auc')"
    )


def compute(metric: Metric, scores: np.ndarray, labels: np.ndarray, groups: np.ndarray | None = None) -> float:
    """`metric` of model outputs `scores` against `labels` (checked by `toolchain.evaluate.data.check_labels`).

    Non-finite scores count as the worst answer: a wrong class, the lowest score, no similarity.
    """
    if metric.kind == "top":
        return _top_k(scores, labels, metric.k)
    if metric.kind == "auc":
        return _auc(_flat_scores(scores), labels.reshape(-1).astype(bool))
    if metric.kind == "ndcg":
        if groups is None:
            raise EvaluationError(f"{metric.name} ranks items within query groups; pass --groups FILE-or-KEY")
        return _ndcg(_flat_scores(scores), labels.reshape(-1).astype(np.float64), groups.reshape(-1), metric.k)
    return _cosine(scores, labels)


def _flat_scores(scores: np.ndarray) -> np.ndarray:
    flat = np.asarray(scores, dtype=np.float64).reshape(-1)
    return np.where(np.isfinite(flat), flat, -np.inf)


def _top_k(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    rows = np.asarray(scores, dtype=np.float64).reshape(-1, scores.shape[-1])
    wanted = labels.reshape(-1).astype(np.int64)
    finite = np.isfinite(rows).all(axis=1)
    # NOTE: the rank of the true class is how many classes score strictly above it; ties favour the label.
    above = (rows > rows[np.arange(len(rows)), wanted][:, None]).sum(axis=1)
    return float(np.mean((above < k) & finite)) if len(rows) else 0.0


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(1, len(values) + 1)
    uniques, inverse = np.unique(values, return_inverse=True)
    sums = np.bincount(inverse, weights=ranks, minlength=len(uniques))
    counts = np.bincount(inverse, minlength=len(uniques))
    return (sums / counts)[inverse]


def _auc(scores: np.ndarray, positive: np.ndarray) -> float:
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        raise EvaluationError(
            f"AUC needs both classes in the labels; found {n_pos} positive and {n_neg} negative examples"
        )
    ranks = _average_ranks(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _dcg(gains: np.ndarray, k: int) -> float:
    top = gains[:k]
    return float(np.sum((2.0**top - 1.0) / np.log2(np.arange(2, len(top) + 2))))


def _ndcg(scores: np.ndarray, relevance: np.ndarray, groups: np.ndarray, k: int) -> float:
    values = []
    for group in np.unique(groups):
        members = groups == group
        rel = relevance[members]
        ideal = _dcg(np.sort(rel)[::-1], k)
        if ideal <= 0:
            continue  # NOTE: a query without a relevant item has no order to get right (as LightGBM skips it).
        # NOTE: stable sort on -score, so tied scores keep the input order rather than the labels' order.
        ranked = rel[np.argsort(-scores[members], kind="mergesort")]
        values.append(_dcg(ranked, k) / ideal)
    if not values:
        raise EvaluationError("NDCG needs at least one query group with a relevant item (a label above 0)")
    return float(np.mean(values))


def _cosine(scores: np.ndarray, reference: np.ndarray) -> float:
    a = np.asarray(scores, dtype=np.float64).reshape(len(scores), -1)
    b = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    finite = np.isfinite(a).all(axis=1) & (norms > 0)
    sims = np.where(finite, np.sum(np.where(np.isfinite(a), a, 0) * b, axis=1) / np.where(finite, norms, 1.0), 0.0)
    return float(np.mean(sims)) if len(sims) else 0.0
