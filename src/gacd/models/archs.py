"""Architectures by name: one record each (`ArchInfo`) and one constructor, `build_model`.

This module imports no architecture: each architecture module registers its names when
imported, and `gacd.models` imports them all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

from gacd.models.classifier import ImageClassifier
from gacd.registry import Registry

ModelFactory = Callable[..., ImageClassifier]


@dataclass(frozen=True)
class ArchInfo:
    """One architecture name.

    `factory(in_channels, num_classes, mean, std, **kwargs)` builds it, with `defaults`
    under the caller's kwargs. `channels` and `size` are the input it was designed for
    (3 x 32 x 32 for the CIFAR nets), None where the design states none.
    """

    name: str
    label: str  # how reports print it: "ResNet-18", "WRN-34-10"
    factory: ModelFactory
    channels: int | None = None
    size: int | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)


MODELS: Registry[ArchInfo] = Registry("architecture", key="model.arch")


@overload
def register_model(
    name: str,
    factory: None = None,
    *,
    label: str | None = None,
    channels: int | None = None,
    size: int | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> Callable[[ModelFactory], ModelFactory]: ...


@overload
def register_model(
    name: str,
    factory: ModelFactory,
    *,
    label: str | None = None,
    channels: int | None = None,
    size: int | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> ModelFactory: ...


def register_model(
    name: str,
    factory: ModelFactory | None = None,
    *,
    label: str | None = None,
    channels: int | None = None,
    size: int | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> ModelFactory | Callable[[ModelFactory], ModelFactory]:
    """Register `factory(in_channels, num_classes, mean, std, **kwargs)` under `name`;
    without `factory`, a decorator that registers the function it decorates. The label
    defaults to the name."""

    def add(fn: ModelFactory) -> ModelFactory:
        info = ArchInfo(name, label or name, fn, channels, size, dict(defaults or {}))
        MODELS.register(name, info)
        return fn

    return add if factory is None else add(factory)


def model_info(name: str) -> ArchInfo:
    """The record of architecture `name` (`UnknownName` if none)."""
    return MODELS.get(name)


def model_names() -> list[str]:
    return sorted(MODELS.names())


def build_model(
    arch: str,
    *,
    in_channels: int,
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    **kwargs: Any,
) -> ImageClassifier:
    info = MODELS.get(arch)
    if len(mean) != in_channels or len(std) != in_channels:
        raise ValueError(f"mean/std need {in_channels} values, got {len(mean)} and {len(std)}")
    model = info.factory(
        in_channels=in_channels,
        num_classes=num_classes,
        mean=tuple(mean),
        std=tuple(std),
        **{**info.defaults, **kwargs},
    )
    # The spec travels with exported weights so `gacd.load_model` can rebuild the model;
    # it keeps the caller's kwargs only, the record supplies the defaults again.
    model.spec = {
        "arch": arch,
        "in_channels": in_channels,
        "num_classes": num_classes,
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "kwargs": dict(kwargs),
    }
    return model
