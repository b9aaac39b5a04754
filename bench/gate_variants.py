"""Model variants for the gate's scale benchmark: width / depth / sequence sweeps of five zoo-like families.

Importing this file registers ``$GATE_SCALE_COUNT`` specs (default: all 240), each under its own name
(``sweep.mlp.w32.d3``, ``sweep.seq.s16.w32.d2``, ...), taken round-robin over the families so that a
small count still covers every family. The families mirror the zoo's shapes at small sizes: an MLP
ranker head, a CNN image classifier, a 1-D convolutional text encoder over token ids (the sequence
sweep), a DLRM-style ranker with embedding bags, and a small attention encoder.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator

import torch
from torch import nn

from toolchain import Dim, Input, exportable

__all__ = ["VARIANTS", "register"]

VOCAB = 500


class MLP(nn.Module):
    """Ranker head: `depth` hidden layers of `width`."""

    def __init__(self, width: int, depth: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(16 if i == 0 else width, width), nn.ReLU()]
        self.body = nn.Sequential(*layers, nn.Linear(width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Score per row."""
        return torch.sigmoid(self.body(x))


class CNN(nn.Module):
    """Image classifier: `depth` conv-BN-ReLU blocks of `channels`, kernel `kernel`, global pooling."""

    def __init__(self, channels: int, depth: int, kernel: int) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        for i in range(depth):
            blocks += [nn.Conv2d(3 if i == 0 else channels, channels, kernel, padding=kernel // 2)]
            blocks += [nn.BatchNorm2d(channels), nn.ReLU()]
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(channels, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        return self.head(self.body(image).mean(dim=(2, 3)))


class SeqEncoder(nn.Module):
    """Text encoder over token ids: embedding, `depth` 1-D convolutions, mean pooling."""

    def __init__(self, width: int, depth: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, width)
        self.convs = nn.ModuleList(nn.Conv1d(width, width, 3, padding=1) for _ in range(depth))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Sentence embedding."""
        x = self.embed(ids).transpose(1, 2)
        for conv in self.convs:
            x = torch.relu(conv(x)) + x
        return x.mean(dim=2)


class Ranker(nn.Module):
    """DLRM-style: `tables` sum-pooled embedding bags and a dense MLP of `width`, concatenated."""

    def __init__(self, tables: int, embed: int, width: int) -> None:
        super().__init__()
        self.bags = nn.ModuleList(nn.EmbeddingBag(VOCAB, embed, mode="sum") for _ in range(tables))
        self.dense = nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Linear(width, embed))
        self.top = nn.Linear(embed * (tables + 1), 1)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        """Click probability."""
        pooled = [bag(sparse[:, i]) for i, bag in enumerate(self.bags)]
        return torch.sigmoid(self.top(torch.cat([self.dense(dense), *pooled], dim=1)))


class Attention(nn.Module):
    """Attention encoder: `depth` blocks of single-projection self-attention with `heads` heads."""

    def __init__(self, width: int, heads: int, depth: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.MultiheadAttention(width, heads, batch_first=True) for _ in range(depth))
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Contextual features, same shape as `x`."""
        for block in self.blocks:
            x = x + block(x, x, x, need_weights=False)[0]
        return self.norm(x)


def _variants() -> Iterator[tuple[str, dict[str, object], Callable[[], nn.Module]]]:
    """(name, exportable arguments, factory) per variant, round-robin over the families."""
    batch = {"batch": Dim(example=4, min=1, max=64)}
    mlp = [
        (f"sweep.mlp.w{w}.d{d}", {"inputs": {"x": ("batch", 16)}, "dims": batch}, lambda w=w, d=d: MLP(w, d))
        for w, d in itertools.product((8, 16, 24, 32, 48, 64, 96, 128), (1, 2, 3, 4, 5, 6))
    ]
    cnn = [
        (
            f"sweep.cnn.c{c}.d{d}.k{k}",
            {"inputs": {"image": ("batch", 3, 16, 16)}, "dims": batch},
            lambda c=c, d=d, k=k: CNN(c, d, k),
        )
        for c, d, k in itertools.product((4, 8, 12, 16, 24, 32), (1, 2, 3, 4), (3, 5))
    ]
    seq = [
        (
            f"sweep.seq.s{s}.w{w}.d{d}",
            {
                "inputs": {"ids": Input.ids(("batch", "seq"), high=VOCAB)},
                "dims": {**batch, "seq": Dim(example=s, min=1, max=4 * s)},
            },
            lambda w=w, d=d: SeqEncoder(w, d),
        )
        for s, w, d in itertools.product((4, 8, 12, 16, 24, 32), (8, 16, 32, 64), (1, 2))
    ]
    ranker = [
        (
            f"sweep.ranker.t{t}.e{e}.w{w}",
            {"inputs": {"dense": ("batch", 8), "sparse": Input.ids(("batch", t, 3), high=VOCAB)}, "dims": batch},
            lambda t=t, e=e, w=w: Ranker(t, e, w),
        )
        for t, e, w in itertools.product((1, 2, 3, 4), (4, 8, 16), (16, 32, 48, 64))
    ]
    attention = [
        (
            f"sweep.attn.s{s}.w{w}.h{h}.d{d}",
            {"inputs": {"x": ("batch", "seq", w)}, "dims": {**batch, "seq": Dim(example=s, min=1, max=4 * s)}},
            lambda w=w, h=h, d=d: Attention(w, h, d),
        )
        for s, w, h, d in itertools.product((4, 8, 16, 32), (16, 32), (1, 2), (1, 2, 3))
    ]
    for group in itertools.zip_longest(mlp, cnn, seq, ranker, attention):
        yield from (v for v in group if v is not None)


VARIANTS = list(_variants())


def register(count: int) -> list[str]:
    """Register the first `count` variants; return their names."""
    names = []
    for name, kwargs, build in VARIANTS[:count]:

        def factory(build: Callable[[], nn.Module] = build) -> nn.Module:
            return build()

        factory.__qualname__ = factory.__name__ = name.replace(".", "_")
        exportable(name=name, tags=("sweep",), formats=["onnx", "onnx_legacy"], **kwargs)(factory)  # type: ignore[arg-type]
        names.append(name)
    return names


register(int(os.environ.get("GATE_SCALE_COUNT", len(VARIANTS))))
