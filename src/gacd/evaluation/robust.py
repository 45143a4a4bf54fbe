"""Accuracy under attack over a whole split, with the attack spelled out in the result."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from gacd.attacks import AttackSpec, attack_mode, cross_entropy, cw_margin, misclassified, pgd
from gacd.attacks.pgd import skip_random_starts
from gacd.data import DeviceSplit
from gacd.engine.distributed import rank, sum_across_ranks, world_size
from gacd.errors import ConfigError
from gacd.progress import bar

CW_DEFAULT_STEPS = 30


# Single attacks of AutoAttack's reference code, with its standard settings (e.g. APGD-CE:
# 100 iterations, adaptive step): strong checks that cost a fraction of the full ensemble.
AUTOATTACK_PARTS = {"apgd-ce": "APGD-CE", "apgd-t": "APGD-T", "fab-t": "FAB-T", "square": "Square"}


@dataclass(frozen=True)
class NamedAttack:
    """A parsed attack name: kind is natural | fgsm | pgd | cw | autoattack; an
    AutoAttack kind with `part` runs that one attack of the ensemble."""

    name: str
    kind: str
    spec: AttackSpec | None
    part: str | None = None

    def describe(self) -> str:
        if self.kind == "natural":
            return "clean inputs"
        if self.kind == "autoattack":
            what = f"{AUTOATTACK_PARTS[self.part]} of AutoAttack" if self.part else "AutoAttack"
            return f"{what} (standard settings), L-inf eps={self.spec.eps:.4g}"  # type: ignore[union-attr]
        loss = "CW margin" if self.kind == "cw" else "cross-entropy"
        return f"{self.kind.upper()} on {loss}: {self.spec.describe()}"  # type: ignore[union-attr]


ATTACK_HELP = "natural, fgsm, pgdK (e.g. pgd20), cw or cwK (e.g. cw30), autoattack, " + ", ".join(
    AUTOATTACK_PARTS
)


def parse_attack(
    name: str, eps: float, step_size: float, restarts: int = 1, *, key: str = "attack"
) -> NamedAttack:
    """Turn 'pgd20' into a PGD-20 spec at the given budget (and so on for each kind);
    `key` names the option the name came from in errors."""
    name = name.strip().lower()
    if name == "natural":
        return NamedAttack(name, "natural", None)
    if name == "fgsm":
        return NamedAttack(name, "fgsm", AttackSpec(eps, eps, 1, random_start=False))
    if name == "autoattack" or name in AUTOATTACK_PARTS:
        part = name if name in AUTOATTACK_PARTS else None
        return NamedAttack(name, "autoattack", AttackSpec(eps, step_size, 100), part)
    match = re.fullmatch(r"(pgd|cw)(\d*)", name)
    if match:
        kind, steps = match.group(1), match.group(2)
        n = int(steps) if steps else (20 if kind == "pgd" else CW_DEFAULT_STEPS)
        if n < 1:
            raise ConfigError(f"{key}: attack '{name}' needs at least one step")
        return NamedAttack(name, kind, AttackSpec(eps, step_size, n, True, restarts))
    raise ConfigError(f"{key}: unknown attack '{name}'; allowed: {ATTACK_HELP}")


@torch.no_grad()
def robust_accuracy(
    model: nn.Module,
    split: DeviceSplit,
    attack: NamedAttack,
    *,
    batch_size: int = 512,
    generator: torch.Generator | None = None,
    max_samples: int | None = None,
    progress: bool = False,
    across_ranks: bool = False,
) -> float:
    """Accuracy (%) of `model` (kept in eval mode) on `split` under `attack`.

    `across_ranks=True` (every data-parallel rank calls it) splits the batches over the
    ranks and sums the counts; each rank advances `generator` past the other ranks' random
    starts, so every batch is attacked from the start it gets in one process and the result
    does not depend on the number of ranks. AutoAttack is not split: every rank runs it whole.
    """
    if attack.kind == "autoattack":
        from gacd.evaluation.autoattack import autoattack_accuracy

        return autoattack_accuracy(
            model,
            split,
            attack.spec.eps,  # type: ignore[union-attr]
            batch_size=batch_size,
            max_samples=max_samples,
            version="custom" if attack.part else "standard",
            attacks=[attack.part] if attack.part else None,
            progress=progress,
            desc=attack.name,
        )
    me, world = (rank(), world_size()) if across_ranks else (0, 1)
    n = len(split) if max_samples is None else max(0, min(len(split), max_samples))
    starts = range(0, n, batch_size)
    mine = {i for b, i in enumerate(starts) if b % world == me}
    shown = bar(
        None,
        total=sum(min(n, s + batch_size) - s for s in mine),
        desc=attack.name,
        enabled=progress,
    )
    image_shape = tuple(split.images.shape[1:])
    make = cw_margin if attack.kind == "cw" else cross_entropy
    correct = total = 0
    with attack_mode([model], train=False):
        for start in starts:
            stop = min(n, start + batch_size)
            if start not in mine:
                if attack.spec is not None:
                    shape = (stop - start, *image_shape)
                    skip_random_starts(shape, attack.spec, generator, split.device)
                continue
            batch = split.batch_at(torch.arange(start, stop))
            x, y = batch.images, batch.labels
            if attack.spec is not None:
                x = pgd(
                    make(model, y),
                    x,
                    attack.spec,
                    generator=generator,
                    per_sample_best=misclassified(model, y),
                )
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
            shown.update(len(y))
    shown.close()
    if world > 1:
        correct, total = (int(v) for v in sum_across_ranks([correct, total]))
    return 100.0 * correct / max(total, 1)
