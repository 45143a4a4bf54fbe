"""One projected-gradient engine for every attack: it maximises any objective of the input
under an L-inf budget, and leaves models exactly as it found them."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gacd.errors import AttackBudgetError

# objective(x_adv) -> per-sample losses [N] (or a scalar) to maximise.
Objective = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class AttackSpec:
    """An L-inf PGD budget. steps=0 means no attack; steps=1 with step_size=eps and no random
    start is FGSM."""

    eps: float
    step_size: float
    steps: int
    random_start: bool = True
    restarts: int = 1

    def __post_init__(self) -> None:
        if self.eps < 0 or self.step_size < 0 or self.steps < 0 or self.restarts < 1:
            raise AttackBudgetError(
                f"invalid attack budget: eps={self.eps}, step_size={self.step_size}, "
                f"steps={self.steps}, restarts={self.restarts}; allowed: eps, step_size, "
                "steps >= 0 and restarts >= 1"
            )

    def describe(self) -> str:
        start = "random start" if self.random_start else "no random start"
        steps = f"{self.steps} step{'s' if self.steps != 1 else ''}"
        text = f"L-inf eps={self.eps:.4g}, {steps} of {self.step_size:.4g}, {start}"
        return text + (f", {self.restarts} restarts" if self.restarts > 1 else "")


def fgsm_spec(eps: float) -> AttackSpec:
    return AttackSpec(eps=eps, step_size=eps, steps=1, random_start=False)


_BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


@contextmanager
def attack_mode(models: Sequence[nn.Module], train: bool = False) -> Iterator[None]:
    """Put `models` in eval (default) or train mode for an attack, with parameters not
    requiring gradients; on exit restore modes, requires_grad flags and - when attacking in
    train mode - the BatchNorm running statistics, so an attack never changes a model."""
    modes = [(m, m.training) for model in models for m in model.modules()]
    params = [(p, p.requires_grad) for model in models for p in model.parameters()]
    bn_state = []
    if train:
        for model in models:
            for m in model.modules():
                if isinstance(m, _BN_TYPES) and m.track_running_stats:
                    bn_state.append(
                        (
                            m,
                            [b.detach().clone() for b in (m.running_mean, m.running_var)],
                            m.num_batches_tracked.detach().clone(),
                        )
                    )
    try:
        for model in models:
            model.train(train)
        for p, _ in params:
            p.requires_grad_(False)
        yield
    finally:
        for m, was_training in modes:
            m.training = was_training
        for p, flag in params:
            p.requires_grad_(flag)
        for m, (mean, var), count in bn_state:
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(count)


def random_start(
    shape: torch.Size | tuple[int, ...],
    eps: float,
    generator: torch.Generator | None,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Uniform noise in [-eps, eps]^shape on `device`, drawn where `generator` lives: on the
    training device for a device generator (no copy per attack), on the CPU for a CPU
    generator (the same numbers on every device)."""
    draw_on = generator.device if generator is not None else device
    noise = torch.rand(shape, generator=generator, dtype=dtype, device=draw_on)
    return (noise.to(device) * 2 - 1) * eps


def skip_random_starts(
    shape: torch.Size | tuple[int, ...],
    spec: AttackSpec,
    generator: torch.Generator | None,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> None:
    """Advance `generator` exactly as `pgd(..., spec)` on an input of `shape` would, without
    attacking: ranks that split an evaluation keep one stream in step, so every batch gets
    the random starts it gets in a single process."""
    if generator is None or not spec.random_start or spec.steps == 0 or spec.eps == 0:
        return
    for _ in range(spec.restarts):
        random_start(shape, spec.eps, generator, device, dtype)


def pgd(
    objective: Objective,
    x: Tensor,
    spec: AttackSpec,
    *,
    generator: torch.Generator | None = None,
    per_sample_best: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Maximise `objective` over the L-inf ball of radius eps around `x`, inside [0, 1].

    Gradients are taken w.r.t. the input only (autograd.grad), so no `.grad` is written to
    any parameter. Callers put models in the right mode with `attack_mode`. With restarts,
    `per_sample_best(x_adv) -> score [N]` (higher = stronger, e.g. 1 for misclassified)
    picks, per sample, the strongest restart; without it the last restart wins.
    """
    x = x.detach()
    if spec.steps == 0 or spec.eps == 0:
        return x.clone()
    best = x.clone()
    best_score = None
    for _ in range(spec.restarts):
        if spec.random_start:
            delta = random_start(x.shape, spec.eps, generator, x.device, x.dtype)
        else:
            delta = torch.zeros_like(x)
        x_adv = (x + delta).clamp_(0.0, 1.0)
        for _ in range(spec.steps):
            x_adv.requires_grad_(True)
            with torch.enable_grad():
                loss = objective(x_adv).sum()
                (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = x_adv.detach() + spec.step_size * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - spec.eps), x + spec.eps).clamp_(0.0, 1.0)
        if per_sample_best is None or spec.restarts == 1:
            best = x_adv
            continue
        with torch.no_grad():
            score = per_sample_best(x_adv)
        if best_score is None:
            best, best_score = x_adv, score
        else:
            better = score > best_score
            best = torch.where(better.view(-1, *[1] * (x.dim() - 1)), x_adv, best)
            best_score = torch.where(better, score, best_score)
    return best.detach()
