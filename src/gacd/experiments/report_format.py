"""How report cells are written: labels from the registries' records, what the data
really was, mean ± std over seeds, and the record groupings every table uses."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from gacd.data import DATASETS
from gacd.methods import METHODS
from gacd.models import MODELS


def attack_label(name: str) -> str:
    if name == "natural":
        return "Nat."
    if name == "autoattack":
        return "AutoAttack"
    match = re.fullmatch(r"(pgd|cw)(\d*)", name)
    if match:
        kind = match.group(1).upper()
        return f"{kind}-{match.group(2)}" if match.group(2) else kind
    return name.upper()


def arch_label(name: str | None) -> str:
    return MODELS.get(name).label if name in MODELS else name or "?"


def dataset_label(name: str) -> str:
    return DATASETS.get(name).label if name in DATASETS else name


def method_label(name: str) -> str:
    return (METHODS.get(name).label or name) if name in METHODS else name


def describe_data(info: dict[str, Any] | None) -> tuple[str, bool]:
    """What the data really was, and whether it is the full named dataset."""
    if not info:
        return "unknown data", False
    name = info.get("name", "?")
    record = DATASETS.get(name) if name in DATASETS else None
    pretty = dataset_label(name)
    n_train, n_test = info.get("train_samples"), info.get("test_samples")
    full = record is not None and record.is_full(n_train, n_test) and not info.get("classes")
    counts = f"{n_train} train (incl. validation) / {n_test} test images"
    extra = ""
    if info.get("classes"):
        extra += f", classes {info['classes']} relabelled 0..{len(info['classes']) - 1}"
    if info.get("resize"):
        extra += f", resized to {info['resize']}x{info['resize']}"
    if full:
        return f"{pretty} ({counts}{extra})", True
    if record is not None and record.needs_root:  # read from files anyone could write
        return f"files in {pretty}'s format, NOT the {pretty} dataset ({counts}{extra})", False
    return f"{pretty} ({counts}{extra})", False


def summarise(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (nan for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def fmt(values: list[float]) -> str:
    if not values:
        return "—"
    mean, std = summarise(values)
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


# -- grouping -------------------------------------------------------------------------------
def records_of(results: dict[str, Any], kind: str, selection: str) -> list[dict[str, Any]]:
    return [r for r in results["records"] if r["kind"] == kind and r["selection"] == selection]


def values_of(records: Iterable[dict[str, Any]], attack: str) -> list[float]:
    return [r["accuracy"][attack] for r in records if attack in r["accuracy"]]


def attacks_of(records: list[dict[str, Any]]) -> list[str]:
    seen: list[str] = []
    for r in records:
        for a in r["accuracy"]:
            if a not in seen:
                seen.append(a)
    return seen


def teacher_title(results: dict[str, Any], name: str | None) -> str:
    if name is None:
        return "no teacher"
    info = results["teachers"].get(name, {})
    if info.get("path"):
        return f"{info.get('label') or name} (exported: {info['path']})"
    method = method_label(info.get("method") or "?")
    return f"{info.get('label') or arch_label(info.get('arch'))} ({method})"


def seed_note(records: list[dict[str, Any]]) -> str:
    counts = defaultdict(set)
    for r in records:
        counts[(r["stage"].rsplit("/", 1)[0], r["selection"])].add(r["seed"])
    sizes = sorted({len(v) for v in counts.values()})
    if not sizes or sizes == [1]:
        return "one seed per cell"
    return f"mean ± std (sample) over {'/'.join(map(str, sizes))} seeds per cell"
