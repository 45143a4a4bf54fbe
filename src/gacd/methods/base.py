"""The method contract: a training method turns a batch into a loss; the loop does the rest.

A method owns the student, its extra modules (heads, memory bank) and its training-time
attack. The teacher is held but not registered as a submodule, so it never enters the
optimiser, the checkpoint or `.train()`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from gacd.attacks import AttackSpec, attack_mode, pgd
from gacd.attacks.pgd import Objective
from gacd.data import Batch, DeviceSplit
from gacd.errors import ConfigError, UnknownName
from gacd.methods.recipes import STUDENT_KIND, TEACHER_KIND, Recipe, single_stage
from gacd.models import ImageClassifier
from gacd.options import from_dict
from gacd.registry import Registry

# The two training attacks the baselines' authors wrote, as `Method.attack_defaults`:
# ARD's (IAD reuses it): the student attacked in train mode, its passes updating BatchNorm
# statistics, from an unclamped uniform start; TRADES' (RSLAD and AdaAD follow it): eval
# mode, from x + 0.001 N(0, 1). Both 10 steps.
ARD_ATTACK: dict[str, Any] = {
    "steps": 10,
    "random_start": True,
    "start": "uniform_unclamped",
    "train_mode": True,
    "bn_update": True,
}
TRADES_ATTACK: dict[str, Any] = {
    "steps": 10,
    "random_start": True,
    "start": "normal",
    "train_mode": False,
}

# What `Method.step` returns: (loss, terms, diagnostics), the dicts of detached 0-d tensors
# (the loop averages them per epoch without a device sync per step).
Step = tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]


def step_output(terms: dict[str, Tensor], diagnostics: dict[str, Tensor]) -> Step:
    """The loss as the sum of its weighted `terms` (in order, with their graphs), and both
    dicts detached for logging: the terms add up to the loss by construction."""
    loss = sum(terms.values())
    assert isinstance(loss, Tensor), "a step needs at least one loss term"
    return (
        loss,
        {k: v.detach() for k, v in terms.items()},
        {k: v.detach() for k, v in diagnostics.items()},
    )


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
    # Train-mode attacks only: let the attack's passes update BatchNorm running statistics.
    attack_bn_update: bool = False
    # The training split itself (no augmentation), for methods that need one pass over it
    # before training (GACD's memory-bank warm start). None where no split is at hand.
    train_data: DeviceSplit | None = None


@dataclass
class MethodOptions:
    """Base of every method's options, as a run config holds them (`config.method`): `name`
    names the method, and each method's Options class sets it as its default. Reading a
    config's `method` mapping picks the class by that name (`resolve_type`), so options are
    parsed and checked once, when the config is read."""

    name: str = ""

    @classmethod
    def owner(cls) -> str:
        return f"method '{cls.__dataclass_fields__['name'].default}'"

    @classmethod
    def resolve_type(cls, value: Any, key: str) -> type[MethodOptions]:
        if not isinstance(value, dict) or "name" not in value:
            raise ConfigError(f"{key}.name is required; known: {', '.join(method_names())}")
        return METHODS.get(value["name"]).Options


class Method(nn.Module):
    """Base class: subclasses set `name`, `label`, `Options` (a dataclass) and implement
    `step`."""

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""  # how reports print it: "PGD-AT", "ARD"
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    needs_teacher: ClassVar[bool] = False
    # Validation metric that picks the best epoch: "val_adv", "val_nat", or None to keep the
    # last epoch (feature distillation, whose classifier is not trained, has nothing to pick by).
    selection: ClassVar[str | None] = "val_adv"
    # The training attack's settings in the method's official code, for every `attack.*`
    # key left null in the config (steps, random_start, start, keep_best, train_mode,
    # bn_update); what is not named here falls back to `gacd.config.ATTACK_FALLBACKS`.
    attack_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, ctx: MethodContext, options: MethodOptions) -> None:
        super().__init__()
        if self.needs_teacher and ctx.teacher is None:
            raise ConfigError(f"method '{self.name}' needs a teacher: set teacher=PATH")
        self.student = ctx.student
        self.options = options
        self.attack = ctx.attack
        self.attack_train_mode = ctx.attack_train_mode
        self.attack_bn_update = ctx.attack_bn_update
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
        keep = not self.attack_bn_update
        with attack_mode(models, train=self.attack_train_mode, keep_bn_stats=keep):
            with torch.no_grad():
                objective = make_objective()
            return pgd(objective, x, self.attack, generator=self.attack_generator)

    def step(self, batch: Batch) -> Step:
        """(loss, terms, diagnostics): the loss to minimise; its weighted terms, which add up
        to it (logging then explains the loss); and diagnostics such as accuracies, raw
        divergences, cosines and weights. Build it with `step_output`."""
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

    @classmethod
    def recipes(cls) -> tuple[Recipe, ...]:
        """What `students.methods` may name to train with this method (see
        `gacd.methods.recipes`): by default one stage of it, under its own name. A method
        with follow-up stages (GACD) or named variants (ARD with weights) returns more; one
        that is only ever a follow-up stage returns none."""
        return (single_stage(cls.name, cls.label or cls.name, cls.needs_teacher),)


METHODS: Registry[type[Method]] = Registry("method", key="method.name")


def register_method(cls: type[Method]) -> type[Method]:
    """Register a method class under its `name`; its Options must be a MethodOptions whose
    `name` defaults to that name."""
    if not issubclass(cls.Options, MethodOptions) or cls.Options().name != cls.name:
        raise TypeError(
            f"{cls.__name__}.Options must subclass MethodOptions with name: str = {cls.name!r}"
        )
    METHODS.register(cls.name, cls)
    return cls


def method_names() -> list[str]:
    return sorted(METHODS.names())


def method_class(name: str) -> type[Method]:
    return METHODS.get(name)


def all_recipes() -> dict[str, Recipe]:
    """Every registered method's recipes, by name."""
    out: dict[str, Recipe] = {}
    for method_name in method_names():
        for rec in METHODS.get(method_name).recipes():
            if rec.name in out:
                raise ConfigError(f"two methods declare the recipe '{rec.name}'")
            out[rec.name] = rec
    return out


def recipe(name: str) -> Recipe:
    """The recipe a `students.methods` entry names."""
    recipes = all_recipes()
    if name not in recipes:
        raise UnknownName("method", name, sorted(recipes), key="students.methods")
    return recipes[name]


def stage_kinds() -> list[str]:
    """Every stage kind an experiment's `stages` section may configure."""
    kinds = [TEACHER_KIND, STUDENT_KIND]
    for rec in all_recipes().values():
        kinds += [t.kind for t in rec.stages if t.kind not in kinds]
    return kinds


def method_options(section: dict[str, Any], key: str = "method") -> MethodOptions:
    """A method's options from a mapping ({'name': ..., options...}), every key checked
    (what reading a run config does for its `method` section)."""
    return from_dict(MethodOptions.resolve_type(section, key), section, prefix=f"{key}.")


def build_method(options: MethodOptions, ctx: MethodContext) -> Method:
    return METHODS.get(options.name)(ctx, options)
