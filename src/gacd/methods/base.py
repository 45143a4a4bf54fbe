"""The method contract: a training method turns a batch into a loss; the loop does the rest.

A method owns the student, its extra modules (heads, memory bank) and its training-time
attack. The teacher is held but not registered as a submodule, so it never enters the
optimiser, the checkpoint or `.train()`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from gacd.attacks import AttackSpec, attack_mode, pgd
from gacd.attacks.pgd import Objective
from gacd.config import ConfigError, from_dict
from gacd.data import Batch, DeviceSplit
from gacd.models import ImageClassifier
from gacd.registry import Registry


@dataclass
class MethodContext:
    """What every method may use besides its options."""

    student: ImageClassifier
    teacher: ImageClassifier | None
    attack: AttackSpec
    attack_train_mode: bool
    num_classes: int
    train_labels: Tensor  # labels of the training split, on the training device
    # This rank's own CPU generator for attack starts and sampling (the trainer checkpoints
    # it with every generator listed by `Method.generators`).
    generator: torch.Generator
    # The training split itself (no augmentation), for methods that need one pass over it
    # before training (GACD's memory-bank warm start). None where no split is at hand.
    train_data: DeviceSplit | None = None


@dataclass
class NoOptions:
    pass


class Method(nn.Module):
    """Base class: subclasses set `name`, `label`, `Options` (a dataclass) and implement
    `step`."""

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""  # how reports print it: "PGD-AT", "ARD"
    Options: ClassVar[type] = NoOptions
    needs_teacher: ClassVar[bool] = False
    # Validation metric that picks the best epoch: "val_adv", "val_nat", or None to keep the
    # last epoch (feature distillation, whose classifier is not trained, has nothing to pick by).
    selection: ClassVar[str | None] = "val_adv"

    def __init__(self, ctx: MethodContext, options: Any) -> None:
        super().__init__()
        if self.needs_teacher and ctx.teacher is None:
            raise ConfigError(f"method '{self.name}' needs a teacher: set teacher=PATH")
        self.student = ctx.student
        self.options = options
        self.attack = ctx.attack
        self.attack_train_mode = ctx.attack_train_mode
        self.num_classes = ctx.num_classes
        self.generator = ctx.generator
        # Attack random starts are drawn where the images live: on CPU the run's generator
        # itself (CPU runs replay bit for bit as before), elsewhere a generator on the
        # training device seeded from it (no noise copied to the device at every attack).
        device = ctx.train_labels.device
        self.attack_generator = (
            ctx.generator
            if device.type == "cpu"
            else torch.Generator(device).manual_seed(
                int(torch.randint(0, 2**62, (1,), generator=ctx.generator))
            )
        )
        object.__setattr__(self, "_teacher", ctx.teacher)  # not a submodule, on purpose
        if ctx.teacher is not None:
            ctx.teacher.eval().requires_grad_(False)

    @property
    def teacher(self) -> ImageClassifier:
        assert self._teacher is not None
        return self._teacher

    def adversary(
        self, make_objective: Callable[[], Objective], x: Tensor, models: list[nn.Module]
    ) -> Tensor:
        """Run the training attack with `models` in attack mode (restored afterwards).

        The objective is built inside that mode, so reference outputs it computes (e.g. the
        clean logits TRADES attacks against) come from the same mode as the attack."""
        with attack_mode(models, train=self.attack_train_mode):
            with torch.no_grad():
                objective = make_objective()
            return pgd(objective, x, self.attack, generator=self.attack_generator)

    def step(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss to minimise and named terms for logging (detached 0-d tensors: the loop
        averages them per epoch without a device sync per step)."""
        raise NotImplementedError

    def after_step(self, batch: Batch) -> None:
        """Called after the optimiser step (memory bank updates and the like)."""

    def start_epoch(self, epoch: int, epochs: int) -> None:
        """Called before each epoch (0-based), e.g. for warm-up schedules."""

    def generators(self) -> dict[str, torch.Generator]:
        """The random generators this method draws from, by name. They are per-rank state:
        the trainer saves each data-parallel rank's own and restores them on resume, so a
        method that creates a generator lists it here (not in its state_dict)."""
        gens = {"generator": self.generator}
        if self.attack_generator is not self.generator:
            gens["attack"] = self.attack_generator
        return gens

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


METHODS: Registry[type[Method]] = Registry("method", key="method.name")


def register_method(cls: type[Method]) -> type[Method]:
    METHODS.register(cls.name, cls)
    return cls


def method_names() -> list[str]:
    return sorted(METHODS.names())


def method_class(name: str) -> type[Method]:
    return METHODS.get(name)


def method_options(section: dict[str, Any]) -> tuple[type[Method], Any]:
    """Resolve a config's `method` section ({'name': ..., options...}) to (class, options)."""
    if "name" not in section:
        raise ConfigError(f"method.name is required; known: {', '.join(method_names())}")
    cls = method_class(section["name"])
    values = {k: v for k, v in section.items() if k != "name"}
    allowed = ["name", *(f.name for f in dataclasses.fields(cls.Options))]
    unknown = [k for k in values if k not in allowed]
    if unknown:
        raise ConfigError(
            f"unknown key 'method.{unknown[0]}' for method '{cls.name}'; "
            f"allowed: {', '.join('method.' + k for k in allowed)}"
        )
    return cls, from_dict(cls.Options, values, prefix="method.")


def build_method(section: dict[str, Any], ctx: MethodContext) -> Method:
    cls, options = method_options(section)
    return cls(ctx, options)
