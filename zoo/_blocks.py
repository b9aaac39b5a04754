"""Small building blocks shared by several zoo models."""

from __future__ import annotations

import math
from typing import TypeVar

import torch
from torch import nn

__all__ = ["position_table", "random_bn", "sinusoids"]

BN = TypeVar("BN", nn.BatchNorm1d, nn.BatchNorm2d)


def random_bn(bn: BN) -> BN:
    """Give `bn` random running statistics and affine parameters, so BN folding changes numbers.

    NOTE: fresh batch-norm statistics are the identity; exporters fold BN away, and only non-trivial
    statistics make a wrong fold visible.
    """
    n = bn.num_features
    bn.running_mean = torch.empty(n).uniform_(-0.5, 0.5)
    bn.running_var = torch.empty(n).uniform_(0.5, 2.0)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    return bn


def sinusoids(length: int, width: int) -> torch.Tensor:
    """The fixed sine/cosine position table of "Attention Is All You Need", shape (length, width)."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
    table = torch.zeros(length, width)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq)
    return table


def position_table(length: int, width: int) -> nn.Embedding:
    """A frozen embedding holding the sinusoid table, looked up by position index.

    NOTE: an Embedding rather than a buffer sliced with ``[:seq]``: a buffer needs a class-level
    annotation for mypy, which ``torch.jit.script`` cannot read under postponed annotations.
    """
    # NOTE: `from_pretrained` is unannotated in torch; the ignore is for strict mypy only.
    table: nn.Embedding = nn.Embedding.from_pretrained(sinusoids(length, width), freeze=True)  # type: ignore[no-untyped-call]
    return table
