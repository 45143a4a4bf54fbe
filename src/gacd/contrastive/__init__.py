"""GACD's contrastive core: embedding heads, memory bank, class-aware negatives, NCE loss."""

from gacd.contrastive.collapse import (
    COLLAPSE_COSINE,
    EmbeddingCollapseWarning,
    collapse_message,
    cross_class_cosine,
    warn_if_collapsed,
)
from gacd.contrastive.heads import EmbeddingHead
from gacd.contrastive.memory import ClassAwareNegativeSampler, MemoryBank
from gacd.contrastive.nce import (
    NormalizerZ,
    estimate_log_z,
    log_z_from_scores,
    nce_loss,
    nce_loss_from_scores,
)

__all__ = [
    "COLLAPSE_COSINE",
    "ClassAwareNegativeSampler",
    "EmbeddingCollapseWarning",
    "EmbeddingHead",
    "MemoryBank",
    "NormalizerZ",
    "collapse_message",
    "cross_class_cosine",
    "estimate_log_z",
    "log_z_from_scores",
    "nce_loss",
    "nce_loss_from_scores",
    "warn_if_collapsed",
]
