"""PGD adversarial training (Madry et al. 2018): cross-entropy on PGD examples of the model.

Matches MadryLab's robustness library (`robustness/attacker.py`, `defaults.py`) by default:
the model is attacked in eval mode, 7 steps, no random start, and each sample's iterate
with the highest cross-entropy (the start included) is kept (`use_best`). `attack.steps`,
`attack.random_start`, `attack.keep_best` override this; e.g. random_start true, keep_best
false is the last iterate from a uniform start of Madry et al.'s own CIFAR-10 code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch.nn.functional as F

from gacd.attacks import cross_entropy
from gacd.data import Batch
from gacd.methods.base import Method, MethodOptions, Step, register_method, step_output
from gacd.methods.losses import accuracy


@dataclass
class PGDATOptions(MethodOptions):
    name: str = "pgd_at"


@register_method
class PGDAT(Method):
    name = "pgd_at"
    Options = PGDATOptions
    label = "PGD-AT"
    attack_defaults: ClassVar[dict[str, Any]] = {
        "steps": 7,
        "random_start": False,
        "start": "uniform",
        "keep_best": True,
        "train_mode": False,
    }

    def step(self, batch: Batch) -> Step:
        x_adv = self.adversary(
            lambda: cross_entropy(self.student, batch.labels), batch.images, [self.student]
        )
        logits = self.student(x_adv)
        ce = F.cross_entropy(logits.float(), batch.labels)
        return step_output({"ce_adv": ce}, {"acc_adv": accuracy(logits, batch.labels)})
