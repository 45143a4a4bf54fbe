"""Reading an experiment: YAML and dotted overrides -> a checked ExperimentConfig (its own
keys by `spec`, every stage's RunConfig by planning it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gacd.errors import ConfigError
from gacd.experiments.plan import plan_experiment
from gacd.experiments.spec import ExperimentConfig, parse_experiment
from gacd.options import apply_overrides, load_yaml


def experiment_from_dict(data: dict[str, Any]) -> ExperimentConfig:
    """Build and check an ExperimentConfig: keys, types, and every stage's RunConfig (by
    planning it)."""
    exp = parse_experiment(data)
    plan_experiment(exp)
    return exp


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read an experiment YAML, apply dotted overrides (e.g. base.optim.epochs=1), check it."""
    written = load_yaml(path)
    exp = experiment_from_dict(apply_overrides(written, overrides or []))
    try:  # overrides may be what makes the file valid: then there is nothing to compare
        as_written = experiment_from_dict(written) if overrides else exp
    except ConfigError:
        return exp
    exp.file_epochs = {
        key: stage.config.optim.epochs for key, stage in plan_experiment(as_written).stages.items()
    }
    return exp
