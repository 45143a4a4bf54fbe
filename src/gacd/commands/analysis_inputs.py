"""What `gacd analyze` is given, checked before any work: model names and files, the
t-SNE class pair, and the one dataset every model was trained on."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gacd.engine.export import load_model_meta, model_file
from gacd.errors import CheckpointError, ConfigError
from gacd.models.zoo import is_zoo_id

TEACHER = "teacher"
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
