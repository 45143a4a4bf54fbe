"""Turn a RunConfig into data, models, a method and a trainer; the CLI's stages call these."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from gacd.attacks import AttackSpec
from gacd.config import ConfigError, RunConfig, to_dict
from gacd.data import (
    DEFAULTS,
    Augment,
    DatasetDefaults,
    DeviceSplit,
    RawDataset,
    read_dataset,
    resize_dataset,
    restrict_classes,
    split_validation,
)
from gacd.engine.checkpoint import seed_everything
from gacd.engine.distributed import init_from_env, is_main, rank, sync_batchnorm
from gacd.engine.export import load_model
from gacd.engine.streams import seed_rank_globals
from gacd.engine.trainer import Trainer, TrainResult
from gacd.evaluation.robust import parse_attack
from gacd.methods import MethodContext, build_method
from gacd.models import ImageClassifier, build_model


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
    defaults = DEFAULTS[data.name]
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
    a = config.attack
    return AttackSpec(
        eps=defaults.eps if a.eps is None else a.eps,
        step_size=defaults.step_size if a.step_size is None else a.step_size,
        steps=a.steps,
        random_start=a.random_start,
    )


def eval_budget(config: RunConfig, defaults: DatasetDefaults) -> tuple[float, float]:
    e = config.eval
    return (
        defaults.eps if e.eps is None else e.eps,
        defaults.step_size if e.step_size is None else e.step_size,
    )


def build_student(config: RunConfig, raw: RawDataset, device: torch.device) -> ImageClassifier:
    arch = config.model.arch or DEFAULTS[raw.name].arch
    c = raw.image_shape[0]
    if config.init is not None:
        model = load_model(config.init, device)
        if model.spec["in_channels"] != c:
            raise ConfigError(
                f"init: {config.init} takes {model.spec['in_channels']} channels; "
                f"dataset '{raw.name}' has {c}"
            )
        # A linear probe with a fresh classifier may move to another label set (transfer).
        probe = config.method.get("name") == "linear" and config.method.get(
            "reset_classifier", True
        )
        if model.spec["num_classes"] != raw.num_classes and not probe:
            raise ConfigError(
                f"init: {config.init} has {model.spec['num_classes']} classes; dataset "
                f"'{raw.name}' has {raw.num_classes} (only method linear can change that)"
            )
        return model.train()
    try:
        model = build_model(
            arch,
            in_channels=c,
            num_classes=raw.num_classes,
            mean=raw.mean,
            std=raw.std,
            **config.model.kwargs,
        )
    except TypeError as err:
        raise ConfigError(
            f"model.kwargs {config.model.kwargs} do not fit '{arch}': {err}"
        ) from None
    model = model.to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if config.compile:
        # Compile the feature extractor only: attacks and losses stay eager and flexible.
        model.features = torch.compile(model.features)  # type: ignore[method-assign]
    return model


def load_teacher(path: str, raw: RawDataset, device: torch.device) -> ImageClassifier:
    teacher = load_model(path, device)
    if (
        teacher.spec["num_classes"] != raw.num_classes
        or teacher.spec["in_channels"] != raw.image_shape[0]
    ):
        raise ConfigError(
            f"teacher: {path} has {teacher.spec['num_classes']} classes and "
            f"{teacher.spec['in_channels']} channels; dataset '{raw.name}' needs "
            f"{raw.num_classes} and {raw.image_shape[0]}"
        )
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
    teacher = load_teacher(config.teacher, data.raw, device) if config.teacher else None
    attack = training_attack(config, data.defaults)
    ctx = MethodContext(
        student=student,
        teacher=teacher,
        attack=attack,
        attack_train_mode=config.attack.train_mode,
        num_classes=data.raw.num_classes,
        train_labels=data.train.labels,
        generator=method_generator,
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
        "method": config.method["name"],
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


def train(config: RunConfig, resume: bool = True, data: PreparedData | None = None) -> TrainResult:
    """Train as configured; writes config.yaml, checkpoint.pt, metrics.jsonl and models.
    `data` reuses an already prepared dataset (pipelines that run many stages on one)."""
    trainer = build_trainer(config, data)  # every check happens before anything is written
    out = Path(config.out)
    if is_main():
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    return trainer.fit(resume=resume)
