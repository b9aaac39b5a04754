"""Feed ranking: a small DLRM-style click model.

Stands for the ranking models behind a social network's feed: sparse id features (pages, authors,
topics) pooled by embedding bags, dense features through a bottom MLP, pairwise dot-product
interaction, and a top MLP to a click probability. Export hazards it exercises: ``EmbeddingBag``
(one ONNX ``Loop`` per table), int64 id inputs with a value domain, and a dynamic batch.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from toolchain import Dim, Input, exportable

__all__ = ["DLRMSmall"]

NUM_TABLES, ROWS, BAG, EMBED, DENSE = 8, 1000, 4, 16, 13


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
    tags=("ranking", "feed"),
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
