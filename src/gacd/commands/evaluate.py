"""`gacd evaluate`: an exported model (or a RobustBench id), a dataset split, a list of
attacks -> accuracies, and JSON + Markdown with `--out`.

The flags are RunConfig keys (`--eps` is `eval.eps`, `--dataset` is `data.name`, ...), so
dotted overrides work too, and the evaluation is the one every pipeline stage runs."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gacd.commands.common import (
    add_overrides,
    add_zoo_args,
    config_from_flags,
    print_accuracies,
    split_list,
)
from gacd.config import RunConfig
from gacd.engine.export import load_model, load_model_meta, model_file
from gacd.errors import ConfigError
from gacd.evaluation.results import evaluation_markdown, masking_warnings, write_results
from gacd.training import evaluate_configured, prepare_data, resolve_device

FLAG_KEYS = {
    "dataset": "data.name",
    "data_root": "data.root",
    "split": "eval.split",
    "attacks": "eval.attacks",
    "eps": "eval.eps",
    "step_size": "eval.step_size",
    "restarts": "eval.restarts",
    "batch_size": "data.eval_batch_size",
    "max_samples": "eval.max_samples",
    "seed": "seed",
    "device": "device",
    "zoo_root": "zoo_root",
    "download": "zoo_download",
}


def evaluate_file(model_path: str, config: RunConfig, dataset_given: bool) -> dict[str, Any]:
    """Evaluate the model at `model_path` as `config` says; without `dataset_given`, on the
    dataset (and label subset, image size) the model records."""
    model_file(model_path, config.zoo_root, config.zoo_download)  # there before any work
    meta = load_model_meta(model_path)
    if not dataset_given:
        if meta.get("dataset") is None:
            raise ConfigError(f"{model_path} does not record its dataset: pass --dataset")
        config.data.name = meta["dataset"]
    if config.data.name == meta.get("dataset"):  # the same label subset and size it saw
        config.data.classes = meta.get("classes")
        config.data.resize = meta.get("resize")
    device = resolve_device(config.device)
    data = prepare_data(config, device)
    model = load_model(model_path, device, zoo_root=config.zoo_root)
    result = evaluate_configured(model, data, config)
    return {
        "model": str(model_path),
        "dataset": config.data.name,
        "split": config.eval.split,
        **result,
        "warnings": masking_warnings(result["accuracy"]),
    }


def run(args: argparse.Namespace) -> int:
    if args.attacks is not None:
        args.attacks = split_list(args.attacks)
        if not args.attacks:
            raise ConfigError("--attacks is empty")
    config, given = config_from_flags(args, FLAG_KEYS)
    payload = evaluate_file(args.model, config, dataset_given="data.name" in given)
    print_accuracies(payload)
    for warning in payload["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    if args.out is not None:
        title = f"Evaluation of {args.model} on {payload['dataset']} ({payload['split']})"
        md = evaluation_markdown(title, payload)
        if payload["warnings"]:
            md += "\n" + "\n".join(f"> **Warning:** {w}" for w in payload["warnings"]) + "\n"
        write_results(args.out, "evaluation", payload, md)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="accuracy of an exported model under attacks")
    p.add_argument(
        "model",
        help="exported model file (model_best.pt / model_last.pt) or a RobustBench id, "
        "robustbench:<dataset>/<threat>/<name>",
    )
    p.add_argument("--dataset", help="dataset name (default: the one the model was trained on)")
    p.add_argument("--data-root", help="directory holding the dataset files")
    p.add_argument("--split", choices=["test", "val", "train"], help="default: test")
    p.add_argument(
        "--attacks",
        help="comma-separated: natural, fgsm, pgdK, cw/cwK, apgd-ce, apgd-t, fab-t, square, "
        "autoattack (default: natural,pgd20)",
    )
    p.add_argument("--eps", type=float, help="L-inf budget (default: the dataset's)")
    p.add_argument("--step-size", type=float, help="PGD step (default: the dataset's)")
    p.add_argument("--restarts", type=int, help="PGD restarts (default 1)")
    p.add_argument("--batch-size", type=int, help="evaluation batch (default 512)")
    p.add_argument("--max-samples", type=int, help="evaluate on the first N samples only")
    p.add_argument("--seed", type=int, help="seed of the attacks' random starts (default 0)")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--out", help="directory for evaluation.json / evaluation.md")
    add_zoo_args(p)
    add_overrides(p, "eval.restarts=5 data.classes=[0,1]")
    p.set_defaults(func=run)
