"""Adaptive Adversarial Distillation, AdaAD (Huang et al., CVPR 2023); matches the 'AdaAD'
branch of `main.py` and `adaad_inner_loss` in `AT_helper.py` of boyellow/AdaAD by default.

loss = alpha * KL(t(x') || s(x')) + (1 - alpha) * KL(t(x) || s(x))

The inner attack makes the teacher take part: x' maximises KL(t(x') || s(x')), the gradient
flowing through both networks, both in eval mode, started at x + 0.001 * N(0, 1) (not
clamped). The teacher's logits in the loss are fixed targets (computed without gradient);
T = 1. alpha 1 (their default) keeps only the adversarial term.

KL reduction: `kl_reduction: mean` (default) averages over batch x classes, the
`nn.KLDivLoss()` of their CIFAR-10 branch; `batchmean` (sum over classes, mean over the
batch) is their CIFAR-100 branch, C times larger. Their CIFAR-10 script trains with a
16/255 budget in 4/255 steps (argparse defaults); the budget is the config's `attack.eps` /
`attack.step_size`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from gacd.attacks import model_kl
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
class AdaADOptions(MethodOptions):
    name: str = "adaad"
    alpha: float = 1.0  # weight of KL(t(x') || s(x')); 1 - alpha on KL(t(x) || s(x))
    kl_reduction: KLReduction = "mean"  # their CIFAR-10 nn.KLDivLoss(); batchmean: CIFAR-100

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"method.alpha: must be in [0, 1] for 'adaad', got {self.alpha}")


@register_method
class AdaAD(Method):
    name = "adaad"
    label = "AdaAD"
    Options = AdaADOptions
    needs_teacher = True
    # boyellow/AdaAD adaad_inner_loss: BN_eval (student in eval mode), teacher in eval mode,
    # x + 0.001 * randn, 10 steps.
    attack_defaults: ClassVar[dict[str, Any]] = TRADES_ATTACK

    def step(self, batch: Batch) -> Step:
        opts: AdaADOptions = self.options
        x, y = batch.images, batch.labels
        # The teacher is attacked too; attack_mode keeps it frozen and in eval mode.
        x_adv = self.adversary(
            lambda: model_kl(self.teacher, self.student), x, [self.student, self.teacher]
        )
        logits = self.student(x)
        logits_adv = self.student(x_adv)
        with torch.no_grad():
            teacher_logits = self.teacher(x)
            teacher_adv = self.teacher(x_adv)
        weights = (opts.alpha, 1.0 - opts.alpha)
        return step_output(
            *soft_label_terms(
                teacher_adv, logits_adv, teacher_logits, logits, y, weights, opts.kl_reduction
            )
        )
