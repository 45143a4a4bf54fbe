"""One projected-gradient engine for every attack: it maximises any objective of the input
under an L-inf budget, and leaves models exactly as it found them."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from gacd.errors import AttackBudgetError

# objective(x_adv) -> per-sample losses [N] (or a scalar) to maximise.
Objective = Callable[[Tensor], Tensor]

# How a random start is drawn (see `start_point`):
#   uniform            x + U[-eps, eps], clamped to [0, 1]   (Madry et al.; robustness lib)
#   uniform_unclamped  x + U[-eps, eps], not clamped          (ARD's and IAD's code)
#   normal             x + 0.001 * N(0, 1), not clamped       (TRADES', RSLAD's, AdaAD's code)
StartKind = Literal["uniform", "uniform_unclamped", "normal"]
START_KINDS: tuple[str, ...] = ("uniform", "uniform_unclamped", "normal")
NORMAL_START_SCALE = 0.001  # the constant in TRADES' code, reused by RSLAD and AdaAD


@dataclass(frozen=True)
class AttackSpec:
    """An L-inf PGD budget. steps=0 means no attack; steps=1 with step_size=eps and no random
    start is FGSM. `start` is the kind of random start (used when `random_start`);
    `keep_best` returns, per sample, the iterate with the highest objective among the start
    and every step (the robustness library's `use_best`) instead of the last one."""

    eps: float
    step_size: float
    steps: int
    random_start: bool = True
    restarts: int = 1
    start: StartKind = "uniform"
    keep_best: bool = False

    def __post_init__(self) -> None:
        if self.eps < 0 or self.step_size < 0 or self.steps < 0 or self.restarts < 1:
            raise AttackBudgetError(
                f"invalid attack budget: eps={self.eps}, step_size={self.step_size}, "
                f"steps={self.steps}, restarts={self.restarts}; allowed: eps, step_size, "
                "steps >= 0 and restarts >= 1"
            )
        if self.start not in START_KINDS:
            raise AttackBudgetError(
                f"invalid attack start {self.start!r}; allowed: {', '.join(START_KINDS)}"
            )

    def describe(self) -> str:
        start = "random start" if self.random_start else "no random start"
        if self.random_start and self.start != "uniform":
            start += f" ({self.start.replace('_', ' ')})"
        steps = f"{self.steps} step{'s' if self.steps != 1 else ''}"
        text = f"L-inf eps={self.eps:.4g}, {steps} of {self.step_size:.4g}, {start}"
        if self.keep_best:
            text += ", best iterate"
        return text + (f", {self.restarts} restarts" if self.restarts > 1 else "")


def fgsm_spec(eps: float) -> AttackSpec:
    return AttackSpec(eps=eps, step_size=eps, steps=1, random_start=False)


_BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


@contextmanager
def attack_mode(
    models: Sequence[nn.Module], train: bool = False, keep_bn_stats: bool = True
) -> Iterator[None]:
    """Put `models` in eval (default) or train mode for an attack, with parameters not
    requiring gradients; on exit restore modes, requires_grad flags and - when attacking in
    train mode - the BatchNorm running statistics, so an attack never changes a model.

    `keep_bn_stats=False` (train mode only) lets the attack's forward passes update the
    BatchNorm running statistics, as they do in ARD's and IAD's code."""
    modes = [(m, m.training) for model in models for m in model.modules()]
    params = [(p, p.requires_grad) for model in models for p in model.parameters()]
    bn_state = []
    if train and keep_bn_stats:
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


def start_point(x: Tensor, spec: AttackSpec, generator: torch.Generator | None) -> Tensor:
    """The first iterate of one restart: `x` itself without a random start, else `x` plus
    noise of kind `spec.start` (see StartKind)."""
    if not spec.random_start:
        return x.clone()
    if spec.start == "normal":
        draw_on = generator.device if generator is not None else x.device
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=draw_on)
        return x + NORMAL_START_SCALE * noise.to(x.device)
    x0 = x + random_start(x.shape, spec.eps, generator, x.device, x.dtype)
    return x0.clamp_(0.0, 1.0) if spec.start == "uniform" else x0


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
        start_point(torch.zeros(shape, device=device, dtype=dtype), spec, generator)


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
        x_adv = start_point(x, spec, generator)
        top: Tensor | None = None  # keep_best: the highest objective per sample so far
        top_x = x_adv
        for _ in range(spec.steps):
            x_adv.requires_grad_(True)
            with torch.enable_grad():
                values = objective(x_adv)
                (grad,) = torch.autograd.grad(values.sum(), x_adv)
            x_adv = x_adv.detach()
            if spec.keep_best:
                top, top_x = _keep_higher(values.detach(), x_adv, top, top_x)
            x_adv = x_adv + spec.step_size * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - spec.eps), x + spec.eps).clamp_(0.0, 1.0)
        if spec.keep_best:
            with torch.no_grad():
                _, x_adv = _keep_higher(objective(x_adv), x_adv, top, top_x)
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


def _keep_higher(
    values: Tensor, x: Tensor, top: Tensor | None, top_x: Tensor
) -> tuple[Tensor, Tensor]:
    """Per sample, keep (x, value) where value beats the best so far (strictly, so ties keep
    the earlier iterate, as the robustness library does)."""
    if values.dim() != 1:
        raise ValueError("keep_best needs an objective with one value per sample")
    if top is None:
        return values.clone(), x.clone()
    better = values > top
    mask = better.view(-1, *[1] * (x.dim() - 1))
    return torch.where(better, values, top), torch.where(mask, x, top_x)
