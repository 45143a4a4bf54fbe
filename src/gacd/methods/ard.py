"""Adversarially Robust Distillation (Goldblum et al. 2020); matches `main.py` of
goldblum/AdversariallyRobustDistillation by default.

loss = alpha * T^2 * KL(softmax(t(x) / T) || softmax(s(x') / T)) + (1 - alpha) * CE(s(x), y)

x' is the training PGD attack on the student's cross-entropy with the true label; the
teacher sees the natural image. Defaults are those of the authors' CIFAR-10 code
(alpha 1, T 30): with alpha = 1 the CE term is gone and the student learns from the
teacher alone. As in their code, the attack runs with the student in train mode, its passes
updating the BatchNorm running statistics, from x + U[-eps, eps] not clamped to [0, 1]
(`attack.train_mode`, `attack.bn_update`, `attack.start` override this).

KL reduction: `kl_reduction: mean` (default) averages over batch x classes, as the authors'
`nn.KLDivLoss()` does; `batchmean` sums over classes and averages over the batch (the KL
per sample; IAD's re-implementation of ARD uses it), C times larger - for SGD at alpha = 1 a
C-fold learning rate on the KL term.

`reweight=True` is the ablation "ARD with GACD's sample weights": the per-sample KL is
multiplied by w_i = p_t(y_i | x'_i), the teacher's true-class probability on the student's
adversarial input (detached), and averaged as mean_i(w_i * KL_i) (then / C under 'mean') -
not divided by sum(w), matching how GACD's reweighted NCE is averaged. The CE term stays
unweighted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from gacd.attacks import cross_entropy
from gacd.data import Batch
from gacd.methods.base import ARD_ATTACK, Method, MethodOptions, Step, register_method, step_output
from gacd.methods.kd import check_alpha_temperature
from gacd.methods.losses import (
    KLReduction,
    accuracy,
    kl_divergence,
    reduce_kl,
    teacher_confidence,
)
from gacd.methods.recipes import Recipe, single_stage


@dataclass
class ARDOptions(MethodOptions):
    name: str = "ard"
    alpha: float = 1.0  # 1.0 (the authors' default) drops the CE term entirely
    temperature: float = 30.0
    reweight: bool = False  # ablation: weight KL_i by the teacher's confidence on x'_i
    kl_reduction: KLReduction = "mean"  # the authors' nn.KLDivLoss(); batchmean: C times it

    def __post_init__(self) -> None:
        check_alpha_temperature("ard", self.alpha, self.temperature)


@register_method
class ARD(Method):
    name = "ard"
    label = "ARD"
    Options = ARDOptions
    needs_teacher = True
    # goldblum/AdversariallyRobustDistillation main.py: AttackPGD runs inside net.train().
    attack_defaults: ClassVar[dict[str, Any]] = ARD_ATTACK

    @classmethod
    def recipes(cls) -> tuple[Recipe, ...]:
        # The ablation "ARD with GACD's sample weights" as a recipe of its own.
        weighted = single_stage(cls.name, "ARD w/ weights", True, "ard_reweighted", reweight=True)
        return (*super().recipes(), weighted)

    def step(self, batch: Batch) -> Step:
        opts: ARDOptions = self.options
        x, y = batch.images, batch.labels
        x_adv = self.adversary(lambda: cross_entropy(self.student, y), x, [self.student])
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        logits_adv = self.student(x_adv)
        kl_per_sample = kl_divergence(
            teacher_logits, logits_adv, opts.temperature, reduction="none"
        )
        diagnostics: dict[str, Tensor] = {}
        if opts.reweight:
            with torch.no_grad():
                weight = teacher_confidence(self.teacher(x_adv), y)
            kl_per_sample = weight * kl_per_sample
            diagnostics["weight"] = weight.mean()
        kl = reduce_kl(kl_per_sample, opts.kl_reduction, logits_adv.shape[1])
        terms = {"kl_adv": opts.alpha * opts.temperature**2 * kl}
        if opts.alpha < 1.0:
            logits = self.student(x)
            ce = F.cross_entropy(logits.float(), y)
            terms["ce"] = (1.0 - opts.alpha) * ce
        else:
            # Without the CE term the clean pass only feeds the logs (and, like the authors'
            # code, the BatchNorm running statistics): no graph needed.
            with torch.no_grad():
                logits = self.student(x)
                ce = F.cross_entropy(logits.float(), y)
        diagnostics.update(
            kl_adv=kl, ce=ce, acc=accuracy(logits, y), acc_adv=accuracy(logits_adv, y)
        )
        return step_output(terms, diagnostics)
