"""Image understanding: a small convolutional classifier with batch norm.

Stands for the image classifiers that tag uploaded photos. Export hazards it exercises: batch norm
with non-trivial running statistics (folded or kept by the exporter), strided convolutions over
dynamic height and width, and global pooling that must not freeze the spatial size.
"""

from __future__ import annotations

import torch
from torch import nn

from toolchain import Dim, exportable

__all__ = ["SmallCNN"]


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    bn = nn.BatchNorm2d(cout)
    # NOTE: fresh BN stats are the identity; random ones make BN folding actually change numbers.
    bn.running_mean = torch.empty(cout).uniform_(-0.5, 0.5)
    bn.running_var = torch.empty(cout).uniform_(0.5, 2.0)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), bn, nn.ReLU())


@exportable(
    name="image.cnn_small",
    inputs={"image": ("batch", 3, "height", "width")},
    outputs=["logits"],
    dims={
        "batch": Dim(example=4, min=1, max=256),
        "height": Dim(example=32, min=16, max=96),
        "width": Dim(example=32, min=16, max=96),
    },
    tags=("vision", "classifier"),
)
class SmallCNN(nn.Module):
    """Three conv-BN-ReLU blocks, global average pooling and a 10-way linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(_conv_bn(3, 16, 1), _conv_bn(16, 32, 2), _conv_bn(32, 64, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(64, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Class logits, shape (batch, 10)."""
        logits: torch.Tensor = self.head(torch.flatten(self.pool(self.features(image)), 1))
        return logits
