"""`gacd run` (an experiment's stages, cached and resumable, then its report) and `gacd
report` (the report again from results.json)."""

from __future__ import annotations

import argparse
from pathlib import Path

from gacd.commands.common import add_overrides
from gacd.engine.distributed import is_main
from gacd.experiments import load_experiment, plan_experiment, run_experiment, write_report
from gacd.experiments.records import describe_plan


def run(args: argparse.Namespace) -> int:
    experiment = load_experiment(args.config, list(args.overrides))
    if args.dry_run:
        for line in describe_plan(experiment, plan_experiment(experiment)):
            print(line)
        return 0
    results = run_experiment(experiment, report=not args.no_report)
    if is_main():  # under torchrun, rank 0 speaks for all
        print(f"{len(results['records'])} evaluations -> {Path(experiment.out) / 'results.json'}")
    return 0


def report(args: argparse.Namespace) -> int:
    print(f"report: {write_report(args.run_dir)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="run an experiment: teachers -> students -> evaluation -> report (cached)"
    )
    p.add_argument("config", help="experiment YAML (e.g. configs/digits/experiments/table1.yaml)")
    add_overrides(p, "out=runs/t1 base.optim.epochs=5 (keys of the experiment)")
    p.add_argument("--dry-run", action="store_true", help="list the stages and their state only")
    p.add_argument("--no-report", action="store_true", help="do not write report.md at the end")
    p.set_defaults(func=run)

    p = sub.add_parser("report", help="render RUN_DIR/report.md from RUN_DIR/results.json")
    p.add_argument("run_dir", help="an experiment's out directory")
    p.set_defaults(func=report)
