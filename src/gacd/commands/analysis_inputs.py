"""What `gacd analyze` is given, checked and loaded before any work: model names and
files, the options, the t-SNE class pair, and the one dataset every model was trained on."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from gacd.attacks import AttackSpec
from gacd.config import RunConfig
from gacd.engine.export import load_model, load_model_meta, model_file
from gacd.errors import CheckpointError, ConfigError
from gacd.models.zoo import is_zoo_id
from gacd.training import (
    PreparedData,
    check_model_fits,
    eval_budget,
    prepare_data,
    resolve_device,
)

TEACHER = "teacher"
# Bird and truck on CIFAR-10, the paper's pair; on other 10-class sets simply classes 2, 9.
DEFAULT_PAIR = (2, 9)
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def parse_model_args(items: Sequence[str]) -> list[tuple[str, str]]:
    """['ard=runs/ard/model_best.pt', ...] -> [('ard', 'runs/ard/model_best.pt'), ...]."""
    out: list[tuple[str, str]] = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--models entry '{item}' must look like name=path")
        out.append((name, path))
    return out


def parse_pair(text: str) -> tuple[int, int]:
    parts = [p.strip() for p in text.split(",")]
    try:
        a, b = (int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"--classes-pair '{text}' must be two class indices, e.g. 2,9") from None
    return a, b


def check_models(teacher: str, models: Sequence[tuple[str, str]]) -> dict[str, str]:
    if not models:
        raise ConfigError("no models to analyse: pass --models name=path [name=path ...]")
    paths = {TEACHER: teacher}
    for name, path in models:
        if not _NAME.fullmatch(name):
            raise ConfigError(f"model name '{name}': use letters, digits, '_', '-', '.' only")
        if name in paths:
            raise ConfigError(f"model name '{name}' is used twice (or is the reserved 'teacher')")
        paths[name] = path
    for name, path in paths.items():
        if is_zoo_id(path):
            model_file(path)  # a RobustBench id, read from $GACD_ZOO; says how to get it
        elif not Path(path).is_file():
            raise CheckpointError(f"{name}: model file not found: {path}")
    return paths


def _data_identity(meta: dict[str, Any]) -> tuple[Any, Any, Any]:
    classes = meta.get("classes")
    return meta.get("dataset"), tuple(classes) if classes else None, meta.get("resize")


def common_dataset(paths: dict[str, str], dataset: str | None) -> tuple[str, dict[str, Any]]:
    """The one dataset every model was trained on (name, label subset, size), checked from
    the exported metadata before any data is read."""
    metas = {name: load_model_meta(path) for name, path in paths.items()}
    known = {name: _data_identity(m) for name, m in metas.items() if m.get("dataset")}
    if len(set(known.values())) > 1:
        listing = ", ".join(
            f"{n}: {d}" + (f" classes {c}" if c else "") + (f" resize {r}" if r else "")
            for n, (d, c, r) in known.items()
        )
        raise ConfigError(f"the models were trained on different datasets ({listing})")
    if known:
        meta = metas[next(iter(known))]
        if dataset is not None and dataset != meta["dataset"]:
            raise ConfigError(
                f"--dataset {dataset}, but the models were trained on {meta['dataset']}"
            )
        return meta["dataset"], meta
    if dataset is None:
        raise ConfigError("no model records its dataset: pass --dataset")
    return dataset, {}


@dataclass
class AnalysisOptions:
    """What to analyse beyond the run config: the t-SNE pair and sample counts, the PGD
    steps, and which model the adversarial inputs are crafted on."""

    classes_pair: tuple[int, int] | None = None  # default (2, 9) with >= 10 classes, else (0, 1)
    samples: int = 100  # t-SNE images per class
    corr_samples: int = 1000  # images for the logit correlations
    steps: int = 20
    corr_attack: str = "student"  # the model the correlation's PGD attacks
    tsne_attacker: str = "self"  # "self" or the name of the model crafting every panel's inputs
    tsne_targeted: bool = True  # PGD toward class a (else untargeted)
    tsne_only_fooled: bool = False  # keep only adversarial b classified as a

    def __post_init__(self) -> None:
        if self.corr_attack not in ("student", "teacher"):
            raise ConfigError(
                f"corr_attack must be 'student' or 'teacher', got '{self.corr_attack}'"
            )
        if self.samples < 1 or self.corr_samples < 2:
            raise ConfigError("samples must be >= 1 and correlation samples >= 2")


@dataclass
class AnalysisInputs:
    paths: dict[str, str]
    models: dict[str, nn.Module]
    data: PreparedData
    pair: tuple[int, int]
    attack: AttackSpec
    meta: dict[str, Any]


def load_inputs(
    config: RunConfig,
    teacher: str,
    models: Sequence[tuple[str, str]],
    dataset_given: bool,
    opts: AnalysisOptions,
) -> AnalysisInputs:
    """Check and load everything before any work: files, names, the common dataset, the
    class pair, each model against the data."""
    paths = check_models(teacher, models)
    if opts.tsne_attacker != "self" and opts.tsne_attacker not in paths:
        raise ConfigError(
            f"t-SNE attacker '{opts.tsne_attacker}' is neither 'self' nor one of: "
            f"{', '.join(paths)}"
        )
    name, meta = common_dataset(paths, config.data.name if dataset_given else None)
    config.data.name = name
    config.data.classes = meta.get("classes")
    config.data.resize = meta.get("resize")
    device = resolve_device(config.device)
    # Models first: a wrong class index or architecture fails before a large dataset loads.
    loaded = {n: load_model(p, device) for n, p in paths.items()}
    c = int(loaded[TEACHER].spec["num_classes"])
    default = DEFAULT_PAIR if c >= 10 else (0, 1)
    a, b = opts.classes_pair if opts.classes_pair is not None else default
    for k in (a, b):
        if not 0 <= k < c:
            raise ConfigError(
                f"class index {k} is out of range: the models have classes 0..{c - 1}"
            )
    if a == b:
        raise ConfigError(f"--classes-pair needs two different classes, got {a},{b}")
    data = prepare_data(config, device)
    for model_name, model in loaded.items():
        check_model_fits(model, data.raw, f"{model_name}: {paths[model_name]}")
    eps, step_size = eval_budget(config, data.defaults)
    attack = AttackSpec(eps=eps, step_size=step_size, steps=opts.steps)
    return AnalysisInputs(paths, loaded, data, (a, b), attack, meta)
