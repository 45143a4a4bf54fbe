"""Learning-rate schedules as per-iteration multipliers (warm-up, then cosine/step/constant)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence


def lr_multiplier(
    schedule: str,
    total_iters: int,
    iters_per_epoch: int,
    *,
    warmup_epochs: int = 0,
    milestones: Sequence[float] = (0.5, 0.75),
    gamma: float = 0.1,
) -> Callable[[int], float]:
    """Multiplier of the base LR at iteration `it` (0-based)."""
    warmup = warmup_epochs * iters_per_epoch
    total_epochs = max(1, total_iters // max(1, iters_per_epoch))
    marks = [round(m * total_epochs) * iters_per_epoch for m in milestones]

    def factor(it: int) -> float:
        if it < warmup:
            return (it + 1) / warmup
        if schedule == "constant":
            return 1.0
        if schedule == "step":
            return gamma ** sum(it >= mark for mark in marks)
        if schedule == "cosine":
            progress = (it - warmup) / max(1, total_iters - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        raise ValueError(f"unknown schedule '{schedule}'; allowed: cosine, step, constant")

    return factor
