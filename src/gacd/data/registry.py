"""Which datasets exist, how to read each, and its defaults (attack budget, augmentation)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gacd.data.base import ArraySplit, RawDataset
from gacd.data.loader import Augment
from gacd.errors import ConfigError

# A fixed seed: the validation split is the same for every run seed, so runs compare.
_VAL_SPLIT_SEED = 7919


@dataclass(frozen=True)
class DatasetDefaults:
    """Per-dataset defaults; a config's explicit value always wins."""

    eps: float
    step_size: float
    augment: Augment
    arch: str


def _read_digits(root: Path | None, download: bool) -> RawDataset:
    from gacd.data.digits import read_digits

    return read_digits()


def _read_mnist(root: Path | None, download: bool) -> RawDataset:
    from gacd.data.mnist import read_mnist

    return read_mnist(_need_root("mnist", root), variant="mnist", download=download)


def _read_fashion(root: Path | None, download: bool) -> RawDataset:
    from gacd.data.mnist import read_mnist

    return read_mnist(_need_root("fashion_mnist", root), variant="fashion_mnist", download=download)


def _read_cifar10(root: Path | None, download: bool) -> RawDataset:
    from gacd.data.cifar import read_cifar10

    return read_cifar10(_need_root("cifar10", root), download=download)


def _read_cifar100(root: Path | None, download: bool) -> RawDataset:
    from gacd.data.cifar import read_cifar100

    return read_cifar100(_need_root("cifar100", root), download=download)


def _read_stl10(root: Path | None, download: bool) -> RawDataset:
    from gacd.data.stl10 import read_stl10

    return read_stl10(_need_root("stl10", root), download=download)


def _need_root(name: str, root: Path | None) -> Path:
    if root is None:
        raise ConfigError(
            f"data.root: dataset '{name}' needs data.root: a directory holding its files "
            "(add data.download=true to fetch them there)"
        )
    return Path(root)


_CIFAR_AUG = Augment(crop_padding=4, flip=True)
READERS: dict[str, Callable[[Path | None, bool], RawDataset]] = {
    "digits": _read_digits,
    "mnist": _read_mnist,
    "fashion_mnist": _read_fashion,
    "cifar10": _read_cifar10,
    "cifar100": _read_cifar100,
    "stl10": _read_stl10,
}
DEFAULTS: dict[str, DatasetDefaults] = {
    # digits: eps 0.1 leaves an undefended CNN >50% accurate under PGD; 0.2 takes it to ~0.
    # No augmentation on digits: a 1-pixel shift of an 8x8 digit is a large distortion, and
    # it cost PGD-AT teachers ~25 points of PGD accuracy in our runs.
    "digits": DatasetDefaults(0.2, 0.05, Augment(), "digits_cnn"),
    "mnist": DatasetDefaults(0.3, 0.03, Augment(crop_padding=2), "mnist_cnn"),
    "fashion_mnist": DatasetDefaults(0.1, 0.01, Augment(crop_padding=2), "mnist_cnn"),
    "cifar10": DatasetDefaults(8 / 255, 2 / 255, _CIFAR_AUG, "resnet18"),
    "cifar100": DatasetDefaults(8 / 255, 2 / 255, _CIFAR_AUG, "resnet18"),
    "stl10": DatasetDefaults(8 / 255, 2 / 255, Augment(crop_padding=12, flip=True), "resnet18"),
}
DATASET_NAMES = tuple(READERS)


def read_dataset(name: str, root: str | Path | None = None, download: bool = False) -> RawDataset:
    if name not in READERS:
        raise ConfigError(f"data.name: unknown dataset '{name}'; known: {', '.join(DATASET_NAMES)}")
    return READERS[name](Path(root) if root is not None else None, download)


def split_validation(train: ArraySplit, fraction: float) -> tuple[ArraySplit, ArraySplit]:
    """Carve a class-stratified validation split off the training set, the same every time."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(
            f"data.val_fraction: validation fraction must be in [0, 1), got {fraction}"
        )
    rng = np.random.default_rng(_VAL_SPLIT_SEED)
    val_mask = np.zeros(len(train), dtype=bool)
    for c in np.unique(train.labels):
        members = np.flatnonzero(train.labels == c)
        n_val = round(len(members) * fraction)
        val_mask[rng.choice(members, size=n_val, replace=False)] = True
    return train.subset(np.flatnonzero(~val_mask)), train.subset(np.flatnonzero(val_mask))


def restrict_classes(raw: RawDataset, classes: list[int]) -> RawDataset:
    """Keep only `classes` (in that order), relabelled 0..n-1: e.g. digits 0-4 for the
    source task and 5-9 for a transfer task with disjoint labels."""
    bad = [c for c in classes if not 0 <= c < raw.num_classes]
    if bad or len(set(classes)) != len(classes) or len(classes) < 2:
        raise ConfigError(
            f"data.classes {classes}: need at least two distinct labels in 0..{raw.num_classes - 1}"
        )
    lookup = np.full(raw.num_classes, -1, dtype=np.int64)
    lookup[classes] = np.arange(len(classes))

    def keep(split: ArraySplit) -> ArraySplit:
        index = np.flatnonzero(lookup[split.labels] >= 0)
        return ArraySplit(split.images[index], lookup[split.labels[index]])

    return RawDataset(
        name=raw.name,
        train=keep(raw.train),
        test=keep(raw.test),
        num_classes=len(classes),
        pixel_max=raw.pixel_max,
        class_names=[raw.class_names[c] for c in classes],
        mean=raw.mean,
        std=raw.std,
    )


def resize_dataset(raw: RawDataset, size: int) -> RawDataset:
    """Resize every image to size x size (bilinear, antialiased), once, staying uint8: e.g.
    STL-10's 96x96 down to a CIFAR student's 32x32 for transfer."""
    import torch
    import torch.nn.functional as F

    if size < 1:
        raise ConfigError(f"data.resize: must be a positive size, got {size}")

    def resize(split: ArraySplit) -> ArraySplit:
        chunks = []
        for start in range(0, len(split), 1024):
            x = torch.from_numpy(split.images[start : start + 1024]).float()
            y = F.interpolate(
                x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
            chunks.append(y.round().clamp(0, raw.pixel_max).to(torch.uint8).numpy())
        images = np.concatenate(chunks) if chunks else split.images[:, :, :size, :size]
        return ArraySplit(images, split.labels)

    return RawDataset(
        name=raw.name,
        train=resize(raw.train),
        test=resize(raw.test),
        num_classes=raw.num_classes,
        pixel_max=raw.pixel_max,
        class_names=raw.class_names,
        mean=raw.mean,
        std=raw.std,
    )
