from __future__ import annotations

import pytest
import torch
from torch import nn

import zoo.image
from toolchain.core.spec import FORMATS, SPECS

NEW = ["image.resnet_small", "image.mobilenetv2_small"]


def _build(name: str) -> nn.Module:
    model: nn.Module = SPECS.get(name).build()
    return model.eval()


def test_image_models_are_registered_with_every_path_and_the_same_dims() -> None:
    base = SPECS.get("image.cnn_small")
    for name in NEW:
        spec = SPECS.get(name)
        assert spec.formats == FORMATS
        assert dict(spec.dims) == dict(base.dims) and spec.inputs == base.inputs


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [
        ("image.cnn_small", 24_346, 24_346),
        ("image.resnet_small", 100_000, 1_000_000),
        ("image.mobilenetv2_small", 10_000, 1_000_000),
    ],
)
def test_parameter_count_in_range(name: str, low: int, high: int) -> None:
    assert low <= sum(p.numel() for p in _build(name).parameters()) <= high


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize(("height", "width"), [(16, 16), (32, 32), (65, 33), (96, 17)])
def test_logits_shape_at_declared_sizes(name: str, height: int, width: int) -> None:
    torch.manual_seed(0)
    with torch.no_grad():
        logits = _build(name)(torch.randn(2, 3, height, width))
    assert logits.shape == (2, 10) and bool(torch.isfinite(logits).all())


@pytest.mark.parametrize("name", NEW)
def test_batch_norm_stats_are_randomised(name: str) -> None:
    norms = [m for m in _build(name).modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms
    for bn in norms:
        assert bn.running_mean is not None and bn.running_var is not None
        assert bn.running_mean.abs().max() > 0.1 and (bn.running_var - 1).abs().max() > 0.1


def test_resnet_has_three_stages_of_two_residual_blocks_with_projection_shortcuts() -> None:
    blocks = [m for m in _build("image.resnet_small").modules() if isinstance(m, zoo.image.BasicBlock)]
    assert [b.conv2.out_channels for b in blocks] == [16, 16, 32, 32, 64, 64]
    projections = [b.shortcut for b in blocks if not isinstance(b.shortcut, nn.Identity)]
    assert len(projections) == 2
    for shortcut in projections:
        conv = shortcut[0]
        assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.stride == (2, 2)


def test_resnet_block_adds_its_input() -> None:
    block = next(m for m in _build("image.resnet_small").modules() if isinstance(m, zoo.image.BasicBlock))
    x = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        main = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x)))))
        torch.testing.assert_close(block(x), torch.relu(main + x))


def test_mobilenet_depthwise_convs_are_depthwise() -> None:
    model = _build("image.mobilenetv2_small")
    spatial = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    stem, depthwise = spatial[0], spatial[1:]
    assert stem.groups == 1 and len(depthwise) == 6
    for conv in depthwise:
        assert conv.groups == conv.in_channels == conv.out_channels > 1


def test_mobilenet_inverted_residuals() -> None:
    blocks = [m for m in _build("image.mobilenetv2_small").modules() if isinstance(m, zoo.image.InvertedResidual)]
    assert len(blocks) == 6
    assert [b.residual for b in blocks] == [False, False, True, False, True, True]
    assert sum(isinstance(m, nn.ReLU6) for m in blocks[1].modules()) == 2
    expand = blocks[1].block[0][0]
    assert isinstance(expand, nn.Conv2d) and expand.out_channels == 6 * expand.in_channels
    assert not isinstance(blocks[1].block[-1], nn.ReLU6)  # the projection is linear


def test_mobilenet_residual_block_adds_its_input() -> None:
    block = next(m for m in _build("image.mobilenetv2_small").modules() if getattr(m, "residual", False))
    assert isinstance(block, zoo.image.InvertedResidual)
    x = torch.randn(1, block.block[0][0].in_channels, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x), x + block.block(x))
