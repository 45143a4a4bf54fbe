"""Models by name, with one constructor signature for all."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from gacd.errors import ConfigError
from gacd.models.base import ImageClassifier

ModelFactory = Callable[..., ImageClassifier]
_REGISTRY: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Register `factory(in_channels, num_classes, mean, std, **kwargs)` under `name`."""

    def wrap(factory: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' registered twice")
        _REGISTRY[name] = factory
        return factory

    return wrap


def model_names() -> list[str]:
    _import_all()
    return sorted(_REGISTRY)


def build_model(
    arch: str,
    *,
    in_channels: int,
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    **kwargs: Any,
) -> ImageClassifier:
    _import_all()
    if arch not in _REGISTRY:
        raise ConfigError(
            f"model.arch: unknown architecture '{arch}'; known: {', '.join(sorted(_REGISTRY))}"
        )
    if len(mean) != in_channels or len(std) != in_channels:
        raise ValueError(f"mean/std need {in_channels} values, got {len(mean)} and {len(std)}")
    model = _REGISTRY[arch](
        in_channels=in_channels, num_classes=num_classes, mean=tuple(mean), std=tuple(std), **kwargs
    )
    # The spec travels with exported weights so `gacd.load_model` can rebuild the model.
    model.spec = {
        "arch": arch,
        "in_channels": in_channels,
        "num_classes": num_classes,
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "kwargs": dict(kwargs),
    }
    return model


def _import_all() -> None:
    # Importing the modules runs their @register_model decorators.
    import gacd.models.small_cnn  # noqa: F401

    for module in ("resnet", "preact_resnet", "wide_resnet", "dm_resnet", "mobilenetv2"):
        try:
            __import__(f"gacd.models.{module}")
        except ModuleNotFoundError as err:
            if err.name != f"gacd.models.{module}":
                raise
