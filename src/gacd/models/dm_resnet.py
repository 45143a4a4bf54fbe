"""DeepMind's pre-activation WideResNet and ResNet (Gowal et al. 2020; Rebuffi et al. 2021),
the architectures behind most of the strongest RobustBench CIFAR models.

They differ from the classic WRN / PreActResNet code in three ways that change the numbers,
so a checkpoint only reproduces its published accuracy with these exact computations:
strided 3x3 convs pad TensorFlow-style ("SAME": one row/column of zeros at the bottom/right
only, instead of one on every side), the activation may be Swish/SiLU, and in the ResNet
the projection shortcut is a 3x3 conv on the raw (not pre-activated) block input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from gacd.models.archs import register_model
from gacd.models.classifier import ImageClassifier
from gacd.models.resnet import init_weights
from gacd.models.wide_resnet import wrn_blocks_per_stage

# Swish is x * sigmoid(x), which is what nn.SiLU computes; the DeepMind code names it Swish.
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "swish": nn.SiLU, "silu": nn.SiLU}
DM_RESNET_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]()


def same_pad(x: Tensor, stride: int) -> Tensor:
    """Zero padding of a 3x3 conv's input as TensorFlow's "SAME" gives it on even sizes:
    one pixel on every side at stride 1, one at the bottom and right only at stride 2."""
    if stride == 1:
        return F.pad(x, (1, 1, 1, 1))
    if stride == 2:
        return F.pad(x, (0, 1, 0, 1))
    raise ValueError(f"stride must be 1 or 2, got {stride}")


class DMBlock(nn.Module):
    """BN-act, SAME-padded 3x3 conv (the stride), BN-act, 3x3 conv; plus the shortcut.

    The shortcut is the identity on the raw input when the shape is kept. Otherwise it is a
    strided conv: 1x1 on the pre-activated input (the WideResNet) or 3x3 SAME-padded on the
    raw input (the ResNet), as `shortcut_kernel` says.
    """

    def __init__(
        self, c_in: int, c_out: int, stride: int, activation: str, shortcut_kernel: int
    ) -> None:
        super().__init__()
        if shortcut_kernel not in (1, 3):
            raise ValueError(f"shortcut_kernel must be 1 or 3, got {shortcut_kernel}")
        self.stride = stride
        self.bn1 = nn.BatchNorm2d(c_in)
        self.act1 = _activation(activation)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=0, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.act2 = _activation(activation)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.shortcut: nn.Conv2d | None = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, shortcut_kernel, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pre = self.act1(self.bn1(x))
        if self.shortcut is None:
            skip = x
        elif self.shortcut.kernel_size == (1, 1):
            skip = self.shortcut(pre)
        else:
            skip = self.shortcut(same_pad(x, self.stride))
        out = self.conv1(same_pad(pre, self.stride))
        out = self.conv2(self.act2(self.bn2(out)))
        return out + skip


class _DMNet(ImageClassifier):
    """3x3 stem conv, stages of DMBlocks (the first at stride 1, each later one at stride 2),
    final BN-act, global average pooling (DeepMind pools a fixed 8x8 / 4x4 window, the whole
    map at 32x32 inputs), linear classifier."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        mean: Sequence[float],
        std: Sequence[float],
        stem_width: int,
        widths: Sequence[int],
        blocks: Sequence[int],
        activation: str,
        shortcut_kernel: int,
    ) -> None:
        super().__init__(mean, std)
        self.stem = nn.Conv2d(in_channels, stem_width, 3, padding=1, bias=False)
        stages: list[nn.Module] = []
        c = stem_width
        for i, (width, n) in enumerate(zip(widths, blocks, strict=True)):
            layers = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                layers.append(DMBlock(c, width, stride, activation, shortcut_kernel))
                c = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(
            nn.BatchNorm2d(c), _activation(activation), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.activation = activation
        self.feature_dim = c
        self.classifier = nn.Linear(c, num_classes)
        init_weights(self)

    def features(self, x: Tensor) -> Tensor:
        return self.head(self.stages(self.stem(x)))


class DMWideResNet(_DMNet):
    """DeepMind's WRN-depth-width: a 16-channel stem, three stages of widths 16w, 32w, 64w."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        mean: Sequence[float],
        std: Sequence[float],
        depth: int,
        width: int,
        activation: str = "swish",
    ) -> None:
        n = wrn_blocks_per_stage(depth)
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"DM WideResNet width must be an integer >= 1, got {width!r}")
        super().__init__(
            in_channels,
            num_classes,
            mean,
            std,
            stem_width=16,
            widths=(16 * width, 32 * width, 64 * width),
            blocks=(n, n, n),
            activation=activation,
            shortcut_kernel=1,
        )
        self.depth = depth
        self.width = width


class DMPreActResNet(_DMNet):
    """DeepMind's pre-activation ResNet-18/34: a 64-channel stem, four stages of 64-512."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        mean: Sequence[float],
        std: Sequence[float],
        depth: int = 18,
        activation: str = "swish",
    ) -> None:
        if depth not in DM_RESNET_BLOCKS:
            raise ValueError(f"DM pre-activation ResNet depth must be 18 or 34, got {depth!r}")
        super().__init__(
            in_channels,
            num_classes,
            mean,
            std,
            stem_width=64,
            widths=(64, 128, 256, 512),
            blocks=DM_RESNET_BLOCKS[depth],
            activation=activation,
            shortcut_kernel=3,
        )
        self.depth = depth


@register_model("dm_wrn", label="DeepMind WRN", channels=3, size=32)
def dm_wrn(*, depth: int, width: int, **kw: Any) -> DMWideResNet:
    """DeepMind WideResNet, e.g. `build_model("dm_wrn", depth=28, width=10,
    activation="silu", ...)` (RobustBench's Wang2023Better_WRN-28-10)."""
    return DMWideResNet(depth=depth, width=width, **kw)


@register_model("dm_preact_resnet", label="DeepMind PreActResNet", channels=3, size=32)
def dm_preact_resnet(**kw: Any) -> DMPreActResNet:
    """DeepMind pre-activation ResNet (depth 18 by default; ~11.2M parameters)."""
    return DMPreActResNet(**kw)
