"""Feed ranking: DLRM-style click models.

Stands for the ranking models behind a social network's feed: sparse id features (pages, authors,
topics) pooled by embedding bags, dense features through a bottom MLP, pairwise dot-product
interaction, and a top MLP to a click probability. Export hazards they exercise: ``EmbeddingBag``
(one ONNX ``Loop`` per table), int64 id inputs with a value domain, a dynamic batch, and in
``feed.dlrm_ragged`` ragged bags: flat id lists with per-example start offsets, each list with its own
dynamic length (``nnz0``..), including empty bags and a list of length 1. Every path keeps both.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from toolchain.core import Dim, Input, TaskCheck, exportable

__all__ = ["DLRMRagged", "DLRMSmall"]

NUM_TABLES, ROWS, BAG, EMBED, DENSE = 8, 1000, 4, 16, 13
RAGGED_TABLES = 4


def _mlp(*widths: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


@exportable(
    name="feed.dlrm_small",
    inputs={
        "dense": Input.normal(("batch", DENSE)),
        "sparse": Input.ids(("batch", NUM_TABLES, BAG), high=ROWS),
    },
    outputs=["score"],
    dims={"batch": Dim(example=8, min=1, max=512)},
    tags=("ranking", "feed", "metric:auc"),
    checks=[TaskCheck.ranking("score")],
)
class DLRMSmall(nn.Module):
    """DLRM-style ranker: 8 sum-pooled embedding bags, bottom/top MLPs, pairwise dot interaction."""

    def __init__(self) -> None:
        super().__init__()
        self.tables = nn.ModuleList(nn.EmbeddingBag(ROWS, EMBED, mode="sum") for _ in range(NUM_TABLES))
        self.bottom = _mlp(DENSE, 64, EMBED)
        n = NUM_TABLES + 1
        li, lj = torch.triu_indices(n, n, offset=1)
        self.register_buffer("li", li, persistent=False)
        self.register_buffer("lj", lj, persistent=False)
        self.top = _mlp(EMBED + n * (n - 1) // 2, 64, 32, 1)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        """Click probability, shape (batch, 1)."""
        x = self.bottom(dense)
        pooled = [table(sparse[:, t, :]) for t, table in enumerate(self.tables)]
        z = torch.stack([x, *pooled], dim=1)
        pairs = torch.bmm(z, z.transpose(1, 2))[:, self.get_buffer("li"), self.get_buffer("lj")]
        return torch.sigmoid(self.top(torch.cat([x, pairs], dim=1)))


class _Interaction(nn.Module):
    """Pairwise dot products between the dense vector and every pooled embedding, then the top MLP."""

    def __init__(self, vectors: int) -> None:
        super().__init__()
        li, lj = torch.triu_indices(vectors, vectors, offset=1)
        self.register_buffer("li", li, persistent=False)
        self.register_buffer("lj", lj, persistent=False)
        self.top = _mlp(EMBED + vectors * (vectors - 1) // 2, 64, 32, 1)

    def forward(self, x: torch.Tensor, pooled: list[torch.Tensor]) -> torch.Tensor:
        """Click probability from the bottom-MLP output `x` and the pooled embeddings."""
        z = torch.stack([x, *pooled], dim=1)
        pairs = torch.bmm(z, z.transpose(1, 2))[:, self.get_buffer("li"), self.get_buffer("lj")]
        return torch.sigmoid(self.top(torch.cat([x, pairs], dim=1)))


@exportable(
    name="feed.dlrm_ragged",
    inputs={
        "dense": Input.normal(("batch", DENSE)),
        **{f"ids{t}": Input.ids((f"nnz{t}",), high=ROWS) for t in range(RAGGED_TABLES)},
        **{f"offsets{t}": Input.offsets(("batch",), over=f"nnz{t}") for t in range(RAGGED_TABLES)},
    },
    outputs=["score"],
    dims={"batch": Dim(example=6, min=1, max=512), **{f"nnz{t}": Dim(example=14, min=1) for t in range(4)}},
    tags=("ranking", "feed", "ragged", "metric:auc"),
    checks=[TaskCheck.ranking("score")],
)
class DLRMRagged(nn.Module):
    """DLRM-style ranker over ragged features: per table a flat id list and per-example offsets."""

    def __init__(self) -> None:
        super().__init__()
        self.tables = nn.ModuleList(nn.EmbeddingBag(ROWS, EMBED, mode="sum") for _ in range(RAGGED_TABLES))
        self.bottom = _mlp(DENSE, 64, EMBED)
        self.interaction = _Interaction(RAGGED_TABLES + 1)

    def forward(
        self,
        dense: torch.Tensor,
        ids0: torch.Tensor,
        ids1: torch.Tensor,
        ids2: torch.Tensor,
        ids3: torch.Tensor,
        offsets0: torch.Tensor,
        offsets1: torch.Tensor,
        offsets2: torch.Tensor,
        offsets3: torch.Tensor,
    ) -> torch.Tensor:
        """Click probability, shape (batch, 1)."""
        ids, offsets = (ids0, ids1, ids2, ids3), (offsets0, offsets1, offsets2, offsets3)
        pooled = [table(i, o) for table, i, o in zip(self.tables, ids, offsets, strict=True)]
        return self.interaction(self.bottom(dense), pooled)  # type: ignore[no-any-return]
