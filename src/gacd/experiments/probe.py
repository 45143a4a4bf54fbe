"""Robustness transfer (paper Table 4): freeze a student, train a linear classifier on
another dataset or label set, report natural and PGD-7 accuracy on that task's test split.

Built from the ordinary machinery: the `linear` method (only the classifier trains, the
body stays in eval mode), the trainer, and `evaluate_model` on the test split (used for
the final numbers only). The linear method starts from the exported student and gives it
a fresh classifier sized for the target task.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gacd.config import RunConfig
from gacd.engine.export import load_model, load_model_meta
from gacd.errors import CheckpointError
from gacd.evaluation.results import markdown_table, write_results
from gacd.experiments.spec import deep_merge
from gacd.options import apply_overrides, from_dict
from gacd.training import evaluate_configured, prepare_data, resolve_device, train

DEFAULT_ATTACKS = ("natural", "pgd7")


def transfer_settings(
    student: str | Path,
    *,
    dataset: str,
    out_dir: str | Path,
    root: str | None = None,
    classes: Sequence[int] | None = None,
    resize: int | None = None,
    epochs: int = 20,
    lr: float = 0.2,
    eps: float | None = None,
    step_size: float | None = None,
    attacks: Sequence[str] = DEFAULT_ATTACKS,
    batch_size: int = 128,
    max_samples: int | None = None,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
    force: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The probe's RunConfig as a mapping: the one place the transfer recipe is written
    (`gacd transfer` and an experiment's transfer stages both use it). `force` (an
    experiment's quick-check overrides) applies to everything but the recipe's own keys."""
    data: dict[str, Any] = {
        "device": device,
        "progress": progress,
        "data": {
            "name": dataset,
            "root": root,
            "classes": list(classes) if classes is not None else None,
            "resize": resize,
            "batch_size": batch_size,
        },
        "optim": {"epochs": epochs, "lr": lr},
        "eval": {"eps": eps, "step_size": step_size, "max_samples": max_samples},
    }
    data = deep_merge(data, force or {})
    return deep_merge(
        data,
        {
            "method": {"name": "linear"},  # a fresh classifier sized for the target task
            "seed": seed,
            "init": str(student),
            "out": str(out_dir),
            # Linear evaluation: no weight decay on the probe (as configs/digits/linear.yaml).
            "optim": {"weight_decay": 0.0},
            # No per-epoch validation attack: the last epoch is evaluated, and PGD on the
            # validation split would cost more than training a probe on frozen features.
            "eval": {"attacks": list(attacks), "val_attack_steps": 0},
        },
    )


def transfer_config(
    student: str | Path, overrides: list[str] | None = None, **settings: Any
) -> RunConfig:
    """`transfer_settings` with dotted `overrides` applied, as a checked RunConfig (every
    value's type and range)."""
    data = apply_overrides(transfer_settings(student, **settings), overrides or [])
    return from_dict(RunConfig, data)


def run_transfer(
    config: RunConfig, *, resume: bool = True, ignore: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Train the linear probe `config` describes (see `transfer_config`) on the frozen
    features of the model at `config.init`, evaluate its last epoch on the target's test
    split under `config.eval.attacks`, and write transfer.json / transfer.md to
    `config.out`. Returns the JSON payload. `ignore`: config keys a pipeline vouches for
    itself (see `gacd.training.train`)."""
    student_path = Path(config.init or "")
    out = Path(config.out)
    if not student_path.is_file():
        raise CheckpointError(f"student model not found: {student_path}")
    torch_device = resolve_device(config.device)
    # Read (and check: classes, resize, root) the target data before writing anything.
    data = prepare_data(config, torch_device)
    # (Attack names were checked with the config: a typo fails before training.)
    dataset, resize = config.data.name, config.data.resize
    epochs, lr = config.optim.epochs, config.optim.lr
    result = train(config, resume=resume, data=data, ignore=ignore)

    # The probe after its last epoch, the usual linear-evaluation protocol. The trainer's
    # pick (best validation PGD accuracy) favoured under-trained, near-constant probes on
    # digits: robust accuracy at epoch 1 with ~50% clean accuracy.
    probe = load_model(result.model_last, torch_device)
    evaluation = evaluate_configured(probe, data, config, split="test")
    source = load_model_meta(student_path)
    payload: dict[str, Any] = {
        "student": str(student_path),
        "source": {k: source.get(k) for k in ("dataset", "classes", "resize", "method")},
        "target": {
            "dataset": dataset,
            "classes": config.data.classes,
            "resize": resize,
            "num_classes": data.raw.num_classes,
            "train_samples": len(data.train),
            "test_samples": len(data.test),
        },
        "probe": {
            "epochs": epochs,
            "lr": lr,
            "selected": "last epoch",
            "model": str(result.model_last),
        },
        "split": "test",
        **evaluation,
    }
    write_results(out, "transfer", payload, transfer_markdown(payload))
    return payload


def transfer_markdown(payload: dict[str, Any]) -> str:
    def task(d: dict[str, Any]) -> str:
        text = str(d.get("dataset"))
        if d.get("classes") is not None:
            text += f" classes {d['classes']}"
        if d.get("resize") is not None:
            text += f" resized to {d['resize']}x{d['resize']}"
        return text

    rows = [[n, acc, payload["attacks"][n]] for n, acc in payload["accuracy"].items()]
    probe = payload["probe"]
    return (
        "# Robustness transfer (linear probe on frozen features)\n\n"
        f"- student: `{payload['student']}` (trained on {task(payload['source'])})\n"
        f"- target: {task(payload['target'])}, {payload['target']['num_classes']} classes\n"
        f"- probe: {probe['epochs']} epochs, lr {probe['lr']}, {probe['selected']}\n"
        f"- evaluated on {payload['samples']} {payload['split']} samples, eps {payload['eps']:.4g}"
        "\n\n" + markdown_table(["attack", "accuracy (%)", "settings"], rows) + "\n"
    )
