"""A zoo-style family for evaluation and peers: one classifier interface, three seeded sets of weights.

``a_good`` is the reference the labels come from; ``b_near`` is it with small seeded noise on its
weights; ``c_weak`` has pure noise weights. Labels are the reference model's classes on fresh inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from toolchain.build.pipeline import export_package
from toolchain.core.spec import Dim, Input, ModelSpec

FEATURES, CLASSES = 8, 5
NAMES = ("family.a_good", "family.b_near", "family.c_weak")


class Scorer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(FEATURES, 16)
        self.head = nn.Linear(16, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.hidden(x)))


def good() -> Scorer:
    return Scorer()


def near() -> Scorer:
    model = Scorer()
    noise = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.005 * torch.randn(p.shape, generator=noise))
    return model


def weak() -> Scorer:
    model = Scorer()
    noise = torch.Generator().manual_seed(99)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=noise))
    return model


def spec(name: str, factory: object, *, tags: tuple[str, ...] = ("classifier", "metric:accuracy")) -> ModelSpec:
    return ModelSpec(
        name=name,
        factory=factory,  # type: ignore[arg-type]
        inputs={"x": Input.normal(("batch", FEATURES))},
        outputs=("logits",),
        dims={"batch": Dim(example=4, min=1, max=64)},
        tags=tags,
        seed=3,
    )


def labelled(n: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fresh inputs and the reference model's classes for them."""
    x = np.random.default_rng(seed).standard_normal((n, FEATURES)).astype(np.float32)
    torch.manual_seed(3)
    reference = good().eval()
    with torch.no_grad():
        labels = reference(torch.from_numpy(x)).argmax(dim=1).numpy()
    return x, labels.astype(np.int64)


@pytest.fixture(scope="session")
def family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("family")
    built = {}
    for name, factory in zip(NAMES, (good, near, weak), strict=True):
        result = export_package(spec(name, factory), out / name, formats=("onnx",), optimize=False)
        assert result, result.stages
        built[name] = out / name
    return built
