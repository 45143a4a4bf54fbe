"""PGD adversarial training (Madry et al.): cross-entropy on PGD examples of the model."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from gacd.attacks import cross_entropy
from gacd.data import Batch
from gacd.methods.base import Method, MethodOptions, register_method
from gacd.methods.losses import accuracy


@dataclass
class PGDATOptions(MethodOptions):
    name: str = "pgd_at"


@register_method
class PGDAT(Method):
    name = "pgd_at"
    Options = PGDATOptions
    label = "PGD-AT"

    def step(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        x_adv = self.adversary(
            lambda: cross_entropy(self.student, batch.labels), batch.images, [self.student]
        )
        logits = self.student(x_adv)
        loss = F.cross_entropy(logits.float(), batch.labels)
        return loss, {"ce_adv": loss.detach(), "acc_adv": accuracy(logits, batch.labels)}
