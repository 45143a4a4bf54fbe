"""Post-activation ResNets for 32x32 inputs: the CIFAR ResNet-18 and He et al.'s 6n+2 nets."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from gacd.models.archs import register_model
from gacd.models.classifier import ImageClassifier


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal convs (fan-out, ReLU gain), BN weight 1 / bias 0, zero linear biases.

    Shared by every CIFAR-style net so that all of them start from the same recipe.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            # `kaiming_normal_` takes fan-out as out_channels * k * k even for grouped convs,
            # where each input only reaches out_channels / groups outputs: for depthwise convs
            # that shrinks the std by sqrt(channels) per layer and MobileNetV2's eval-mode
            # output at init vanishes (~1e-9). Use the true per-group fan-out instead; for
            # ordinary convs (groups = 1) this is exactly `kaiming_normal_(mode="fan_out")`.
            kh, kw = m.kernel_size
            fan_out = m.out_channels // m.groups * kh * kw
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU.

    Where the shape changes the shortcut is a 1x1 strided conv + BN (option B of He et al.),
    not the parameter-free zero-padding of option A: it is simpler and works for any width
    ratio, at the cost of a few thousand extra parameters in the small CIFAR ResNets.
    """

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(ImageClassifier):
    """3x3 stem conv (stride 1, no max-pool: 32x32 inputs are already small), stages of
    basic blocks (the first stage at stride 1, each later one halving the resolution),
    global average pooling and a linear classifier."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        mean: Sequence[float],
        std: Sequence[float],
        widths: Sequence[int],
        blocks: Sequence[int],
    ) -> None:
        super().__init__(mean, std)
        if len(widths) != len(blocks):
            raise ValueError(f"widths {tuple(widths)} and blocks {tuple(blocks)} differ in length")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        stages: list[nn.Module] = []
        c = widths[0]
        for i, (width, n) in enumerate(zip(widths, blocks, strict=True)):
            layers: list[nn.Module] = []
            for j in range(n):
                layers.append(BasicBlock(c, width, stride=2 if i > 0 and j == 0 else 1))
                c = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.feature_dim = c
        self.classifier = nn.Linear(c, num_classes)
        init_weights(self)

    def features(self, x: Tensor) -> Tensor:
        return self.pool(self.stages(self.stem(x)))


@register_model("resnet18", label="ResNet-18", channels=3, size=32)
def resnet18(**kw: Any) -> ResNet:
    """CIFAR ResNet-18: [2, 2, 2, 2] blocks, widths 64-512; ~11.17M parameters at 10 classes."""
    return ResNet(widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2), **kw)


def _cifar_resnet(depth: int, **kw: Any) -> ResNet:
    # He et al. (2016), section 4.2: depth = 6n + 2, three stages of n blocks at 16/32/64.
    n = (depth - 2) // 6
    return ResNet(widths=(16, 32, 64), blocks=(n, n, n), **kw)


@register_model("resnet20", label="ResNet-20", channels=3, size=32)
def resnet20(**kw: Any) -> ResNet:
    """~0.27M parameters."""
    return _cifar_resnet(20, **kw)


@register_model("resnet32", label="ResNet-32", channels=3, size=32)
def resnet32(**kw: Any) -> ResNet:
    """~0.47M parameters."""
    return _cifar_resnet(32, **kw)


@register_model("resnet56", label="ResNet-56", channels=3, size=32)
def resnet56(**kw: Any) -> ResNet:
    """~0.86M parameters."""
    return _cifar_resnet(56, **kw)
