"""Loss pieces shared by several methods."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Fraction correct, as a detached 0-d tensor (no device sync)."""
    return (logits.detach().argmax(1) == labels).float().mean()


def kl_divergence(
    target_logits: Tensor, logits: Tensor, temperature: float = 1.0, reduction: str = "batchmean"
) -> Tensor:
    """KL(softmax(target / T) || softmax(logits / T)) in fp32; reduction 'batchmean' or
    'none' (per sample)."""
    log_p = F.log_softmax(target_logits.float() / temperature, dim=1)
    log_q = F.log_softmax(logits.float() / temperature, dim=1)
    per_sample = (log_p.exp() * (log_p - log_q)).sum(dim=1)
    if reduction == "none":
        return per_sample
    if reduction == "batchmean":
        return per_sample.mean()
    raise ValueError(f"reduction must be 'batchmean' or 'none', got {reduction!r}")


def teacher_confidence(teacher_logits: Tensor, labels: Tensor) -> Tensor:
    """GACD's sample weights: the teacher's probability of the true class, detached."""
    probs = F.softmax(teacher_logits.detach().float(), dim=1)
    return probs.gather(1, labels[:, None]).squeeze(1)
