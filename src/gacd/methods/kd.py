"""Knowledge distillation (Hinton et al. 2015) on natural images: the non-robust baseline.
Matches `DistillKL` in `distiller_zoo/KD.py` of HobbitLong/RepDistiller, with the weights
of its KD command (-r 0.1 -a 0.9: CE weight 0.1, KD weight 0.9) and kd_T 4.

loss = alpha * T^2 * KL(softmax(t(x) / T) || softmax(s(x) / T)) + (1 - alpha) * CE(s(x), y)

The T^2 factor keeps the soft term's gradient scale independent of T. The KL is summed
over classes and averaged over the batch ('batchmean'), as RepDistiller's
`kl_div(size_average=False) / batch`. No attack: KD transfers the
teacher's clean predictions only, which is why it is the reference that robustness
distillation must beat under attack.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gacd.data import Batch
from gacd.errors import ConfigError
from gacd.methods.base import Method, MethodOptions, Step, register_method, step_output
from gacd.methods.losses import accuracy, kl_divergence


@dataclass
class KDOptions(MethodOptions):
    name: str = "kd"
    alpha: float = 0.9  # weight of the distillation term; 1 - alpha goes to the label CE
    temperature: float = 4.0

    def __post_init__(self) -> None:
        check_alpha_temperature("kd", self.alpha, self.temperature)


def check_alpha_temperature(method: str, alpha: float, temperature: float) -> None:
    """Shared option checks for the KD-style losses (KD, ARD, IAD)."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"method.alpha: must be in [0, 1] for '{method}', got {alpha}")
    if temperature <= 0.0:
        raise ConfigError(f"method.temperature: must be > 0 for '{method}', got {temperature}")


@register_method
class KD(Method):
    name = "kd"
    label = "KD"
    Options = KDOptions
    needs_teacher = True
    # KD is trained and meant to be used on clean inputs; its adversarial validation
    # accuracy sits near 0 on every epoch, so picking the best epoch by it would pick noise.
    selection = "val_nat"

    def step(self, batch: Batch) -> Step:
        opts: KDOptions = self.options
        x, y = batch.images, batch.labels
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        logits = self.student(x)
        kl = kl_divergence(teacher_logits, logits, opts.temperature)
        ce = F.cross_entropy(logits.float(), y)
        terms = {"kl": opts.alpha * opts.temperature**2 * kl, "ce": (1.0 - opts.alpha) * ce}
        return step_output(terms, {"kl": kl, "ce": ce, "acc": accuracy(logits, y)})
