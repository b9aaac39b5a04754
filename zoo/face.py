"""Face detection and matching: an embedder for face crops and two matchers over embedding pairs.

Stands for the face-verification service behind photo tagging: a detector (not modelled here) crops
and aligns faces, a CNN maps each crop to a unit-norm embedding, and a small linear model decides
whether two embeddings belong to the same person. Export hazards it exercises: PReLU with
per-channel slopes and batch norm with non-trivial running statistics (2-d in the backbone, 1-d on
the embedding) that exporters fold or keep, L2 normalisation (``F.normalize``: a norm, an ``eps``
clamp and a division) over a dynamic batch and crop size, and tiny two-input linear models whose
features (``|a - b|``, ``a * b``) hit the edge of an identical pair, where ``|a - b|`` is exactly 0.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from toolchain.core import Dim, Input, TaskCheck, exportable
from zoo._blocks import random_bn

__all__ = ["EMBED", "FaceEmbedder", "LogisticMatcher", "SvmMatcher", "pair_features"]

EMBED = 64
"""Embedding width shared by the embedder and the matchers."""

# NOTE: one coordinate of a random 64-d unit vector has a standard deviation of 1/8; uniform values in
# +-0.22 have the same spread (0.22 / sqrt(3) ~ 1/8), so generated embeddings have norm close to 1.
_COORD = 0.22


def _conv_bn_prelu(cin: int, cout: int, stride: int) -> nn.Sequential:
    prelu = nn.PReLU(cout)
    with torch.no_grad():
        prelu.weight.uniform_(0.05, 0.4)  # NOTE: per-channel slopes, not the shared 0.25 default
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), random_bn(nn.BatchNorm2d(cout)), prelu)


def _unit_rows(rng: np.random.Generator, rows: int) -> np.ndarray:
    x = rng.standard_normal((rows, EMBED))
    out: np.ndarray = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return out


def _pair_samples(seed: int) -> dict[str, dict[str, np.ndarray]]:
    """Unit-norm pairs as a face pipeline sees them: random identities, near-duplicates, identical pairs."""
    rng = np.random.default_rng(seed)
    a = _unit_rows(rng, 8)
    near = a + 0.1 * rng.standard_normal(a.shape).astype(np.float32)
    near /= np.linalg.norm(near, axis=1, keepdims=True)
    return {
        "unit-random": {"a": a, "b": _unit_rows(rng, 8)},
        "unit-near": {"a": a, "b": near},
        "unit-identical": {"a": a, "b": a.copy()},
        "unit-mixed": {"a": a[:3], "b": np.stack([a[0], near[1], -a[2]])},
    }


def pair_features(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Symmetric pair features ``[|a - b|, a * b]``, shape (batch, 2 * EMBED)."""
    return torch.cat([torch.abs(a - b), a * b], dim=1)


def _verifier_linear(*, diff: tuple[float, float], prod: tuple[float, float], bias: float) -> nn.Linear:
    """A seeded linear layer shaped like a trained verifier: penalises ``|a - b|``, rewards ``a * b``.

    NOTE: fully random weights would make "the same face scores higher" a coin flip; random magnitudes
    with the signs a trained model learns keep the weights seeded and the scores meaningful.
    """
    linear = nn.Linear(2 * EMBED, 1)
    with torch.no_grad():
        linear.weight[:, :EMBED].uniform_(*diff).neg_()
        linear.weight[:, EMBED:].uniform_(*prod)
        linear.bias.fill_(bias)
    return linear


@exportable(
    name="face.embedder",
    inputs={"face": Input.uniform(("batch", 3, "height", "width"), low=-1.0, high=1.0)},
    outputs=["embedding"],
    dims={
        "batch": Dim(example=4, min=1, max=256),
        "height": Dim(example=64, min=32, max=160),
        "width": Dim(example=64, min=32, max=160),
    },
    tags=("vision", "face", "embedding", "metric:cosine"),
    checks=[TaskCheck.cosine("embedding")],
)
class FaceEmbedder(nn.Module):
    """Conv-BN-PReLU backbone, pooled linear embedding with BN, L2-normalised to unit length.

    Input is an aligned face crop scaled to [-1, 1] (``(pixel - 127.5) / 127.5``); 64x64 is the
    export size, and global pooling lets the same weights take crops from 32 up to FaceNet's 160
    pixels (verified at 32, 64 and the odd 129, where every stride-2 layer rounds up).
    """

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            _conv_bn_prelu(3, 32, 2),
            _conv_bn_prelu(32, 64, 2),
            _conv_bn_prelu(64, 64, 1),
            _conv_bn_prelu(64, 128, 2),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(128, EMBED, bias=False)
        self.bn = random_bn(nn.BatchNorm1d(EMBED))

    def forward(self, face: torch.Tensor) -> torch.Tensor:
        """Unit-norm embeddings, shape (batch, EMBED)."""
        x = torch.flatten(self.pool(self.backbone(face)), 1)
        embedding: torch.Tensor = F.normalize(self.bn(self.fc(x)), dim=1)
        return embedding


_PAIR_INPUTS = {
    "a": Input.uniform(("batch", EMBED), low=-_COORD, high=_COORD),
    "b": Input.uniform(("batch", EMBED), low=-_COORD, high=_COORD),
}
_PAIR_DIMS = {"batch": Dim(example=8, min=1, max=1024)}


@exportable(
    name="face.match_lr",
    inputs=_PAIR_INPUTS,
    outputs=["probability"],
    dims=_PAIR_DIMS,
    tags=("face", "matcher", "linear", "metric:auc"),
    checks=[TaskCheck.ranking("probability")],
    samples=_pair_samples(1),
)
class LogisticMatcher(nn.Module):
    """Logistic regression on ``[|a - b|, a * b]``: probability that two embeddings are the same face."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = _verifier_linear(diff=(0.25, 0.75), prod=(6.0, 10.0), bias=-2.0)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Same-face probability, shape (batch, 1)."""
        probability: torch.Tensor = torch.sigmoid(self.linear(pair_features(a, b)))
        return probability


@exportable(
    name="face.match_svm",
    inputs=_PAIR_INPUTS,
    outputs=["margin"],
    dims=_PAIR_DIMS,
    tags=("face", "matcher", "linear", "metric:auc"),
    checks=[TaskCheck.ranking("margin")],
    samples=_pair_samples(2),
)
class SvmMatcher(nn.Module):
    """Linear SVM on ``[|a - b|, a * b]``: signed margin, positive for the same face."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = _verifier_linear(diff=(0.1, 0.3), prod=(2.0, 4.0), bias=0.5)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Decision margin ``w . f + b``, shape (batch, 1)."""
        margin: torch.Tensor = self.linear(pair_features(a, b))
        return margin
