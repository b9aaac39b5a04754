"""Image understanding: small convolutional classifiers with batch norm (plain, ResNet, MobileNetV2).

Stands for the image classifiers that tag uploaded photos, from the server-side ResNets to the
MobileNets that run on phones. Export hazards they exercise: batch norm with non-trivial running
statistics (folded or kept by the exporter), strided convolutions over dynamic height and width,
residual additions whose two branches must agree in size after stride-2 downsampling at odd sizes
(3x3 main path beside a 1x1 projection shortcut), depthwise convolutions (``groups == channels``),
ReLU6 (a ``Clip`` with bounds in ONNX), and global pooling that must not freeze the spatial size.
"""

from __future__ import annotations

import torch
from torch import nn

from toolchain.core import Dim, TaskCheck, exportable
from zoo._blocks import random_bn

__all__ = ["BasicBlock", "InvertedResidual", "MobileNetV2Small", "ResNetSmall", "SmallCNN"]


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    bn = random_bn(nn.BatchNorm2d(cout))
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
    tags=("vision", "classifier", "metric:accuracy"),
    checks=[TaskCheck.top1("logits")],
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


_IMAGE_DIMS = {
    "batch": Dim(example=4, min=1, max=256),
    "height": Dim(example=32, min=16, max=96),
    "width": Dim(example=32, min=16, max=96),
}


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN, plus the input (through a 1x1 conv-BN when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = random_bn(nn.BatchNorm2d(cout))
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = random_bn(nn.BatchNorm2d(cout))
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), random_bn(nn.BatchNorm2d(cout)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""
        y = torch.relu(self.bn1(self.conv1(x)))
        out: torch.Tensor = torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))
        return out


@exportable(
    name="image.resnet_small",
    inputs={"image": ("batch", 3, "height", "width")},
    outputs=["logits"],
    dims=_IMAGE_DIMS,
    tags=("vision", "classifier", "residual", "metric:accuracy"),
    checks=[TaskCheck.top1("logits")],
)
class ResNetSmall(nn.Module):
    """ResNet-style classifier: conv-BN-ReLU stem, 3 stages of 2 basic blocks (16-32-64), 10-way head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), random_bn(nn.BatchNorm2d(16)), nn.ReLU())
        blocks: list[nn.Module] = []
        cin = 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            blocks += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.stages = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(64, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Class logits, shape (batch, 10)."""
        logits: torch.Tensor = self.head(torch.flatten(self.pool(self.stages(self.stem(image))), 1))
        return logits


def _conv_bn_relu6(cin: int, cout: int, kernel: int, stride: int, groups: int = 1) -> nn.Sequential:
    conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)
    return nn.Sequential(conv, random_bn(nn.BatchNorm2d(cout)), nn.ReLU6())


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, linear 1x1 project; residual at stride 1, same width."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = [_conv_bn_relu6(cin, hidden, 1, 1)] if expand != 1 else []
        layers += [
            _conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            random_bn(nn.BatchNorm2d(cout)),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output, plus `x` when `residual`."""
        y: torch.Tensor = self.block(x)
        return x + y if self.residual else y


# NOTE: MobileNetV2's (expand, width, repeats, first stride) table at width multiplier 0.5, cut to its
# first 6 blocks (3 of them residual): under symbolic height and width each block costs about 1 s (CPU)
# of tracing across the four export paths, most of it in the torch.export-based ONNX exporter.
_MOBILENET_STAGES = ((1, 8, 1, 1), (6, 12, 2, 2), (6, 16, 3, 2))


@exportable(
    name="image.mobilenetv2_small",
    inputs={"image": ("batch", 3, "height", "width")},
    outputs=["logits"],
    dims=_IMAGE_DIMS,
    tags=("vision", "classifier", "mobile", "metric:accuracy"),
    checks=[TaskCheck.top1("logits")],
)
class MobileNetV2Small(nn.Module):
    """MobileNetV2-style classifier: stride-2 stem, 6 inverted residual blocks, 1x1 conv to 128, 10-way head."""

    def __init__(self) -> None:
        super().__init__()
        blocks: list[nn.Module] = [_conv_bn_relu6(3, 16, 3, 2)]
        cin = 16
        for expand, cout, repeats, stride in _MOBILENET_STAGES:
            for i in range(repeats):
                blocks.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        blocks.append(_conv_bn_relu6(cin, 128, 1, 1))
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(128, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Class logits, shape (batch, 10)."""
        logits: torch.Tensor = self.head(torch.flatten(self.pool(self.features(image)), 1))
        return logits
