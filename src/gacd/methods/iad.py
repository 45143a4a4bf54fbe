"""Introspective Adversarial Distillation, IAD-I (Zhu et al. 2022, "Reliable adversarial
distillation with unreliable teachers"); matches `IAD-I.py` of ZFancy/IAD by default.

During warm-up it is ARD with IAD's own temperature:

    alpha * T^2 * KL(t(x)/T || s(x')/T) + (1 - alpha) * CE(s(x), y)

afterwards the student also "introspects", trusting its own clean prediction where the
teacher is unreliable on the adversarial input:

    alpha * T^2 * KL(t(x)/T || s(x')/T) + alpha * mean_i (1 - a_i) KL(s(x_i) || s(x'_i))
        + (1 - alpha) * CE(s(x), y),    a_i = p_t(y_i | x'_i) ** beta.

With the default alpha = 1 this is exactly T^2 KL(t(x) || s(x')) + (1 - a_i) KL(s(x) || s(x')):
the teacher term is not weighted by a_i (as in the authors' IAD-I code), the self term is at
T = 1. x' is the training PGD attack on the student's cross-entropy; the teacher sees the
natural x for its soft labels and x' for its confidence a_i.

Detached: the teacher's logits (frozen) and a_i. Not detached by default: both s(x) and
s(x') in the self term, as in the authors' code (the KL target there carries gradient);
`detach_natural=True` makes s(x) a fixed target instead. KLs are batchmean like theirs.

Defaults from the authors' CIFAR-10 code: T 1, alpha 1, beta 0.1, warm-up 60 of 200
epochs (fraction 0.3; `warmup_epochs` sets a count instead). Their attack is ARD's: student
in train mode with its passes updating the BatchNorm running statistics, start
x + U[-eps, eps] not clamped, CE on the student (`attack.*` override this). Their self term
runs one more clean forward pass for the target; its values and gradient equal the reused
s(x) here, only the BatchNorm statistics see that batch once less.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from gacd.attacks import cross_entropy
from gacd.data import Batch
from gacd.errors import ConfigError
from gacd.methods.base import (
    ARD_ATTACK,
    Method,
    MethodContext,
    MethodOptions,
    Step,
    register_method,
    step_output,
)
from gacd.methods.kd import check_alpha_temperature
from gacd.methods.losses import accuracy, kl_divergence, teacher_confidence


@dataclass
class IADOptions(MethodOptions):
    name: str = "iad"
    alpha: float = 1.0
    temperature: float = 1.0
    beta: float = 0.1  # a_i = p_t(y | x')^beta; small beta keeps a_i near 1 (trust the teacher)
    warmup_fraction: float = 0.3  # of the run's epochs, ARD-only (60 of 200 in the paper)
    warmup_epochs: int | None = None  # a count; overrides warmup_fraction when set
    detach_natural: bool = False  # treat s(x) as a fixed target in the self term

    def __post_init__(self) -> None:
        check_alpha_temperature("iad", self.alpha, self.temperature)
        if self.beta < 0:
            raise ConfigError(f"method.beta: must be >= 0, got {self.beta}")
        if not 0.0 <= self.warmup_fraction <= 1.0:
            raise ConfigError(
                f"method.warmup_fraction: must be in [0, 1], got {self.warmup_fraction}"
            )
        if self.warmup_epochs is not None and self.warmup_epochs < 0:
            raise ConfigError(f"method.warmup_epochs: must be >= 0, got {self.warmup_epochs}")

    def warmup_length(self, epochs: int) -> int:
        if self.warmup_epochs is not None:
            return self.warmup_epochs
        return round(self.warmup_fraction * epochs)


@register_method
class IAD(Method):
    name = "iad"
    label = "IAD"
    Options = IADOptions
    needs_teacher = True
    # ZFancy/IAD IAD-I.py: ARD's AttackPGD inside net.train().
    attack_defaults: ClassVar[dict[str, Any]] = ARD_ATTACK

    def __init__(self, ctx: MethodContext, options: IADOptions) -> None:
        super().__init__(ctx, options)
        # Before the loop calls start_epoch we are at epoch 0: in warm-up unless it is empty.
        if options.warmup_epochs is not None:
            self.in_warmup = options.warmup_epochs > 0
        else:
            self.in_warmup = options.warmup_fraction > 0

    def start_epoch(self, epoch: int, epochs: int) -> None:
        # Derived from the epoch alone, so a resumed run lands in the right phase.
        self.in_warmup = epoch < self.options.warmup_length(epochs)

    def step(self, batch: Batch) -> Step:
        opts: IADOptions = self.options
        x, y = batch.images, batch.labels
        x_adv = self.adversary(lambda: cross_entropy(self.student, y), x, [self.student])
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        logits_adv = self.student(x_adv)
        # The clean pass needs a graph only for the CE or the self term; otherwise it just
        # feeds the logs (and the BatchNorm statistics, as in the authors' code).
        with torch.set_grad_enabled(opts.alpha < 1.0 or not self.in_warmup):
            logits = self.student(x)
        kl = kl_divergence(teacher_logits, logits_adv, opts.temperature)
        ce = F.cross_entropy(logits.float(), y)
        terms = {"kl_adv": opts.alpha * opts.temperature**2 * kl}
        if opts.alpha < 1.0:
            terms["ce"] = (1.0 - opts.alpha) * ce
        diagnostics = {
            "kl_adv": kl,
            "ce": ce,
            "acc": accuracy(logits, y),
            "acc_adv": accuracy(logits_adv, y),
        }
        if not self.in_warmup:
            with torch.no_grad():
                trust = teacher_confidence(self.teacher(x_adv), y).pow(opts.beta)
            target = logits.detach() if opts.detach_natural else logits
            self_kl = kl_divergence(target, logits_adv, reduction="none")
            introspection = ((1.0 - trust) * self_kl).mean()
            terms["introspection"] = opts.alpha * introspection
            diagnostics.update(introspection=introspection, trust=trust.mean())
        return step_output(terms, diagnostics)
