"""Embedding heads: a linear projection onto the unit sphere of dimension d."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class EmbeddingHead(nn.Module):
    """`normalize(W x + b)`: features [N, feature_dim] -> unit-norm embeddings [N, dim].

    With `trainable=False` the weights stay at their random initialisation (the default
    for the teacher head in GACD: a fixed random projection of the teacher's features).
    """

    def __init__(
        self,
        feature_dim: int,
        dim: int = 128,
        *,
        trainable: bool = True,
        eps: float = 1e-8,
        batchnorm: bool = False,
    ) -> None:
        super().__init__()
        if feature_dim <= 0 or dim <= 0:
            raise ValueError(f"feature_dim and dim must be positive, got {feature_dim}, {dim}")
        self.feature_dim = feature_dim
        self.dim = dim
        self.trainable = trainable
        self.eps = eps
        # Optional BatchNorm (no affine) on the input features: pooled ReLU features all lie
        # in one orthant, so without centring a fresh head maps every input into one narrow
        # cone and the contrastive loss starts from collapsed embeddings.
        self.norm = nn.BatchNorm1d(feature_dim, affine=False) if batchnorm else nn.Identity()
        self.linear = nn.Linear(feature_dim, dim)
        if not trainable:
            self.linear.requires_grad_(False)

    def forward(self, features: Tensor) -> Tensor:
        z = self.linear(self.norm(features))
        # Normalise in at least fp32: under bf16 autocast the projection comes out in bf16,
        # and the NCE scores a.b / T (T as small as 0.02) amplify its rounding error.
        dtype = torch.promote_types(z.dtype, torch.float32)
        return F.normalize(z.to(dtype), dim=-1, eps=self.eps)

    def extra_repr(self) -> str:
        return f"feature_dim={self.feature_dim}, dim={self.dim}, trainable={self.trainable}"
