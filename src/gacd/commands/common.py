"""What several commands share: the config arguments, the RobustBench arguments, and the
way a command's flags become RunConfig keys."""

from __future__ import annotations

import argparse
from typing import Any

from gacd.config import RunConfig, load_run_config
from gacd.options import parse_override


def add_overrides(p: argparse.ArgumentParser, example: str) -> None:
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help=f"dotted overrides, e.g. {example}"
    )


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML run config (defaults when omitted)")
    add_overrides(p, "optim.lr=0.05 method.temperature=0.2")
    p.add_argument(
        "--no-resume",
        action="store_true",
        help="start afresh: discard the run OUT holds (a different config is refused otherwise)",
    )


def add_zoo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--zoo-root",
        help="RobustBench checkpoints, as DIR/<dataset>/<threat>/<name>.pt (default: $GACD_ZOO)",
    )
    p.add_argument(
        "--download",
        action="store_true",
        default=None,
        help="fetch a missing RobustBench checkpoint from Google Drive into the zoo root",
    )


def config_from_flags(
    args: argparse.Namespace, flag_keys: dict[str, str], path: str | None = None
) -> tuple[RunConfig, set[str]]:
    """A command's RunConfig: defaults (or the YAML at `path`), then its flags (attribute ->
    dotted key; a flag left at None is not given), then its dotted overrides, which win.
    Also returns the keys the user set, so a command can fill the others from a model."""
    settings = {
        key: getattr(args, attr)
        for attr, key in flag_keys.items()
        if getattr(args, attr, None) is not None
    }
    overrides = list(getattr(args, "overrides", []))
    given = set(settings) | {".".join(parse_override(o)[0]) for o in overrides}
    return load_run_config(path, overrides, settings=settings), given


def print_accuracies(payload: dict[str, Any]) -> None:
    for name, acc in payload["accuracy"].items():
        print(f"{name:>12}: {acc:6.2f}%   ({payload['attacks'][name]})")


def split_list(text: str) -> list[str]:
    """'natural, pgd20' -> ['natural', 'pgd20']."""
    return [item.strip() for item in text.split(",") if item.strip()]
