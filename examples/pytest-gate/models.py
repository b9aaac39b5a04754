"""The example project's models: one exports faithfully, one does not.

``example.scorer`` is a small MLP scorer; every export path matches eager. ``example.branchy`` takes a
Python branch on its batch size, as research code often does: the exporter specialises the branch it
saw at the export size (batch 3), so the exported graph is wrong at batch 1. The parity gate catches
that at the batch-1 sample set and names the module and source line.
"""

from __future__ import annotations

import torch
from torch import nn

from toolchain import Dim, Input, exportable

__all__ = ["Branchy", "Scorer"]

FEATURES = 8


@exportable(
    name="example.scorer",
    inputs={"features": Input.normal(("batch", FEATURES))},
    outputs=["score"],
    dims={"batch": Dim(example=4, min=1, max=256)},
    formats=["onnx", "torchscript"],
)
class Scorer(nn.Module):
    """Two-layer MLP to a probability."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(FEATURES, 16)
        self.out = nn.Linear(16, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Probability per row, shape (batch, 1)."""
        return torch.sigmoid(self.out(torch.relu(self.hidden(features))))


@exportable(
    name="example.branchy",
    inputs={"x": Input.normal(("batch", FEATURES))},
    outputs=["y"],
    dims={"batch": Dim(example=3)},
    formats=["onnx"],
)
class Branchy(nn.Module):
    """Doubles its output for batches larger than two: a branch no exported graph keeps."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(FEATURES, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Projection, doubled when the batch has more than two rows."""
        if x.shape[0] > 2:
            return self.proj(x) * 2
        return self.proj(x)
