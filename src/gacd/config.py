"""Typed run configs: dataclasses filled from YAML files and dotted command-line overrides.

Every key is checked: an unknown key or a value of the wrong type is a `ConfigError` that
names the key and says what is allowed.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from gacd.attacks.pgd import StartKind
from gacd.errors import ConfigError
from gacd.evaluation.robust import parse_attack

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


def check_range(key: str, value: float | None, ok: bool, allowed: str) -> None:
    """Raise a ConfigError naming `key`, its `value` and what is `allowed` unless `ok`."""
    if not ok:
        raise ConfigError(f"{key}: {value!r} is out of range; {allowed}")


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
    method: dict[str, Any] = field(default_factory=lambda: {"name": "pgd_at"})
    attack: AttackConfig = field(default_factory=AttackConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        check_range("seed", self.seed, self.seed >= 0, "allowed: an integer >= 0")


T = TypeVar("T")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return str(tp).replace("typing.", "")
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} is not {_type_name(tp)}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected null, got {value!r}")
    if origin is Literal:
        if value in args:
            return value
        allowed = ", ".join(repr(a) for a in args)
        raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {allowed}")
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported config type {tp}")


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from `data`, checking every key and value."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(
            f"unknown key '{prefix}{unknown[0]}'; allowed: {', '.join(prefix + n for n in names)}"
        )
    values = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**values)


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'optim': {'lr': 0.1}} -> {'optim.lr': 0.1} (model.kwargs stays one value)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value and key != "kwargs":
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


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
    """What a run trains, as flat key -> value: method options with their defaults filled
    in, paths made absolute, and the NOT_TRAINING keys left out. Two configs train the same
    run exactly when these are equal."""
    from gacd.methods import method_options  # methods import config: resolved at call time

    data = to_dict(config)
    cls, options = method_options(data["method"])
    data["method"] = {"name": cls.name, **dataclasses.asdict(options)}
    # Nulls in `attack` mean "the method's default": compare what is actually run.
    data["attack"] = to_dict(config.attack.resolve(cls.attack_defaults))
    flat = flatten(data)
    for key in _PATH_KEYS:
        if flat.get(key) is not None and ":" not in flat[key]:  # a path, not a zoo id
            flat[key] = str(Path(flat[key]).expanduser().resolve())
    return {k: v for k, v in sorted(flat.items()) if k not in NOT_TRAINING}


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Keys whose values differ between two flat settings mappings (missing = None)."""
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def parse_override(text: str) -> tuple[list[str], Any]:
    """'optim.lr=0.05' -> (['optim', 'lr'], 0.05); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.path=value")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override '{text}': cannot parse value: {yaml_problem(err)}") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of the nested mapping `data` with dotted overrides applied."""
    import copy

    data = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override '{text}': '{part}' is not a section")
            node = child
        node[path[-1]] = value
    return data


def yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error in one line: what went wrong and where."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    mark = getattr(err, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return f"{problem}{where}"


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {yaml_problem(err)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def load_run_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a RunConfig from YAML (or defaults when path is None) and apply overrides; the
    method section is validated against the chosen method's own options."""
    data = load_yaml(path) if path is not None else {}
    # The method section is a free-form mapping; start it from the default so that an
    # override like method.beta=3 adds to it instead of replacing the method name.
    data.setdefault("method", dict(RunConfig().method))
    data = apply_overrides(data, overrides or [])
    config = from_dict(RunConfig, data)
    validate_method_section(config.method)
    return config


def validate_method_section(section: dict[str, Any]) -> None:
    from gacd.methods import method_options

    method_options(section)  # raises ConfigError on a bad name, key or value
