"""Plain (natural) training: cross-entropy on clean images. The undefended reference."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from gacd.data import Batch
from gacd.methods.base import Method, MethodOptions, Step, register_method, step_output
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

    def step(self, batch: Batch) -> Step:
        logits = self.student(batch.images)
        ce = F.cross_entropy(logits.float(), batch.labels)
        return step_output({"ce": ce}, {"acc": accuracy(logits, batch.labels)})
