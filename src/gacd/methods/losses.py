"""Loss pieces shared by several methods."""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor


def accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Fraction correct, as a detached 0-d tensor (no device sync)."""
    return (logits.detach().argmax(1) == labels).float().mean()


def kl_divergence(
    target_logits: Tensor, logits: Tensor, temperature: float = 1.0, reduction: str = "batchmean"
) -> Tensor:
    """KL(softmax(target / T) || softmax(logits / T)) in fp32. Reduction 'batchmean' (summed
    over classes, averaged over the batch: the KL itself, per sample, on average), 'mean'
    (averaged over batch x classes: `nn.KLDivLoss()`'s default, 1/C of batchmean, what ARD's,
    RSLAD's and AdaAD's CIFAR-10 code use) or 'none' (per sample)."""
    log_p = F.log_softmax(target_logits.float() / temperature, dim=1)
    log_q = F.log_softmax(logits.float() / temperature, dim=1)
    per_sample = (log_p.exp() * (log_p - log_q)).sum(dim=1)
    return reduce_kl(per_sample, reduction, logits.shape[1])


KLReduction = Literal["mean", "batchmean"]


def reduce_kl(per_sample: Tensor, reduction: str, num_classes: int) -> Tensor:
    """Reduce per-sample KLs (already summed over classes) as `kl_divergence` does."""
    if reduction == "none":
        return per_sample
    if reduction == "batchmean":
        return per_sample.mean()
    if reduction == "mean":
        return per_sample.mean() / num_classes
    raise ValueError(f"reduction must be 'batchmean', 'mean' or 'none', got {reduction!r}")


def soft_label_terms(
    target_adv: Tensor,
    logits_adv: Tensor,
    target: Tensor,
    logits: Tensor,
    labels: Tensor,
    weights: tuple[float, float],
    reduction: KLReduction,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The (terms, diagnostics) of a two-term soft-label loss, for `step_output`:
    w_adv * KL(target_adv || s(x')) + w_nat * KL(target || s(x)) (RSLAD, AdaAD), with the raw
    KLs and the student's accuracies on x and x'. The caller runs the networks, in its
    authors' order (BatchNorm statistics depend on it)."""
    kl_adv = kl_divergence(target_adv, logits_adv, reduction=reduction)
    kl_nat = kl_divergence(target, logits, reduction=reduction)
    w_adv, w_nat = weights
    terms = {"kl_adv": w_adv * kl_adv, "kl_nat": w_nat * kl_nat}
    diagnostics = {
        "kl_adv": kl_adv,
        "kl_nat": kl_nat,
        "acc": accuracy(logits, labels),
        "acc_adv": accuracy(logits_adv, labels),
    }
    return terms, diagnostics


def teacher_confidence(teacher_logits: Tensor, labels: Tensor) -> Tensor:
    """GACD's sample weights: the teacher's probability of the true class, detached."""
    probs = F.softmax(teacher_logits.detach().float(), dim=1)
    return probs.gather(1, labels[:, None]).squeeze(1)
