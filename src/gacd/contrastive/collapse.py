"""Collapse detector for contrastive embeddings.

A contrastive student has collapsed when its embeddings of different classes point the same
way: the NCE critic then cannot tell a positive from a negative, and the features carry no
class information for the probe. The detector is the mean pairwise cosine between unit
embeddings of samples with different labels (about 0 for spread embeddings, 1 when collapsed).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

# Mean cross-class cosine above which the embeddings count as collapsed. Spread embeddings
# of 10 classes sit near 0; a student whose embeddings all bunch into one cone sits above 0.9.
COLLAPSE_COSINE = 0.9


class EmbeddingCollapseWarning(UserWarning):
    """The student's embeddings of different classes point the same way (see COLLAPSE_COSINE)."""


def cross_class_cosine(embeddings: Tensor, labels: Tensor) -> Tensor:
    """Mean cosine over the pairs (i, j) with labels[i] != labels[j], as a detached 0-d float
    tensor (NaN when the batch holds a single class). `embeddings` [N, d] need not be unit."""
    if embeddings.dim() != 2 or labels.shape != embeddings.shape[:1]:
        raise ValueError(
            f"need embeddings [N, d] and labels [N], got {tuple(embeddings.shape)} "
            f"and {tuple(labels.shape)}"
        )
    with torch.no_grad():
        e = F.normalize(embeddings.detach().float(), dim=1, eps=1e-8)
        cos = e @ e.T
        other = labels[:, None] != labels[None, :]
        count = other.sum()
        total = torch.where(other, cos, torch.zeros_like(cos)).sum()
        return total / count.clamp(min=1) + torch.where(count > 0, 0.0, float("nan"))


def collapse_message(value: float, epoch: int, threshold: float = COLLAPSE_COSINE) -> str | None:
    """The warning text when `value` (a mean cross-class cosine) exceeds `threshold`, else None."""
    if not value > threshold:
        return None
    return f"GACD collapse: mean cross-class cosine {value:.2f} > {threshold} at epoch {epoch}"


def warn_if_collapsed(value: float, epoch: int, threshold: float = COLLAPSE_COSINE) -> bool:
    """Issue an EmbeddingCollapseWarning when `value` exceeds `threshold`; True if it did."""
    message = collapse_message(value, epoch, threshold)
    if message is not None:
        warnings.warn(message, EmbeddingCollapseWarning, stacklevel=2)
    return message is not None
