"""Integrity classification: gradient-boosted trees compiled to tensors, stacked under a logistic regression.

Stands for the spam and fake-account classifiers that score every sign-up and post: a GBDT over
tabular signals, fitted offline and served inside the same graph as a logistic-regression head over
the GBDT score and the raw signals. The trees are fitted here at build time (seeded numpy, logistic
boosting with Newton leaves, exhaustive best split over a few quantile thresholds per feature) and
compiled into flat node tables held as buffers; `forward` walks every tree at once, one
gather/compare/where step per level.

Export hazards it exercises: gather- and where-heavy graphs whose node indices are int64 (an exact
integer path: one wrong index is a different leaf, not a small error), and thresholds compared with
``<=``. A feature exactly on a threshold is where a runtime that compared differently (``<`` for
``<=``, or a threshold rounded through another dtype) would flip a branch, so the spec adds sample
sets whose rows sit exactly on the candidate thresholds; every split uses one of them, so every split
of every tree is tied by some row. All four paths keep ``<=`` in float32 and agree there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from toolchain.core import Dim, Input, TaskCheck, exportable

__all__ = [
    "GBDTLogisticRegression",
    "Tree",
    "candidate_thresholds",
    "fit_gbdt",
    "synthetic_data",
    "walk_trees",
]

FEATURES, ROWS, TREES, DEPTH, QUANTILES = 16, 2000, 20, 3, 8
LEARNING_RATE, MIN_LEAF, L2 = 0.3, 20, 1.0
_DATA_SEED = 20240611
_NODES = 2 ** (DEPTH + 1) - 1
"""Node slots per tree: a full binary tree of depth `DEPTH`; unused slots are unreachable leaves."""


@dataclass(frozen=True)
class Tree:
    """One fitted tree as a node table; a leaf is a node whose children are itself.

    Args:
        feature: split feature per node (0 for leaves).
        threshold: go left when ``x[feature] <= threshold`` (float32).
        left: left child per node.
        right: right child per node.
        value: leaf value per node (0 for internal nodes).
    """

    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray


def synthetic_data(*, rows: int = ROWS, seed: int = _DATA_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Seeded float32 features (rows, 16) and 0/1 labels from a nonlinear rule with label noise."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, FEATURES)).astype(np.float32)
    logit = 1.5 * x[:, 0] * x[:, 1] + np.sin(2.0 * x[:, 2]) + x[:, 3] ** 2 - 1.0 + 0.8 * (x[:, 4] > 0.5) - 0.5 * x[:, 5]
    y = (logit + 0.5 * rng.standard_normal(rows) > 0).astype(np.float64)
    return x, y


def candidate_thresholds(x: np.ndarray, *, quantiles: int = QUANTILES) -> np.ndarray:
    """Split candidates per feature, shape (features, quantiles): inner quantiles of `x`, in float32."""
    levels = np.arange(1, quantiles + 1) / (quantiles + 1)
    return np.quantile(x.astype(np.float64), levels, axis=0).T.astype(np.float32)


def fit_gbdt(
    x: np.ndarray,
    y: np.ndarray,
    *,
    trees: int = TREES,
    depth: int = DEPTH,
    learning_rate: float = LEARNING_RATE,
) -> tuple[float, list[Tree]]:
    """Logistic boosting: each tree fits Newton steps of the log-loss; returns (base score, trees).

    Args:
        x: float32 features (rows, features).
        y: 0/1 labels (rows,).
        trees: number of boosting rounds.
        depth: depth of every tree.
        learning_rate: shrinkage applied to every leaf value.
    """
    thresholds = candidate_thresholds(x)
    prior = float(np.clip(y.mean(), 1e-6, 1 - 1e-6))
    base = float(np.log(prior / (1 - prior)))
    margin = np.full(len(y), base)
    fitted = []
    for _ in range(trees):
        p = 1.0 / (1.0 + np.exp(-margin))
        tree = _fit_tree(x, p - y, p * (1 - p), thresholds, depth=depth, learning_rate=learning_rate)
        fitted.append(tree)
        margin += walk_trees(x, [tree])
    return base, fitted


def _fit_tree(
    x: np.ndarray, g: np.ndarray, h: np.ndarray, thresholds: np.ndarray, *, depth: int, learning_rate: float
) -> Tree:
    nodes = 2 ** (depth + 1) - 1
    feature = np.zeros(nodes, np.int64)
    threshold = np.zeros(nodes, np.float32)
    left = np.arange(nodes, dtype=np.int64)  # NOTE: every slot starts as a self-looping leaf.
    right = np.arange(nodes, dtype=np.int64)
    value = np.zeros(nodes, np.float32)
    rows_at = {0: np.arange(len(g))}
    for node in range(nodes):
        if node not in rows_at:
            continue
        rows = rows_at.pop(node)
        split = _best_split(x[rows], g[rows], h[rows], thresholds) if 2 * node + 2 < nodes else None
        if split is None:
            value[node] = -learning_rate * g[rows].sum() / (h[rows].sum() + L2)
            continue
        feature[node], threshold[node] = split
        goes_left = x[rows, feature[node]] <= threshold[node]
        left[node], right[node] = 2 * node + 1, 2 * node + 2
        rows_at[2 * node + 1], rows_at[2 * node + 2] = rows[goes_left], rows[~goes_left]
    return Tree(feature, threshold, left, right, value)


def _best_split(x: np.ndarray, g: np.ndarray, h: np.ndarray, thresholds: np.ndarray) -> tuple[int, float] | None:
    """The (feature, threshold) with the largest Newton gain, or None when no split keeps MIN_LEAF rows a side."""
    goes_left = x[:, :, None] <= thresholds[None]  # (rows, features, quantiles)
    g_left = np.einsum("n,nfq->fq", g, goes_left)
    h_left = np.einsum("n,nfq->fq", h, goes_left)
    n_left = goes_left.sum(0)
    g_all, h_all = g.sum(), h.sum()
    gain = g_left**2 / (h_left + L2) + (g_all - g_left) ** 2 / (h_all - h_left + L2) - g_all**2 / (h_all + L2)
    gain[(n_left < MIN_LEAF) | (len(g) - n_left < MIN_LEAF)] = -np.inf
    f, q = np.unravel_index(int(np.argmax(gain)), gain.shape)
    if not gain[f, q] > 0:
        return None
    return int(f), float(thresholds[f, q])


def walk_trees(x: np.ndarray, trees: list[Tree]) -> np.ndarray:
    """Sum of leaf values over `trees` for each row of `x`, walking node by node until a leaf."""
    total = np.zeros(len(x), np.float64)
    for tree in trees:
        for i, row in enumerate(x):
            node = 0
            while tree.left[node] != node:
                node = tree.left[node] if row[tree.feature[node]] <= tree.threshold[node] else tree.right[node]
            total[i] += tree.value[node]
    return total


def _fit_logistic_head(z: np.ndarray, y: np.ndarray, *, steps: int = 12, l2: float = 1.0) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression by Newton's method; returns (weights, bias)."""
    a = np.concatenate([z, np.ones((len(z), 1))], axis=1).astype(np.float64)
    w = np.zeros(a.shape[1])
    ridge = l2 * np.eye(a.shape[1])
    ridge[-1, -1] = 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(a @ w)))
        hess = (a * (p * (1 - p))[:, None]).T @ a + ridge
        w -= np.linalg.solve(hess, a.T @ (p - y) + ridge @ w)
    return w[:-1], float(w[-1])


def _threshold_samples() -> dict[str, dict[str, np.ndarray]]:
    """Rows exactly on split candidates: row k puts every feature on quantile ``(k + f) % QUANTILES``."""
    thresholds = candidate_thresholds(synthetic_data()[0])
    k = np.arange(QUANTILES)[:, None]
    f = np.arange(FEATURES)[None, :]
    aligned = thresholds[f, np.broadcast_to(k, (QUANTILES, FEATURES))]
    staggered = thresholds[f, (k + f) % QUANTILES]
    return {
        "on-thresholds": {"features": aligned},
        "on-thresholds-staggered": {"features": staggered},
    }


@exportable(
    name="integrity.gbdt_lr",
    inputs={"features": Input.normal(("batch", FEATURES))},
    outputs=["probability", "score"],
    dims={"batch": Dim(example=16, min=1, max=4096)},
    tags=("integrity", "classifier", "trees", "metric:auc:probability"),
    checks=[TaskCheck.ranking("probability")],
    samples=_threshold_samples(),
)
class GBDTLogisticRegression(nn.Module):
    """20 depth-3 boosted trees in tensor form, then logistic regression on [GBDT score, features]."""

    if TYPE_CHECKING:
        # NOTE: buffer types for mypy only. `get_buffer` would type them too, but `torch.jit.script`
        # cannot compile it (the torchscript path would fall back to a trace), and a runtime class
        # annotation is a string here (`from __future__ import annotations`) that scripting rejects.
        feature: torch.Tensor
        threshold: torch.Tensor
        left: torch.Tensor
        right: torch.Tensor
        value: torch.Tensor
        roots: torch.Tensor
        base: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        x, y = synthetic_data()
        base, trees = fit_gbdt(x, y)
        self.depth = DEPTH
        offsets = np.arange(len(trees), dtype=np.int64)[:, None] * _NODES
        # NOTE: child tables hold flat (tree * nodes + node) indices, so one gather serves every tree.
        tables = {
            "feature": np.stack([t.feature for t in trees]),
            "threshold": np.stack([t.threshold for t in trees]),
            "left": np.stack([t.left for t in trees]) + offsets,
            "right": np.stack([t.right for t in trees]) + offsets,
            "value": np.stack([t.value for t in trees]),
        }
        for name, table in tables.items():
            self.register_buffer(name, torch.from_numpy(np.ascontiguousarray(table.reshape(-1))))
        self.register_buffer("roots", torch.from_numpy(offsets.reshape(-1)))
        self.register_buffer("base", torch.tensor([base], dtype=torch.float32))
        score = base + walk_trees(x, trees)
        weights, bias = _fit_logistic_head(np.concatenate([score[:, None], x], axis=1), y)
        self.head = nn.Linear(1 + FEATURES, 1)
        with torch.no_grad():
            self.head.weight.copy_(torch.from_numpy(weights[None].astype(np.float32)))
            self.head.bias.fill_(bias)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fraud probability and raw GBDT score (log-odds), both shape (batch, 1)."""
        # (batch, trees) flat node indices, every tree at its root.
        node = torch.zeros_like(features[:, :1], dtype=torch.int64) + self.roots
        for _ in range(self.depth):
            x = torch.gather(features, 1, self.feature[node])
            node = torch.where(x <= self.threshold[node], self.left[node], self.right[node])
        score = self.value[node].sum(dim=1, keepdim=True) + self.base
        probability = torch.sigmoid(self.head(torch.cat([score, features], dim=1)))
        return probability, score
