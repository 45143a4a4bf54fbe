"""The model contract: [0, 1] images in, normalisation inside, logits out."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class ImageClassifier(nn.Module):
    """Base of every model: subclasses implement `features(x_normalised) -> pooled vector`
    and set `self.classifier` (an `nn.Linear` from `feature_dim` to the class count).

    Inputs are float images in [0, 1], NCHW; the per-channel normalisation is a buffer of
    the model, so attacks (and AutoAttack) work on raw pixels without wrappers.
    """

    feature_dim: int
    classifier: nn.Linear

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer(
            "mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        )
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return (penultimate pooled features [N, feature_dim], logits [N, classes])."""
        feats = self.features((x - self.mean) / self.std)
        return feats, self.classifier(feats)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)[1]
