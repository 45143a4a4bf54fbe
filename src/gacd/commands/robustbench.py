"""`gacd zoo`: the RobustBench models usable as teachers (robustbench:<dataset>/<threat>/
<name>), one entry's details, its download and a load check."""

from __future__ import annotations

import argparse

from gacd.commands.common import add_zoo_args
from gacd.errors import ConfigError
from gacd.models.zoo import (
    describe_entry,
    find_entry,
    load_zoo_model,
    locate_checkpoint,
    zoo_entries,
    zoo_table,
)


def run(args: argparse.Namespace) -> int:
    if args.id is None:
        if args.download or args.check:
            raise ConfigError("--download and --check need an entry: gacd zoo robustbench:...")
        print(zoo_table(zoo_entries(args.dataset, args.threat), markdown=args.markdown))
        return 0
    entry = find_entry(args.id)
    if args.download:
        locate_checkpoint(entry.id, args.zoo_root, download=True)
    print(describe_entry(entry, args.zoo_root))
    if args.download or args.check:
        model = load_zoo_model(entry.id, args.zoo_root)
        n = sum(p.numel() for p in model.parameters())
        print(f"  loaded: every key of the file fits {entry.architecture} ({n / 1e6:.2f}M params)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "zoo", help="RobustBench models usable as robustbench:<dataset>/<threat>/<name>"
    )
    p.add_argument("id", nargs="?", help="one entry: its details and where its file goes")
    p.add_argument("--dataset", help="list only this dataset's entries (cifar10, cifar100)")
    p.add_argument("--threat", help="list only this threat model's entries (Linf, L2)")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.add_argument("--check", action="store_true", help="load the entry's file to check it")
    add_zoo_args(p)
    p.set_defaults(func=run)
