"""Robust Soft Label Adversarial Distillation (Zi et al. 2021); matches `rslad_loss.py` and
`resnet18_rslad_cifar10.py` of zibojia/RSLAD by default.

loss = adv_weight * KL(t(x) || s(x')) + nat_weight * KL(t(x) || s(x))

with the teacher's clean soft labels t(x) as the only target (no hard labels), T = 1,
and x' the training PGD attack maximising KL(t(x) || s(x')) with the student in eval mode,
started at x + 0.001 * N(0, 1) (not clamped) as in their code. Defaults 5/6 and 1/6 as in
the authors' code.

KL reduction: `kl_reduction: mean` (default) is the authors' `torch.mean` over the
[batch, classes] element-wise KL, i.e. batchmean / C; `batchmean` (sum over classes, mean
over the batch) is C times that (a C-fold learning-rate change under SGD). Their element-wise
KL writes the target's entropy term as p * log(p + 1e-5); that constant does not depend on
the student, so gradients are the same and the value differs by at most ~1e-5. Their inner
attack sums the KL over the batch, which only scales the gradient PGD takes the sign of.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from gacd.attacks import kl_to_reference
from gacd.data import Batch
from gacd.errors import ConfigError
from gacd.methods.base import (
    TRADES_ATTACK,
    Method,
    MethodOptions,
    Step,
    register_method,
    step_output,
)
from gacd.methods.losses import KLReduction, soft_label_terms


@dataclass
class RSLADOptions(MethodOptions):
    name: str = "rslad"
    adv_weight: float = 5.0 / 6.0  # KL(t(x) || s(x'))
    nat_weight: float = 1.0 / 6.0  # KL(t(x) || s(x))
    kl_reduction: KLReduction = "mean"  # the authors' torch.mean; batchmean: C times it

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
    # zibojia/RSLAD rslad_inner_loss: model.eval(), x + 0.001 * randn, 10 steps.
    attack_defaults: ClassVar[dict[str, Any]] = TRADES_ATTACK

    def step(self, batch: Batch) -> Step:
        opts: RSLADOptions = self.options
        x, y = batch.images, batch.labels
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        x_adv = self.adversary(
            lambda: kl_to_reference(self.student, teacher_logits), x, [self.student]
        )
        logits_adv = self.student(x_adv)
        logits = self.student(x)
        weights = (opts.adv_weight, opts.nat_weight)
        return step_output(
            *soft_label_terms(
                teacher_logits, logits_adv, teacher_logits, logits, y, weights, opts.kl_reduction
            )
        )
