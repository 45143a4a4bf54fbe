"""TRADES (Zhang et al. 2019); matches `trades_loss` in `trades.py` of yaodongyu/TRADES.

loss = CE(f(x), y) + beta * KL(f(x) || f(x')), KL summed over classes and averaged over the
batch; f(x) is not detached in the KL (its gradient flows through both arguments, as in the
authors' code). x' maximises KL(f(x) || f(x')) with the model in eval mode, started at
x + 0.001 * N(0, 1) (not clamped). beta 6 as in their CIFAR-10 script.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch.nn.functional as F

from gacd.attacks import kl_to_reference
from gacd.data import Batch
from gacd.methods.base import (
    TRADES_ATTACK,
    Method,
    MethodOptions,
    Step,
    register_method,
    step_output,
)
from gacd.methods.losses import accuracy, kl_divergence


@dataclass
class TradesOptions(MethodOptions):
    name: str = "trades"
    beta: float = 6.0


@register_method
class Trades(Method):
    name = "trades"
    label = "TRADES"
    Options = TradesOptions
    attack_defaults: ClassVar[dict[str, Any]] = TRADES_ATTACK

    def step(self, batch: Batch) -> Step:
        x = batch.images
        x_adv = self.adversary(
            lambda: kl_to_reference(self.student, self.student(x)), x, [self.student]
        )
        logits = self.student(x)
        logits_adv = self.student(x_adv)
        ce = F.cross_entropy(logits.float(), batch.labels)
        robust = kl_divergence(logits, logits_adv)
        terms = {"ce": ce, "kl_adv": self.options.beta * robust}
        diagnostics = {
            "ce": ce,
            "kl_adv": robust,
            "acc": accuracy(logits, batch.labels),
            "acc_adv": accuracy(logits_adv, batch.labels),
        }
        return step_output(terms, diagnostics)
