"""Pre-activation ResNets (He et al., "Identity Mappings in Deep Residual Networks")."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from gacd.models.archs import register_model
from gacd.models.classifier import ImageClassifier
from gacd.models.resnet import init_weights

SHORTCUT_INPUTS = ("preact", "raw")


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3, plus the shortcut; no activation after the sum.

    Where the shape changes the shortcut is a 1x1 strided conv applied to the pre-activated
    input (so the BN-ReLU is shared by both paths, as in the wide-ResNet reference code);
    otherwise it is the identity on the raw input, keeping a clean identity path.
    `shortcut_input="raw"` feeds the projection the raw input instead, as He et al.'s
    pre-activation ResNet code (and checkpoints trained with it) do.
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        stride: int,
        dropout: float = 0.0,
        shortcut_input: str = "preact",
    ) -> None:
        super().__init__()
        if shortcut_input not in SHORTCUT_INPUTS:
            raise ValueError(
                f"shortcut_input must be one of {', '.join(SHORTCUT_INPUTS)}, "
                f"got {shortcut_input!r}"
            )
        self.raw_shortcut = shortcut_input == "raw"
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        # The in-place ReLU acts on the BN output, a new tensor, so `x` survives for the sum.
        pre = self.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(x if self.raw_shortcut else pre)
        out = self.conv1(pre)
        out = self.conv2(self.dropout(self.relu(self.bn2(out))))
        return out + skip


class PreActResNet(ImageClassifier):
    """3x3 stem conv (no BN/ReLU: the first block pre-activates), stages of pre-activation
    blocks (the first at stride 1, each later one halving the resolution), a final BN-ReLU
    (the blocks' outputs are un-normalised sums), global average pooling, linear classifier.

    `final_bn=False` drops the final BN-ReLU and `shortcut_input="raw"` feeds projection
    shortcuts the raw block input: together they are the common public PreActResNet-18 code
    that several RobustBench checkpoints were trained with.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        mean: Sequence[float],
        std: Sequence[float],
        stem_width: int,
        widths: Sequence[int],
        blocks: Sequence[int],
        dropout: float = 0.0,
        shortcut_input: str = "preact",
        final_bn: bool = True,
    ) -> None:
        super().__init__(mean, std)
        if len(widths) != len(blocks):
            raise ValueError(f"widths {tuple(widths)} and blocks {tuple(blocks)} differ in length")
        self.stem = nn.Conv2d(in_channels, stem_width, 3, padding=1, bias=False)
        stages: list[nn.Module] = []
        c = stem_width
        for i, (width, n) in enumerate(zip(widths, blocks, strict=True)):
            layers: list[nn.Module] = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                layers.append(
                    PreActBlock(c, width, stride, dropout=dropout, shortcut_input=shortcut_input)
                )
                c = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        final: list[nn.Module] = [nn.BatchNorm2d(c), nn.ReLU(inplace=True)] if final_bn else []
        self.head = nn.Sequential(*final, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.feature_dim = c
        self.classifier = nn.Linear(c, num_classes)
        init_weights(self)

    def features(self, x: Tensor) -> Tensor:
        return self.head(self.stages(self.stem(x)))


@register_model("preact_resnet18", label="PreActResNet-18", channels=3, size=32)
def preact_resnet18(**kw: Any) -> PreActResNet:
    """Pre-activation ResNet-18: [2, 2, 2, 2] blocks, widths 64-512; ~11.17M parameters.
    Pass `shortcut_input="raw", final_bn=False` for the other common variant (see
    PreActResNet)."""
    return PreActResNet(stem_width=64, widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2), **kw)
