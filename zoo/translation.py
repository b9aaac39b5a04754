"""Translation: a small encoder-decoder Transformer, teacher-forced and as a greedy decoder.

Stands for the models that translate posts and comments between languages. Export hazards they
exercise: two independent symbolic lengths (source and target), a causal mask built inside
``forward`` from the target length, cross-attention under the source padding mask (its keys and
values computed once and reused by every decoding step), and a greedy decoding loop of a constant
number of steps whose sequence grows by one token per step, with ``argmax`` picking integer tokens
that every artifact must reproduce exactly (an argmax near-tie would make that ill-posed; the tests
check the margin on the generated samples).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from toolchain.core import Dim, Input, TaskCheck, exportable
from zoo._blocks import position_table

__all__ = ["GreedyDecoder", "Seq2Seq"]

VOCAB, D_MODEL, HEADS, FF, LAYERS, MAX_LEN = 500, 64, 4, 128, 2, 64
PAD, BOS, EOS, FIRST_WORD = 0, 1, 2, 3
MAX_STEPS = 4
"""Tokens the greedy decoder emits per sentence (BOS not counted).

NOTE: export cost grows with it, as every path but the script unrolls the loop. Measured on 2 CPU
cores for all four paths with verification: 8 steps took 120 s (onnx export alone 50 s), 4 steps 70 s.
"""

_DIMS = {"batch": Dim(example=4, min=1, max=32), "src_len": Dim(example=12, min=1, max=MAX_LEN)}


class _Attention(nn.Module):
    """Multi-head attention of `x` over keys and values projected from a memory (itself for self-attention)."""

    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(D_MODEL, D_MODEL)
        self.kv = nn.Linear(D_MODEL, 2 * D_MODEL)
        self.proj = nn.Linear(D_MODEL, D_MODEL)
        # NOTE: sizes as attributes: torch.jit.script cannot read module-level globals.
        self.heads, self.head_dim = HEADS, D_MODEL // HEADS

    def keys_values(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of `memory` (batch, s, D_MODEL), each (batch, heads, s, head_dim)."""
        kv = self.kv(memory).reshape(memory.shape[0], memory.shape[1], 2, self.heads, self.head_dim)
        kv = kv.permute(2, 0, 3, 1, 4)
        return kv[0], kv[1]

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """`x` (batch, t, D_MODEL) attends to `k`, `v` where `keep` is True.

        `keep` broadcasts to (batch, heads, t, s): (batch, 1, 1, s) for padding, (t, s) for causality.
        """
        batch, t, width = x.shape[0], x.shape[1], x.shape[2]
        q = self.q(x).reshape(batch, t, self.heads, self.head_dim).transpose(1, 2)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        out: torch.Tensor = self.proj(att.transpose(1, 2).reshape(batch, t, width))
        return out


def _feed_forward() -> nn.Sequential:
    return nn.Sequential(nn.Linear(D_MODEL, FF), nn.GELU(), nn.Linear(FF, D_MODEL))


class _EncoderLayer(nn.Module):
    """Pre-norm self-attention under the source padding mask, then feed-forward."""

    def __init__(self) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(D_MODEL), _Attention()
        self.norm2, self.ff = nn.LayerNorm(D_MODEL), _feed_forward()

    def forward(self, x: torch.Tensor, src_keep: torch.Tensor) -> torch.Tensor:
        """Encoded `x`, same shape."""
        h = self.norm1(x)
        k, v = self.attn.keys_values(h)
        x = x + self.attn(h, k, v, src_keep)
        out: torch.Tensor = x + self.ff(self.norm2(x))
        return out


class _DecoderLayer(nn.Module):
    """Pre-norm causal self-attention, cross-attention to the source, then feed-forward."""

    def __init__(self) -> None:
        super().__init__()
        self.norm1, self.self_attn = nn.LayerNorm(D_MODEL), _Attention()
        self.norm2, self.cross_attn = nn.LayerNorm(D_MODEL), _Attention()
        self.norm3, self.ff = nn.LayerNorm(D_MODEL), _feed_forward()

    def forward(
        self,
        x: torch.Tensor,
        cross_k: torch.Tensor,
        cross_v: torch.Tensor,
        causal: torch.Tensor,
        src_keep: torch.Tensor,
    ) -> torch.Tensor:
        """Decoded `x`, same shape; `cross_k`, `cross_v` are this layer's keys and values of the source."""
        h = self.norm1(x)
        k, v = self.self_attn.keys_values(h)
        x = x + self.self_attn(h, k, v, causal)
        x = x + self.cross_attn(self.norm2(x), cross_k, cross_v, src_keep)
        out: torch.Tensor = x + self.ff(self.norm3(x))
        return out


@exportable(
    name="translation.seq2seq",
    inputs={
        "src": Input.ids(("batch", "src_len"), low=FIRST_WORD, high=VOCAB),
        "src_mask": Input.padding_mask(("batch", "src_len")),
        "tgt": Input.ids(("batch", "tgt_len"), high=VOCAB),
    },
    outputs=["logits"],
    dims={**_DIMS, "tgt_len": Dim(example=10, min=1, max=MAX_LEN)},
    tags=("translation", "text", "encoder-decoder", "metric:accuracy"),
    checks=[TaskCheck.top1("logits")],
)
class Seq2Seq(nn.Module):
    """Encoder-decoder Transformer (d_model 64, 4 heads, 2+2 layers, shared 500-token vocabulary)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, D_MODEL)
        self.position = position_table(MAX_LEN, D_MODEL)
        self.encoder = nn.ModuleList(_EncoderLayer() for _ in range(LAYERS))
        self.encoder_norm = nn.LayerNorm(D_MODEL)
        self.decoder = nn.ModuleList(_DecoderLayer() for _ in range(LAYERS))
        self.decoder_norm = nn.LayerNorm(D_MODEL)
        # NOTE: untied from `embed`: with tied weights a random-weight decoder's state is closest to
        # its own input token's embedding, so greedy decoding emitted BOS at every step (measured).
        self.out = nn.Linear(D_MODEL, VOCAB)

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], dtype=torch.int64, device=tokens.device)
        x: torch.Tensor = self.embed(tokens) + self.position(positions)
        return x

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each decoder layer's cross-attention keys and values of the source, computed once."""
        x = self._embed(src)
        keep = src_mask[:, None, None, :]
        for layer in self.encoder:
            x = layer(x, keep)
        memory = self.encoder_norm(x)
        source: list[tuple[torch.Tensor, torch.Tensor]] = []
        for block in self.decoder:
            assert isinstance(block, _DecoderLayer)
            source.append(block.cross_attn.keys_values(memory))
        return source

    def decode(
        self, tgt: torch.Tensor, source: list[tuple[torch.Tensor, torch.Tensor]], src_mask: torch.Tensor
    ) -> torch.Tensor:
        """Final decoder states at every target position, shape (batch, tgt_len, D_MODEL)."""
        index = torch.arange(tgt.shape[1], device=tgt.device)
        causal = index[None, :] <= index[:, None]  # (tgt_len, tgt_len): position t sees 0..t
        keep = src_mask[:, None, None, :]
        x = self._embed(tgt)
        for i, layer in enumerate(self.decoder):
            x = layer(x, source[i][0], source[i][1], causal, keep)
        states: torch.Tensor = self.decoder_norm(x)
        return states

    def forward(self, src: torch.Tensor, src_mask: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits, shape (batch, tgt_len, VOCAB); position t depends on tgt[:, : t + 1]."""
        logits: torch.Tensor = self.out(self.decode(tgt, self.encode(src, src_mask), src_mask))
        return logits


@exportable(
    name="translation.greedy_decoder",
    inputs={
        "src": Input.ids(("batch", "src_len"), low=FIRST_WORD, high=VOCAB),
        "src_mask": Input.padding_mask(("batch", "src_len")),
    },
    outputs=["tokens"],
    dims=_DIMS,
    tags=("translation", "text", "generation"),
)
class GreedyDecoder(nn.Module):
    """Greedy decoding with `Seq2Seq`: encode once, then MAX_STEPS argmax steps from BOS.

    A row that has emitted EOS emits PAD afterwards. There is no key/value cache: each step
    re-decodes the whole prefix, so a trace or ``torch.export`` unrolls MAX_STEPS decoder passes of
    lengths 1..MAX_STEPS, while ``torch.jit.script`` keeps one loop.
    """

    def __init__(self) -> None:
        super().__init__()
        self.seq2seq = Seq2Seq()  # NOTE: built first, so the same seed gives `Seq2Seq`'s weights.
        self.steps, self.pad, self.bos, self.eos = MAX_STEPS, PAD, BOS, EOS

    def forward(self, src: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
        """Generated token ids, int64 of shape (batch, MAX_STEPS), BOS excluded."""
        source = self.seq2seq.encode(src, src_mask)
        tokens = torch.full((src.shape[0], 1), self.bos, dtype=torch.int64, device=src.device)
        finished = torch.zeros((src.shape[0],), dtype=torch.bool, device=src.device)
        for _ in range(self.steps):
            states = self.seq2seq.decode(tokens, source, src_mask)
            step = self.seq2seq.out(states[:, -1]).argmax(-1)
            step = torch.where(finished, torch.full_like(step, self.pad), step)
            finished = finished | (step == self.eos)
            tokens = torch.cat([tokens, step.unsqueeze(1)], dim=1)
        return tokens[:, 1:]
