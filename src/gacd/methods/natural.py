"""Plain (natural) training: cross-entropy on clean images. The undefended reference."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from gacd.data import Batch
from gacd.methods.base import Method, MethodOptions, register_method
from gacd.methods.losses import accuracy


@dataclass
class NaturalOptions(MethodOptions):
    name: str = "natural"


@register_method
class Natural(Method):
    name = "natural"
    Options = NaturalOptions
    label = "Natural training"
    selection = "val_nat"

    def step(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        logits = self.student(batch.images)
        loss = F.cross_entropy(logits.float(), batch.labels)
        return loss, {"ce": loss.detach(), "acc": accuracy(logits, batch.labels)}
