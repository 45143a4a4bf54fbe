"""`gacd` command line: thin; it parses, builds a config and calls a stage."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gacd.errors import ConfigError, GacdError


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML run config (defaults when omitted)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides, e.g. optim.lr=0.05 method.temperature=0.2",
    )
    p.add_argument(
        "--no-resume",
        action="store_true",
        help="start afresh: discard the run OUT holds (a different config is refused otherwise)",
    )


def _add_zoo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--zoo-root",
        help="RobustBench checkpoints, as DIR/<dataset>/<threat>/<name>.pt (default: $GACD_ZOO)",
    )
    p.add_argument(
        "--download",
        action="store_true",
        help="fetch a missing RobustBench checkpoint from Google Drive into the zoo root",
    )


def _cmd_train(args: argparse.Namespace) -> int:
    from gacd.config import load_run_config
    from gacd.training import train

    overrides = list(args.overrides) + getattr(args, "extra_overrides", [])
    config = load_run_config(args.config, overrides)
    result = train(config, resume=not args.no_resume, epoch_lines=True)
    last = result.history[-1] if result.history else {}
    print(f"trained {result.epochs} epochs -> {result.out_dir}")
    print(f"  best epoch {result.best_epoch} ({config.method['name']}): {result.model_best}")
    print(f"  last epoch: {result.model_last}")
    shown = {k: round(v, 2) for k, v in last.items() if k.startswith("val_")}
    if shown:
        print(f"  last validation: {shown}")
    return 0


def _cmd_distill(args: argparse.Namespace) -> int:
    args.extra_overrides = [f"teacher={args.teacher}", f"method.name={args.method}"]
    if args.student:
        args.extra_overrides.append(f"model.arch={args.student}")
    return _cmd_train(args)


def _cmd_finetune(args: argparse.Namespace) -> int:
    # AFT: PGD adversarial training of the whole network, starting from the distilled student.
    args.extra_overrides = [f"init={args.student}", "method.name=pgd_at"]
    return _cmd_train(args)


def _cmd_linear_eval(args: argparse.Namespace) -> int:
    args.extra_overrides = [f"init={args.student}", "method.name=linear"]
    return _cmd_train(args)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from gacd.evaluate import evaluate_command

    payload = evaluate_command(
        model_path=args.model,
        dataset=args.dataset,
        root=args.data_root,
        split=args.split,
        attacks=[a for a in args.attacks.split(",") if a.strip()],
        eps=args.eps,
        step_size=args.step_size,
        restarts=args.restarts,
        batch_size=args.batch_size,
        max_samples=args.max_samples,
        out=args.out,
        device=args.device,
        seed=args.seed,
        zoo_root=args.zoo_root,
        download=args.download,
    )
    for name, acc in payload["accuracy"].items():
        print(f"{name:>12}: {acc:6.2f}%   ({payload['attacks'][name]})")
    for warning in payload.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _cmd_zoo(args: argparse.Namespace) -> int:
    from gacd.models.zoo import (
        describe_entry,
        find_entry,
        load_zoo_model,
        locate_checkpoint,
        zoo_entries,
        zoo_table,
    )

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


def _cmd_analyze(args: argparse.Namespace) -> int:
    from gacd.analyze import parse_model_args, parse_pair, run_analysis, summary_lines

    payload = run_analysis(
        teacher=args.teacher,
        models=parse_model_args(args.models),
        out=args.out,
        dataset=args.dataset,
        root=args.data_root,
        classes_pair=parse_pair(args.classes_pair) if args.classes_pair else None,
        samples=args.samples,
        corr_samples=args.corr_samples,
        eps=args.eps,
        step_size=args.step_size,
        steps=args.steps,
        corr_attack=args.corr_attack,
        tsne_attacker=args.tsne_attacker,
        tsne_targeted=not args.tsne_untargeted,
        tsne_only_fooled=args.tsne_only_fooled,
        device=args.device,
        seed=args.seed,
    )
    print("\n".join(summary_lines(payload)))
    figures = ", ".join(Path(f).name for f in payload["figures"].values())
    print(f"wrote {figures} and analysis.json to {args.out}")
    return 0


def _cmd_transfer(args: argparse.Namespace) -> int:
    from gacd.experiments.probe import run_transfer

    try:
        classes = [int(c) for c in args.classes.split(",") if c.strip()] if args.classes else None
    except ValueError:
        raise ConfigError(
            f"--classes '{args.classes}': expected comma-separated integers, e.g. 5,6,7,8,9"
        ) from None
    payload = run_transfer(
        args.student,
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
        resume=not args.no_resume,
    )
    for name, acc in payload["accuracy"].items():
        print(f"{name:>12}: {acc:6.2f}%   ({payload['attacks'][name]})")
    print(f"results -> {Path(args.out) / 'transfer.json'}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from gacd.demo import run_demo

    run_demo(
        Path(args.out),
        full=args.full,
        seed=args.seed,
        device=args.device,
        progress=not args.quiet,
        epochs_scale=args.epochs_scale,
        threads=args.threads,
    )
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from gacd.engine.distributed import is_main
    from gacd.experiments import load_experiment, plan_experiment, run_experiment

    experiment = load_experiment(args.config, list(args.overrides))
    if args.dry_run:
        from gacd.experiments.runner import describe_plan

        for line in describe_plan(experiment, plan_experiment(experiment)):
            print(line)
        return 0
    results = run_experiment(experiment, report=not args.no_report)
    if is_main():  # under torchrun, rank 0 speaks for all
        print(f"{len(results['records'])} evaluations -> {Path(experiment.out) / 'results.json'}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from gacd.experiments import write_report

    print(f"report: {write_report(args.run_dir)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gacd",
        description="Transfer adversarial robustness from a robust teacher to a student "
        "(GACD and baselines), and measure it honestly.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model (teacher, plain model, or any method)")
    _add_config_args(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("distill", help="distil a student from an exported teacher")
    p.add_argument(
        "--teacher",
        required=True,
        help="exported teacher model (model_best.pt) or robustbench:<dataset>/<threat>/<name> "
        "(read from zoo_root=DIR or $GACD_ZOO)",
    )
    p.add_argument("--method", default="gacd", help="distillation method (default: gacd)")
    p.add_argument("--student", help="student architecture (default: the config's)")
    _add_config_args(p)
    p.set_defaults(func=_cmd_distill)

    p = sub.add_parser("finetune", help="adversarial fine-tuning (AFT) of a distilled student")
    p.add_argument("--student", required=True, help="exported student model to start from")
    _add_config_args(p)
    p.set_defaults(func=_cmd_finetune)

    p = sub.add_parser("linear-eval", help="train a classifier on a student's frozen features")
    p.add_argument("--student", required=True, help="exported student model")
    _add_config_args(p)
    p.set_defaults(func=_cmd_linear_eval)

    p = sub.add_parser("evaluate", help="accuracy of an exported model under attacks")
    p.add_argument(
        "model",
        help="exported model file (model_best.pt / model_last.pt) or a RobustBench id, "
        "robustbench:<dataset>/<threat>/<name>",
    )
    p.add_argument("--dataset", help="dataset name (default: the one the model was trained on)")
    p.add_argument("--data-root", help="directory holding the dataset files")
    p.add_argument("--split", default="test", choices=["test", "val", "train"])
    p.add_argument(
        "--attacks",
        default="natural,pgd20",
        help="comma-separated: natural, fgsm, pgdK, cw/cwK, autoattack",
    )
    p.add_argument("--eps", type=float, help="L-inf budget (default: the dataset's)")
    p.add_argument("--step-size", type=float, help="PGD step (default: the dataset's)")
    p.add_argument("--restarts", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--max-samples", type=int, help="evaluate on the first N samples only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="directory for evaluation.json / evaluation.md")
    _add_zoo_args(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser(
        "zoo", help="RobustBench models usable as robustbench:<dataset>/<threat>/<name>"
    )
    p.add_argument("id", nargs="?", help="one entry: its details and where its file goes")
    p.add_argument("--dataset", help="list only this dataset's entries (cifar10, cifar100)")
    p.add_argument("--threat", help="list only this threat model's entries (Linf, L2)")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.add_argument("--check", action="store_true", help="load the entry's file to check it")
    _add_zoo_args(p)
    p.set_defaults(func=_cmd_zoo)

    p = sub.add_parser("analyze", help="logit-correlation and t-SNE analysis (paper Figs 3-5)")
    p.add_argument("--teacher", required=True, help="exported teacher model")
    p.add_argument(
        "--models", nargs="+", required=True, metavar="NAME=PATH", help="models to compare"
    )
    p.add_argument("--dataset", help="dataset name (default: the one the models record)")
    p.add_argument("--data-root", help="directory holding the dataset files")
    p.add_argument("--classes-pair", help="t-SNE classes a,b (default 2,9: bird,truck)")
    p.add_argument("--samples", type=int, default=100, help="t-SNE images per class")
    p.add_argument("--corr-samples", type=int, default=1000, help="images for correlations")
    p.add_argument("--eps", type=float, help="L-inf budget (default: the dataset's)")
    p.add_argument("--step-size", type=float, help="PGD step (default: the dataset's)")
    p.add_argument("--steps", type=int, default=20, help="PGD steps (default 20)")
    p.add_argument(
        "--corr-attack",
        default="student",
        choices=["student", "teacher"],
        help="model the correlation's adversarial inputs are crafted on (default: student)",
    )
    p.add_argument(
        "--tsne-attacker",
        default="self",
        help="'self' (each model attacks itself) or a model name crafting for all panels",
    )
    p.add_argument(
        "--tsne-untargeted", action="store_true", help="untargeted PGD, not toward class a"
    )
    p.add_argument(
        "--tsne-only-fooled", action="store_true", help="keep adversarial b classified as a"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=_cmd_analyze)

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
    p.set_defaults(func=_cmd_transfer)

    p = sub.add_parser("demo", help="robust teacher, undefended model and students on digits")
    p.add_argument("--out", default="demo_out", help="output directory (default: demo_out)")
    p.add_argument(
        "--full", action="store_true", help="three seeds and full AutoAttack (much slower)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: fastest for the tiny digits models)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--epochs-scale",
        type=float,
        default=1.0,
        help="multiply every stage's epochs (e.g. 0.2 for a quick look)",
    )
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "run", help="run an experiment: teachers -> students -> evaluation -> report (cached)"
    )
    p.add_argument("config", help="experiment YAML (e.g. configs/digits/experiments/table1.yaml)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides of the experiment, e.g. out=runs/t1 base.optim.epochs=5",
    )
    p.add_argument("--dry-run", action="store_true", help="list the stages and their state only")
    p.add_argument("--no-report", action="store_true", help="do not write report.md at the end")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("report", help="render RUN_DIR/report.md from RUN_DIR/results.json")
    p.add_argument("run_dir", help="an experiment's out directory")
    p.set_defaults(func=_cmd_report)
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse with dotted overrides allowed anywhere among a sub-command's flags
    (`gacd run CFG --dry-run out=x`); a sub-command's error shows its own usage."""
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    if argv and argv[0] in commands:
        args = commands[argv[0]].parse_intermixed_args(argv[1:])
        args.command = argv[0]
        return args
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run one command. Errors a user can fix (GacdError) print one line and exit non-zero;
    anything else is a bug and keeps its traceback."""
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        return args.func(args)
    except GacdError as err:
        print(f"gacd {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(
            f"gacd {args.command}: interrupted; finished epochs are saved: re-run the same "
            "command to resume",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
