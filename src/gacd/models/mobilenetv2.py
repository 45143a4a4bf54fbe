"""MobileNetV2 (Sandler et al., 2018) adapted to 32x32 inputs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from gacd.models.archs import register_model
from gacd.models.classifier import ImageClassifier
from gacd.models.resnet import init_weights

# (expansion t, output channels c, repeats n, first stride s) from the paper's Table 2, except
# the 24-channel stage at stride 1 instead of 2: together with a stride-1 stem this keeps
# 32x32 inputs at 32 -> 16 -> 8 -> 4 instead of shrinking them to 1x1 (total stride 8, not 32).
CIFAR_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a scaled channel count to a multiple of `divisor`, never losing more than 10%."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _conv_bn_relu6(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1) -> list:
    return [
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU6(inplace=True),
    ]


class InvertedResidual(nn.Module):
    """1x1 expansion (skipped when t = 1), 3x3 depthwise, linear 1x1 projection (no activation:
    the bottleneck is low-dimensional and ReLU would destroy information there); residual
    only where input and output shapes match."""

    def __init__(self, c_in: int, c_out: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = c_in * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += _conv_bn_relu6(c_in, hidden, 1)
        layers += _conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden)
        layers += [nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out)]
        self.body = nn.Sequential(*layers)
        self.use_residual = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        out = self.body(x)
        return x + out if self.use_residual else out


class MobileNetV2(ImageClassifier):
    """Stride-1 3x3 stem conv to 32 channels, inverted residual stages, 1x1 conv to 1280
    channels, global average pooling and a linear classifier (no dropout, unlike ImageNet)."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        mean: Sequence[float],
        std: Sequence[float],
        width_mult: float = 1.0,
        settings: Sequence[tuple[int, int, int, int]] = CIFAR_SETTINGS,
    ) -> None:
        super().__init__(mean, std)
        if width_mult <= 0:
            raise ValueError(f"width_mult must be positive, got {width_mult!r}")
        c = make_divisible(32 * width_mult)
        layers: list[nn.Module] = _conv_bn_relu6(in_channels, c, 3)
        for t, channels, n, s in settings:
            c_out = make_divisible(channels * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(c, c_out, stride=s if i == 0 else 1, expansion=t))
                c = c_out
        # As in the paper, the last conv is never made narrower than 1280 channels.
        last = make_divisible(1280 * width_mult) if width_mult > 1.0 else 1280
        layers += _conv_bn_relu6(c, last, 1)
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.width_mult = width_mult
        self.feature_dim = last
        self.classifier = nn.Linear(last, num_classes)
        init_weights(self)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)


@register_model("mobilenetv2", label="MobileNetV2", channels=3, size=32)
def mobilenetv2(**kw: Any) -> MobileNetV2:
    """MobileNetV2 for 32x32 inputs; pass `width_mult` to scale the channels (~2.2M at 1.0)."""
    return MobileNetV2(**kw)
