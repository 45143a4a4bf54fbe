"""Robust Soft Label Adversarial Distillation (Zi et al. 2021).

loss = adv_weight * KL(t(x) || s(x')) + nat_weight * KL(t(x) || s(x))

with the teacher's clean soft labels t(x) as the only target (no hard labels), T = 1,
and x' the training PGD attack maximising KL(t(x) || s(x')). Defaults 5/6 and 1/6 as in
the authors' code.

KL reduction: the authors' training loss takes `torch.mean` over the [batch, classes]
element-wise KL, i.e. batchmean / C; we use batchmean (sum over classes, mean over the
batch) like every other KL in this package, so the loss is C times theirs (a C-fold
learning-rate change under SGD). Their inner attack sums the KL over the batch, which
only scales the gradient that PGD takes the sign of, so it is the same attack. They start
the attack at x + 0.001 * N(0, 1); ours starts uniformly in the eps-ball like every other
PGD here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from gacd.attacks import kl_to_reference
from gacd.data import Batch
from gacd.errors import ConfigError
from gacd.methods.base import Method, MethodOptions, register_method
from gacd.methods.losses import accuracy, kl_divergence


@dataclass
class RSLADOptions(MethodOptions):
    name: str = "rslad"
    adv_weight: float = 5.0 / 6.0  # KL(t(x) || s(x'))
    nat_weight: float = 1.0 / 6.0  # KL(t(x) || s(x))

    def __post_init__(self) -> None:
        if self.adv_weight < 0 or self.nat_weight < 0:
            raise ConfigError(
                f"method.adv_weight, method.nat_weight: must be >= 0, got "
                f"{self.adv_weight} and {self.nat_weight}"
            )


@register_method
class RSLAD(Method):
    name = "rslad"
    label = "RSLAD"
    Options = RSLADOptions
    needs_teacher = True

    def step(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        opts: RSLADOptions = self.options
        x, y = batch.images, batch.labels
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        x_adv = self.adversary(
            lambda: kl_to_reference(self.student, teacher_logits), x, [self.student]
        )
        logits_adv = self.student(x_adv)
        logits = self.student(x)
        kl_adv = kl_divergence(teacher_logits, logits_adv)
        kl_nat = kl_divergence(teacher_logits, logits)
        loss = opts.adv_weight * kl_adv + opts.nat_weight * kl_nat
        return loss, {
            "kl_adv": kl_adv.detach(),
            "kl_nat": kl_nat.detach(),
            "acc": accuracy(logits, y),
            "acc_adv": accuracy(logits_adv, y),
        }
