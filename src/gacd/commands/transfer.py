"""`gacd transfer`: a linear probe of a frozen student on another dataset or label set
(paper Table 4). The flags fill the probe's RunConfig (`gacd.experiments.probe`), the same
one an experiment's transfer stage runs; dotted overrides of it work too."""

from __future__ import annotations

import argparse
from pathlib import Path

from gacd.commands.common import add_overrides, print_accuracies
from gacd.errors import ConfigError
from gacd.experiments.probe import run_transfer, transfer_config


def run(args: argparse.Namespace) -> int:
    try:
        classes = [int(c) for c in args.classes.split(",") if c.strip()] if args.classes else None
    except ValueError:
        raise ConfigError(
            f"--classes '{args.classes}': expected comma-separated integers, e.g. 5,6,7,8,9"
        ) from None
    config = transfer_config(
        args.student,
        list(args.overrides),
        dataset=args.dataset,
        root=args.data_root,
        classes=classes,
        resize=args.resize,
        out_dir=args.out,
        epochs=args.epochs,
        lr=args.lr,
        eps=args.eps,
        step_size=args.step_size,
        batch_size=args.batch_size,
        max_samples=args.max_samples,
        seed=args.seed,
        device=args.device,
        progress=not args.quiet,
    )
    payload = run_transfer(config, resume=not args.no_resume)
    print_accuracies(payload)
    print(f"results -> {Path(args.out) / 'transfer.json'}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "transfer", help="linear probe of a frozen student on another dataset / label set"
    )
    p.add_argument("--student", required=True, help="exported student model (model_best.pt)")
    p.add_argument("--dataset", required=True, help="target dataset name (e.g. digits, cifar100)")
    p.add_argument("--data-root", help="directory holding the target dataset's files")
    p.add_argument("--classes", help="keep these target labels only, e.g. 5,6,7,8,9")
    p.add_argument("--resize", type=int, help="resize target images to N x N")
    p.add_argument("--epochs", type=int, default=20, help="probe epochs (default: 20)")
    p.add_argument("--lr", type=float, default=0.2, help="probe learning rate (default: 0.2)")
    p.add_argument("--eps", type=float, help="L-inf budget (default: the target dataset's)")
    p.add_argument("--step-size", type=float, help="PGD step (default: the dataset's)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--max-samples", type=int, help="evaluate on the first N test samples only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--no-resume", action="store_true", help="start afresh even if OUT holds a run")
    p.add_argument("--out", required=True, help="output directory (transfer.json / transfer.md)")
    add_overrides(p, "eval.attacks=[natural,pgd20] data.eval_batch_size=256")
    p.set_defaults(func=run)
