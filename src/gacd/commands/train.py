"""`gacd train` and its shorthands: `distill` (a student from a teacher), `finetune` (AFT of
a distilled student), `linear-eval` (a classifier on a student's frozen features)."""

from __future__ import annotations

import argparse

from gacd.commands.common import add_config_args
from gacd.config import load_run_config
from gacd.training import train


def run_training(args: argparse.Namespace, preset: list[str] | None = None) -> int:
    """Train as the config, the `preset` overrides of a shorthand and the user's overrides
    (which come last and win) say; print where the models went."""
    config = load_run_config(args.config, [*(preset or []), *args.overrides])
    result = train(config, resume=not args.no_resume, epoch_lines=True)
    last = result.history[-1] if result.history else {}
    print(f"trained {result.epochs} epochs -> {result.out_dir}")
    print(f"  best epoch {result.best_epoch} ({config.method.name}): {result.model_best}")
    print(f"  last epoch: {result.model_last}")
    shown = {k: round(v, 2) for k, v in last.items() if k.startswith("val_")}
    if shown:
        print(f"  last validation: {shown}")
    return 0


def _distill(args: argparse.Namespace) -> int:
    preset = [f"teacher={args.teacher}", f"method.name={args.method}"]
    if args.student:
        preset.append(f"model.arch={args.student}")
    return run_training(args, preset)


def _finetune(args: argparse.Namespace) -> int:
    # AFT: PGD adversarial training of the whole network, starting from the distilled student.
    return run_training(args, [f"init={args.student}", "method.name=pgd_at"])


def _linear_eval(args: argparse.Namespace) -> int:
    return run_training(args, [f"init={args.student}", "method.name=linear"])


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model (teacher, plain model, or any method)")
    add_config_args(p)
    p.set_defaults(func=run_training)

    p = sub.add_parser("distill", help="distil a student from an exported teacher")
    p.add_argument(
        "--teacher",
        required=True,
        help="exported teacher model (model_best.pt) or robustbench:<dataset>/<threat>/<name> "
        "(read from zoo_root=DIR or $GACD_ZOO)",
    )
    p.add_argument("--method", default="gacd", help="distillation method (default: gacd)")
    p.add_argument("--student", help="student architecture (default: the config's)")
    add_config_args(p)
    p.set_defaults(func=_distill)

    p = sub.add_parser("finetune", help="adversarial fine-tuning (AFT) of a distilled student")
    p.add_argument("--student", required=True, help="exported student model to start from")
    add_config_args(p)
    p.set_defaults(func=_finetune)

    p = sub.add_parser("linear-eval", help="train a classifier on a student's frozen features")
    p.add_argument("--student", required=True, help="exported student model")
    add_config_args(p)
    p.set_defaults(func=_linear_eval)
