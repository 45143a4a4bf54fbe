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


class ConfigError(ValueError):
    """A config key or value is not allowed; the message names it and the alternatives."""


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


@dataclass
class ModelConfig:
    arch: str | None = None  # None: the dataset's default architecture
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class AttackConfig:
    """The training-time attack (PGD, L-inf). eps/step_size None: the dataset's defaults."""

    eps: float | None = None
    step_size: float | None = None
    steps: int = 10
    random_start: bool = True
    train_mode: bool = False  # attack with the model in train mode (BN stats still restored)


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
    teacher: str | None = None  # exported teacher model (distillation methods)
    init: str | None = None  # exported model to start the student from (AFT)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: dict[str, Any] = field(default_factory=lambda: {"name": "pgd_at"})
    attack: AttackConfig = field(default_factory=AttackConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


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
        raise ConfigError(f"override '{text}': cannot parse value: {err}") from None
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


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
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
