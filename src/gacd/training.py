"""Turn a RunConfig into data, models, a method and a trainer; the CLI's stages call these."""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from gacd.attacks import AttackSpec
from gacd.config import AttackConfig, RunConfig, changed_keys, training_settings
from gacd.data import (
    Augment,
    DatasetDefaults,
    DeviceSplit,
    RawDataset,
    dataset_info,
    read_dataset,
    resize_dataset,
    restrict_classes,
    split_validation,
)
from gacd.engine.checkpoint import load_checkpoint, seed_everything
from gacd.engine.distributed import init_from_env, is_distributed, is_main, rank, sync_batchnorm
from gacd.engine.export import load_model
from gacd.engine.streams import seed_rank_globals
from gacd.engine.trainer import CHECKPOINT, METRICS, MODEL_BEST, MODEL_LAST, Trainer, TrainResult
from gacd.errors import ConfigError, RunDirectoryError
from gacd.evaluation.results import evaluate_model
from gacd.evaluation.robust import parse_attack
from gacd.methods import MethodContext, build_method, method_class
from gacd.methods.linear import LinearOptions
from gacd.models import ImageClassifier, build_model
from gacd.options import from_dict, load_yaml, to_dict
from gacd.progress import interactive, say


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"device: '{name}' is not a device; use auto, cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: '{name}' asked for, but CUDA is not available here")
    return device


@dataclass
class PreparedData:
    raw: RawDataset
    defaults: DatasetDefaults
    train: DeviceSplit
    val: DeviceSplit
    test: DeviceSplit
    augment: Augment

    def split(self, name: str) -> DeviceSplit:
        return {"train": self.train, "val": self.val, "test": self.test}[name]


def prepare_data(config: RunConfig, device: torch.device) -> PreparedData:
    data = config.data
    raw = read_dataset(data.name, data.root, data.download)
    if data.classes is not None:
        raw = restrict_classes(raw, data.classes)
    if data.resize is not None:
        raw = resize_dataset(raw, data.resize)
    defaults = dataset_info(data.name).defaults
    train, val = split_validation(raw.train, data.val_fraction)
    augment = Augment(
        crop_padding=defaults.augment.crop_padding
        if data.crop_padding is None
        else data.crop_padding,
        flip=defaults.augment.flip if data.flip is None else data.flip,
    )
    return PreparedData(
        raw,
        defaults,
        DeviceSplit(train, raw.pixel_max, device),
        DeviceSplit(val, raw.pixel_max, device),
        DeviceSplit(raw.test, raw.pixel_max, device),
        augment,
    )


def training_attack(config: RunConfig, defaults: DatasetDefaults) -> AttackSpec:
    a = resolved_attack(config)
    assert a.steps is not None and a.random_start is not None and a.start is not None
    return AttackSpec(
        eps=defaults.eps if a.eps is None else a.eps,
        step_size=defaults.step_size if a.step_size is None else a.step_size,
        steps=a.steps,
        random_start=a.random_start,
        start=a.start,
        keep_best=bool(a.keep_best),
    )


def resolved_attack(config: RunConfig) -> AttackConfig:
    """The config's training attack with nulls filled by the method's official defaults."""
    return config.attack.resolve(method_class(config.method.name).attack_defaults)


def eval_budget(config: RunConfig, defaults: DatasetDefaults) -> tuple[float, float]:
    e = config.eval
    return (
        defaults.eps if e.eps is None else e.eps,
        defaults.step_size if e.step_size is None else e.step_size,
    )


def evaluate_configured(
    model: ImageClassifier,
    data: PreparedData,
    config: RunConfig,
    *,
    attacks: list[str] | None = None,
    split: str | None = None,
) -> dict[str, Any]:
    """Accuracy of `model` under the attacks, budget, split, sample cap and seed `config`
    sets: the one evaluation every command and pipeline stage runs (the attacks and the
    split may be narrowed). Under torchrun every rank calls it and takes its share."""
    eps, step = eval_budget(config, data.defaults)
    return evaluate_model(
        model,
        data.split(split or config.eval.split),
        list(attacks if attacks is not None else config.eval.attacks),
        eps=eps,
        step_size=step,
        restarts=config.eval.restarts,
        batch_size=config.data.eval_batch_size,
        seed=config.seed,
        max_samples=config.eval.max_samples,
        progress=config.progress and is_main(),
        across_ranks=is_distributed(),
    )


def check_model_fits(
    model: ImageClassifier, raw: RawDataset, what: str, classes: bool = True
) -> None:
    """`model` (a teacher, a model to start from, a model to evaluate or analyse) must take
    the dataset's channels and, unless `classes` is False, give its number of classes."""
    spec = model.spec
    if spec["in_channels"] != raw.image_shape[0] or (
        classes and spec["num_classes"] != raw.num_classes
    ):
        raise ConfigError(
            f"{what} has {spec['num_classes']} classes and {spec['in_channels']} channels; "
            f"dataset '{raw.name}' has {raw.num_classes} and {raw.image_shape[0]}"
            + ("" if classes else " (the classes may differ: a fresh classifier is trained)")
        )


def build_student(config: RunConfig, raw: RawDataset, device: torch.device) -> ImageClassifier:
    """The student: loaded from `init` (a linear probe with a fresh classifier may move to
    another label set), or built from `model.arch` for the dataset."""
    if config.init is not None:
        model = load_model(
            config.init, device, zoo_root=config.zoo_root, download=config.zoo_download
        )
        probe = isinstance(config.method, LinearOptions) and config.method.reset_classifier
        check_model_fits(model, raw, f"init: {config.init}", classes=not probe)
        model.train()
    else:
        model = _new_student(config, raw)
    model = model.to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if config.compile:
        # Compile the feature extractor only: attacks and losses stay eager and flexible.
        model.features = torch.compile(model.features)  # type: ignore[method-assign]
    return model


def _new_student(config: RunConfig, raw: RawDataset) -> ImageClassifier:
    arch = config.model.arch or dataset_info(raw.name).defaults.arch
    try:
        return build_model(
            arch,
            in_channels=raw.image_shape[0],
            num_classes=raw.num_classes,
            mean=raw.mean,
            std=raw.std,
            **config.model.kwargs,
        )
    except TypeError as err:
        raise ConfigError(
            f"model.kwargs {config.model.kwargs} do not fit '{arch}': {err}"
        ) from None


def load_teacher(
    path: str,
    raw: RawDataset,
    device: torch.device,
    zoo_root: str | None = None,
    download: bool = False,
) -> ImageClassifier:
    """An exported model or a RobustBench id (`robustbench:...`, read from `zoo_root`)."""
    teacher = load_model(path, device, zoo_root=zoo_root, download=download)
    check_model_fits(teacher, raw, f"teacher: {path}")
    return teacher


def build_trainer(config: RunConfig, data: PreparedData | None = None) -> Trainer:
    device = resolve_device(init_from_env(config.device))  # joins torchrun's group, if any
    generator = seed_everything(config.seed)  # the data order, shared by all ranks
    # The method's own stream (attack starts, negative sampling), apart from the data stream
    # so that data-parallel ranks share the data order but draw their own noise.
    method_generator = torch.Generator().manual_seed(config.seed * 1_000_003 + 1 + rank())
    data = data or prepare_data(config, device)
    student = build_student(config, data.raw, device)
    if config.sync_bn:
        student = sync_batchnorm(student, device)
    teacher = None
    if config.teacher:
        teacher = load_teacher(
            config.teacher, data.raw, device, config.zoo_root, config.zoo_download
        )
    attack = training_attack(config, data.defaults)
    ctx = MethodContext(
        student=student,
        teacher=teacher,
        attack=attack,
        attack_train_mode=bool(resolved_attack(config).train_mode),
        attack_bn_update=bool(resolved_attack(config).bn_update),
        num_classes=data.raw.num_classes,
        train_labels=data.train.labels,
        generator=method_generator,
        train_data=data.train,
    )
    method = build_method(config.method, ctx).to(device)
    seed_rank_globals(config.seed, rank())  # models are built: now each rank its own streams
    eps, step = eval_budget(config, data.defaults)
    val_attack = (
        parse_attack(f"pgd{config.eval.val_attack_steps}", eps, step)
        if config.eval.val_attack_steps > 0
        else None
    )
    out = Path(config.out)
    meta = {
        "dataset": data.raw.name,
        "classes": config.data.classes,
        "resize": config.data.resize,
        "method": config.method.name,
        "eps": eps,
        "teacher": config.teacher,
        "seed": config.seed,
    }
    return Trainer(
        method,
        data.train,
        data.val,
        optim=config.optim,
        batch_size=config.data.batch_size,
        augment=data.augment,
        out_dir=out,
        generator=generator,
        seed=config.seed,
        val_attack=val_attack,
        selection=method.selection,
        eval_batch_size=config.data.eval_batch_size,
        amp=config.amp,
        progress=config.progress,
        tensorboard=config.tensorboard,
        export_meta=meta,
    )


RUN_FILES = ("config.yaml", CHECKPOINT, MODEL_BEST, MODEL_LAST, METRICS)


def check_run_directory(
    config: RunConfig, resume: bool, extend: bool = True, ignore: tuple[str, ...] = ()
) -> str:
    """Decide what training into `config.out` means, before anything is written:
    "fresh" (nothing there, or `resume=False`: the old run is discarded), "resume" (the same
    config), or "extend" (only optim.epochs raised, with `extend`). Anything else is a
    RunDirectoryError naming the keys that differ: a run directory belongs to one config.
    `ignore` names keys a caller vouches for itself (a pipeline's wiring paths)."""
    out = Path(config.out)
    stored = out / "config.yaml"
    if not resume or not stored.is_file():
        return "fresh"
    try:
        old = training_settings(from_dict(RunConfig, load_yaml(stored)))
    except ConfigError as err:
        raise RunDirectoryError(
            f"{out} holds a run whose config.yaml this version cannot read ({err}); use "
            "another out=, or --no-resume to discard it and start afresh"
        ) from None
    new = training_settings(config)
    changed = [k for k in changed_keys(old, new) if k not in ignore]
    if not changed:
        return "resume"
    if extend and changed == ["optim.epochs"] and new["optim.epochs"] > old["optim.epochs"]:
        return "extend"
    shown = ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:4])
    more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
    raise RunDirectoryError(
        f"{out} holds another run ({shown}{more}); use another out=, or --no-resume to "
        "discard it and start afresh"
    )


def train(
    config: RunConfig,
    resume: bool = True,
    data: PreparedData | None = None,
    *,
    epoch_lines: bool | None = None,
    ignore: tuple[str, ...] = (),
) -> TrainResult:
    """Train as configured; writes config.yaml, checkpoint.pt, metrics.jsonl and models.

    A directory holding the same config resumes; raising only optim.epochs extends the run
    (the schedule then follows the new length); any other difference is refused before
    anything is written; `resume=False` discards what the directory holds. `data` reuses an
    already prepared dataset (pipelines that run many stages on one); `epoch_lines` prints
    one line per epoch (default: when the output is not a terminal); `ignore` as in
    `check_run_directory`."""
    mode = check_run_directory(config, resume, ignore=ignore)
    trainer = build_trainer(config, data)  # every check happens before anything is written
    trainer.epoch_lines = not interactive() if epoch_lines is None else epoch_lines
    out = Path(config.out)
    if is_main():
        if mode == "fresh":
            for name in RUN_FILES:
                (out / name).unlink(missing_ok=True)
            shutil.rmtree(out / "tensorboard", ignore_errors=True)
        elif (out / CHECKPOINT).is_file():
            done = load_checkpoint(out / CHECKPOINT).get("epoch", 0)
            what = "extending to" if mode == "extend" else "of"
            say(f"{out}: resuming from epoch {done} ({what} {config.optim.epochs})")
        out.mkdir(parents=True, exist_ok=True)
        # The training attack as run: nulls (the method's defaults) written out.
        stored = dataclasses.replace(config, attack=resolved_attack(config))
        (out / "config.yaml").write_text(yaml.safe_dump(to_dict(stored), sort_keys=False))
    return trainer.fit(resume=mode != "fresh")
