"""Small CNNs sized for 8x8 digits and 28x28 MNIST-format images."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from gacd.models.archs import register_model
from gacd.models.classifier import ImageClassifier


def _conv_block(c_in: int, c_out: int, batch_norm: bool = True) -> list[nn.Module]:
    if not batch_norm:  # conv with bias, no normalisation
        return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU()]
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


class SmallCNN(ImageClassifier):
    """Stages of (conv-BN-ReLU) x convs_per_stage, each stage but the last followed by a
    2x2 max-pool; then global average pooling and a linear classifier. `batch_norm=False`
    drops the BatchNorm layers (each sample's output then depends on that sample alone)."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        mean: Sequence[float],
        std: Sequence[float],
        widths: Sequence[int] = (32, 64, 128),
        convs_per_stage: int = 1,
        hidden: int = 0,
        spatial: int = 1,
        batch_norm: bool = True,
    ) -> None:
        super().__init__(mean, std)
        layers: list[nn.Module] = []
        c = in_channels
        for i, width in enumerate(widths):
            for _ in range(convs_per_stage):
                layers += _conv_block(c, width, batch_norm)
                c = width
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
        # spatial > 1 keeps a coarse spatial map (flattened) instead of a global average: on
        # 8x8 digits, where the pixels are the features, that keeps where strokes are.
        layers += [nn.AdaptiveAvgPool2d(spatial), nn.Flatten()]
        c = c * spatial * spatial
        if hidden > 0:
            layers += [nn.Linear(c, hidden), nn.ReLU()]
            c = hidden
        self.body = nn.Sequential(*layers)
        self.feature_dim = c
        self.classifier = nn.Linear(c, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)


# digits_cnn: ~230k parameters, 8 -> 4 -> 2, the 2x2 map flattened into a hidden layer (a
# global average here lost ~20 points of PGD accuracy for PGD-AT teachers).
register_model(
    "digits_cnn",
    SmallCNN,
    label="digits CNN",
    channels=1,
    size=8,
    defaults={"widths": (32, 64, 128), "spatial": 2, "hidden": 256},
)
# ~57k parameters: a smaller student for digits.
register_model(
    "digits_cnn_small",
    SmallCNN,
    label="small digits CNN",
    channels=1,
    size=8,
    defaults={"widths": (16, 32, 64), "spatial": 2, "hidden": 128},
)
# 28 -> 14 -> 7, two convs per stage.
register_model(
    "mnist_cnn",
    SmallCNN,
    label="MNIST CNN",
    channels=1,
    size=28,
    defaults={"widths": (32, 64, 128), "convs_per_stage": 2},
)
register_model(
    "mnist_cnn_small",
    SmallCNN,
    label="small MNIST CNN",
    channels=1,
    size=28,
    defaults={"widths": (16, 32, 64)},
)
