"""The run config: what one training run (or evaluation) needs, as typed dataclasses
filled from YAML files, command flags and dotted overrides (see `gacd.options`).

Every key is checked: an unknown key or a value of the wrong type is a `ConfigError` that
names the key and says what is allowed; every range check lives beside its key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gacd.attacks.pgd import StartKind
from gacd.errors import ConfigError
from gacd.evaluation.robust import parse_attack
from gacd.methods import MethodOptions, method_class
from gacd.options import (
    apply_overrides,
    check_range,
    flatten,
    from_dict,
    load_yaml,
    set_value,
    to_dict,
)

__all__ = [
    "AttackConfig",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "load_run_config",
]


@dataclass
class DataConfig:
    name: str = "digits"
    root: str | None = None
    download: bool = False
    val_fraction: float = 0.1
    batch_size: int = 128
    eval_batch_size: int = 512
    crop_padding: int | None = None  # None: the dataset's default
    flip: bool | None = None  # None: the dataset's default
    classes: list[int] | None = None  # keep these labels only, relabelled 0..n-1
    resize: int | None = None  # resize images to resize x resize once at load

    def __post_init__(self) -> None:
        f = self.val_fraction
        check_range("data.val_fraction", f, 0.0 <= f < 1.0, "allowed: 0 <= val_fraction < 1")
        for key in ("batch_size", "eval_batch_size"):
            n = getattr(self, key)
            check_range(f"data.{key}", n, n >= 1, "allowed: an integer >= 1")
        p = self.crop_padding
        check_range("data.crop_padding", p, p is None or p >= 0, "allowed: null or >= 0")
        r = self.resize
        check_range("data.resize", r, r is None or r >= 1, "allowed: null or a size >= 1")
        c = self.classes
        if c is not None and (len(c) < 2 or len(set(c)) != len(c) or min(c) < 0):
            raise ConfigError(
                f"data.classes: {c!r} is not allowed; give at least two distinct labels >= 0"
            )


def _check_budget(section: str, eps: float | None, step_size: float | None) -> None:
    check_range(f"{section}.eps", eps, eps is None or 0.0 <= eps <= 1.0, "allowed: 0 <= eps <= 1")
    check_range(
        f"{section}.step_size",
        step_size,
        step_size is None or 0.0 < step_size <= 1.0,
        "allowed: 0 < step_size <= 1",
    )


@dataclass
class ModelConfig:
    arch: str | None = None  # None: the dataset's default architecture
    kwargs: dict[str, Any] = field(default_factory=dict)


# What an attack setting left at null becomes when the method names no default of its own
# (`Method.attack_defaults`): our common protocol, PGD-10 from a uniform random start,
# last iterate, model in eval mode.
ATTACK_FALLBACKS: dict[str, Any] = {
    "steps": 10,
    "random_start": True,
    "start": "uniform",
    "keep_best": False,
    "train_mode": False,
    "bn_update": False,
}


@dataclass
class AttackConfig:
    """The training-time attack (PGD, L-inf). eps/step_size None: the dataset's defaults.
    Every other field None: the method's official default (its `attack_defaults`, e.g. ARD
    attacks in train mode from an unclamped uniform start), else ATTACK_FALLBACKS."""

    eps: float | None = None
    step_size: float | None = None
    steps: int | None = None
    random_start: bool | None = None
    start: StartKind | None = None  # uniform | uniform_unclamped | normal (see attacks.pgd)
    keep_best: bool | None = None  # return each sample's highest-objective iterate
    train_mode: bool | None = None  # attack with the model in train mode
    # In train mode, let the attack's passes update the BatchNorm running statistics (as
    # ARD's and IAD's code do); false restores them after the attack.
    bn_update: bool | None = None

    def __post_init__(self) -> None:
        _check_budget("attack", self.eps, self.step_size)
        s = self.steps
        check_range("attack.steps", s, s is None or s >= 0, "allowed: null or an integer >= 0")
        if self.bn_update and self.train_mode is False:
            raise ConfigError(
                "attack.bn_update: true needs attack.train_mode: true (or null for a method "
                "that attacks in train mode)"
            )

    def resolve(self, method_defaults: dict[str, Any]) -> AttackConfig:
        """A copy with every null filled: the method's defaults first, then the fallbacks."""
        values = {**ATTACK_FALLBACKS, **method_defaults}
        filled = {k: v for k, v in values.items() if getattr(self, k) is None}
        train_mode = self.train_mode if self.train_mode is not None else filled["train_mode"]
        if self.bn_update and not train_mode:
            raise ConfigError(
                "attack.bn_update: true needs the attack in train mode; this method attacks "
                "in eval mode unless attack.train_mode: true"
            )
        if not train_mode:
            filled["bn_update"] = False  # only train-mode passes touch the statistics
        return dataclasses.replace(self, **filled)


@dataclass
class OptimConfig:
    epochs: int = 30
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # fractions of epochs
    gamma: float = 0.1
    warmup_epochs: int = 0

    def __post_init__(self) -> None:
        e = self.epochs
        check_range("optim.epochs", e, e >= 1, "allowed: an integer >= 1")
        check_range("optim.lr", self.lr, self.lr > 0, "allowed: lr > 0")
        m = self.momentum
        check_range("optim.momentum", m, 0.0 <= m < 1.0, "allowed: 0 <= momentum < 1")
        wd = self.weight_decay
        check_range("optim.weight_decay", wd, wd >= 0, "allowed: weight_decay >= 0")
        check_range("optim.gamma", self.gamma, self.gamma > 0, "allowed: gamma > 0")
        for i, mark in enumerate(self.milestones):
            check_range(
                f"optim.milestones[{i}]", mark, 0.0 < mark <= 1.0, "allowed: fractions in (0, 1]"
            )
        w = self.warmup_epochs
        check_range("optim.warmup_epochs", w, 0 <= w <= e, f"allowed: 0 <= warmup_epochs <= {e}")


@dataclass
class EvalConfig:
    """Final evaluation. Attack names: natural, fgsm, pgdK (e.g. pgd20), cwK (e.g. cw30),
    autoattack. eps/step_size None: the dataset's defaults."""

    attacks: list[str] = field(default_factory=lambda: ["natural", "pgd20"])
    eps: float | None = None
    step_size: float | None = None
    restarts: int = 1
    split: Literal["test", "val", "train"] = "test"
    max_samples: int | None = None
    val_attack_steps: int = 10  # PGD steps for the per-epoch validation (model selection)

    def __post_init__(self) -> None:
        _check_budget("eval", self.eps, self.step_size)
        check_range("eval.restarts", self.restarts, self.restarts >= 1, "allowed: an integer >= 1")
        n = self.max_samples
        check_range("eval.max_samples", n, n is None or n >= 1, "allowed: null or an integer >= 1")
        v = self.val_attack_steps
        check_range("eval.val_attack_steps", v, v >= 0, "allowed: an integer >= 0")
        if not self.attacks:
            raise ConfigError("eval.attacks: give at least one attack (e.g. natural, pgd20)")
        for name in self.attacks:
            parse_attack(name, 0.1, 0.01, key="eval.attacks")


@dataclass
class RunConfig:
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    out: str = "runs/run"
    amp: bool = True  # bf16 autocast on GPU (never on CPU)
    channels_last: bool = False
    compile: bool = False
    sync_bn: bool = False  # SyncBatchNorm in the student when data-parallel (GPUs only)
    progress: bool = True
    tensorboard: bool = False
    teacher: str | None = None  # exported teacher model or robustbench:<dataset>/<threat>/<name>
    init: str | None = None  # exported model (or RobustBench id) to start the student from
    zoo_root: str | None = None  # RobustBench checkpoints: DIR/<dataset>/<threat>/<name>.pt
    zoo_download: bool = False  # fetch a missing RobustBench checkpoint into zoo_root
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    # The method's own options (`name` picks the method), parsed and checked when read.
    method: MethodOptions = field(default_factory=lambda: method_class("pgd_at").Options())
    attack: AttackConfig = field(default_factory=AttackConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        check_range("seed", self.seed, self.seed >= 0, "allowed: an integer >= 0")


# Settings that never change what a run trains: where it writes, how it shows progress and
# runs (device, precision, compilation), and what the final evaluation reports.
NOT_TRAINING = (
    "out",
    "progress",
    "device",
    "amp",
    "channels_last",
    "compile",
    "tensorboard",
    "eval.attacks",
    "eval.restarts",
    "eval.split",
    "eval.max_samples",
    "data.eval_batch_size",
    "zoo_root",  # where a RobustBench file lies; the file's contents are what count
    "zoo_download",
)
_PATH_KEYS = ("teacher", "init", "data.root")


def training_settings(config: RunConfig) -> dict[str, Any]:
    """What a run trains, as flat key -> value: every method option (defaults included),
    paths made absolute, and the NOT_TRAINING keys left out. Two configs train the same
    run exactly when these are equal."""
    data = to_dict(config)
    # Nulls in `attack` mean "the method's default": compare what is actually run.
    defaults = method_class(config.method.name).attack_defaults
    data["attack"] = to_dict(config.attack.resolve(defaults))
    flat = flatten(data)
    for key in _PATH_KEYS:
        if flat.get(key) is not None and ":" not in flat[key]:  # a path, not a zoo id
            flat[key] = str(Path(flat[key]).expanduser().resolve())
    return {k: v for k, v in sorted(flat.items()) if k not in NOT_TRAINING}


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Keys whose values differ between two flat settings mappings (missing = None)."""
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def load_run_config(
    path: str | Path | None,
    overrides: list[str] | None = None,
    settings: dict[str, Any] | None = None,
) -> RunConfig:
    """Read a RunConfig from YAML (or defaults when path is None), set `settings` (dotted key
    -> value, e.g. a command's flags), then apply the dotted `overrides`; the method section
    becomes the chosen method's own Options, every key checked."""
    data = load_yaml(path) if path is not None else {}
    # Start the method section from the default method's name, so that an override like
    # method.beta=3 adds to it instead of replacing it.
    data.setdefault("method", {"name": RunConfig().method.name})
    for key, value in (settings or {}).items():
        data = set_value(data, key.split("."), value, key)
    data = apply_overrides(data, overrides or [])
    return from_dict(RunConfig, data)
