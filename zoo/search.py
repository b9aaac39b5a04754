"""Search: a Transformer text encoder and a two-tower query/document relevance model.

Stands for the retrieval models behind a social network's search box: a text encoder whose pooled
embedding goes into a nearest-neighbour index, and a two-tower scorer that ranks documents for a
query. Export hazards they exercise: padding masks as boolean inputs that must reach both attention
and pooling, a sequence length that is symbolic in the attention reshapes, sinusoidal positions
gathered by ``arange(seq)`` (a trace must not freeze it), ``EmbeddingBag`` with
``per_sample_weights``, two independent symbolic lengths in one model, and cosine similarity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from toolchain.core import Dim, Input, TaskCheck, exportable
from zoo._blocks import position_table

__all__ = ["TextEncoder", "TwoTower"]

VOCAB, D_MODEL, HEADS, FF, LAYERS, MAX_LEN = 1000, 64, 4, 128, 2, 128


class _EncoderLayer(nn.Module):
    """Pre-norm self-attention + feed-forward block with a key padding mask.

    NOTE: written by hand instead of ``nn.TransformerEncoderLayer``. Measured with torch 2.13: in
    eval mode without grad (how the eager reference runs) the built-in layer takes its "fast path"
    and packs the padded batch into a nested tensor, so eager and the captured graphs run different
    kernels; and the TorchScript-based ONNX exporter baked the export ``seq`` into a Reshape of
    ``nn.MultiheadAttention``'s padding mask, failing at seq 1 and 33. With
    ``F.scaled_dot_product_attention`` every path captures the code eager runs.
    """

    def __init__(self) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(D_MODEL)
        self.qkv = nn.Linear(D_MODEL, 3 * D_MODEL)
        self.proj = nn.Linear(D_MODEL, D_MODEL)
        self.norm2 = nn.LayerNorm(D_MODEL)
        self.ff = nn.Sequential(nn.Linear(D_MODEL, FF), nn.GELU(), nn.Linear(FF, D_MODEL))
        # NOTE: sizes as attributes: torch.jit.script cannot read module-level globals.
        self.heads, self.head_dim = HEADS, D_MODEL // HEADS

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """`x` (batch, seq, D_MODEL); `keep` (batch, 1, 1, seq) is True where a key may be attended."""
        batch, seq, width = x.shape[0], x.shape[1], x.shape[2]
        qkv = self.qkv(self.norm1(x)).reshape(batch, seq, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=keep)
        x = x + self.proj(att.transpose(1, 2).reshape(batch, seq, width))
        out: torch.Tensor = x + self.ff(self.norm2(x))
        return out


class _Encoder(nn.Module):
    """Token embedding + sinusoidal positions, `layers` encoder layers and a final LayerNorm."""

    def __init__(self, layers: int) -> None:
        super().__init__()
        self.token = nn.Embedding(VOCAB, D_MODEL)
        self.position = position_table(MAX_LEN, D_MODEL)
        self.layers = nn.ModuleList(_EncoderLayer() for _ in range(layers))
        self.norm = nn.LayerNorm(D_MODEL)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Masked mean of the final states over real tokens, shape (batch, D_MODEL)."""
        positions = torch.arange(tokens.shape[1], dtype=torch.int64, device=tokens.device)
        x = self.token(tokens) + self.position(positions)
        keep = mask[:, None, None, :]
        for layer in self.layers:
            x = layer(x, keep)
        weights = mask.unsqueeze(-1).to(x.dtype)
        pooled: torch.Tensor = (self.norm(x) * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return pooled


@exportable(
    name="search.text_encoder",
    inputs={
        "tokens": Input.ids(("batch", "seq"), high=VOCAB),
        "mask": Input.padding_mask(("batch", "seq")),
    },
    # NOTE: not "embedding": torch.onnx.export(dynamo=True) names the aten.embedding value
    # "embedding" and renames the graph output onto it, an invalid model (duplicate name).
    outputs=["text_embedding"],
    dims={"batch": Dim(example=4, min=1, max=64), "seq": Dim(example=16, min=1, max=MAX_LEN)},
    tags=("search", "text", "encoder", "metric:cosine"),
    checks=[TaskCheck.cosine("text_embedding")],
)
class TextEncoder(nn.Module):
    """Two-layer Transformer text encoder (d_model 64, 4 heads) with masked mean pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = _Encoder(LAYERS)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Text embedding, shape (batch, 64); padded positions (mask False) do not contribute."""
        embedding: torch.Tensor = self.encoder(tokens, mask)
        return embedding


class _BagTower(nn.Module):
    """Masked mean of token embeddings (an ``EmbeddingBag`` weighted by the mask), then an MLP.

    NOTE: the ids are flattened and the bag offsets passed explicitly. Measured with torch 2.13: given
    the 2-D ids, ``EmbeddingBag`` derives the bag count as ``ceil(batch * qlen / qlen)``, and
    ``torch.export`` guards that count >= 2, so the saved ``.pt2`` refused ``batch=1`` ("Guard failed:
    (-1 + qlen + batch * qlen) // qlen >= 2") while the ONNX graph from the same capture ran.
    With ``offsets = arange(batch) * qlen`` the count is ``batch`` itself and no guard is added.
    """

    def __init__(self) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(VOCAB, D_MODEL, mode="sum")
        self.mlp = nn.Sequential(nn.Linear(D_MODEL, FF), nn.ReLU(), nn.Linear(FF, D_MODEL))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Query vector, shape (batch, D_MODEL)."""
        batch, length = tokens.shape[0], tokens.shape[1]
        weights = mask.to(torch.float32)
        weights = weights / weights.sum(1, keepdim=True).clamp(min=1.0)
        offsets = torch.arange(batch, dtype=torch.int64, device=tokens.device) * length
        pooled = self.bag(tokens.reshape(-1), offsets, per_sample_weights=weights.reshape(-1))
        out: torch.Tensor = self.mlp(pooled)
        return out


@exportable(
    name="search.two_tower",
    inputs={
        "query": Input.ids(("batch", "qlen"), high=VOCAB),
        "query_mask": Input.padding_mask(("batch", "qlen")),
        "doc": Input.ids(("batch", "dlen"), high=VOCAB),
        "doc_mask": Input.padding_mask(("batch", "dlen")),
    },
    outputs=["score"],
    dims={
        "batch": Dim(example=4, min=1, max=64),
        "qlen": Dim(example=8, min=1, max=32),
        "dlen": Dim(example=24, min=1, max=MAX_LEN),
    },
    tags=("search", "retrieval", "ranking", "metric:auc"),
    checks=[TaskCheck.ranking("score")],
)
class TwoTower(nn.Module):
    """Query bag-of-words tower and one-layer Transformer document tower, scored by cosine similarity."""

    def __init__(self) -> None:
        super().__init__()
        self.query_tower = _BagTower()
        self.doc_tower = _Encoder(1)

    def forward(
        self, query: torch.Tensor, query_mask: torch.Tensor, doc: torch.Tensor, doc_mask: torch.Tensor
    ) -> torch.Tensor:
        """Cosine similarity of each query with its document, shape (batch,), in [-1, 1]."""
        q = F.normalize(self.query_tower(query, query_mask), dim=-1)
        d = F.normalize(self.doc_tower(doc, doc_mask), dim=-1)
        return (q * d).sum(-1)
