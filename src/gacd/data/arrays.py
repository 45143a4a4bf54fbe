"""Plain containers for datasets held as uint8 arrays, and the errors readers raise."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gacd.errors import DataError

__all__ = ["ArraySplit", "DataError", "RawDataset"]


@dataclass
class ArraySplit:
    """One split of a dataset: `images` uint8 [N, C, H, W], `labels` int64 [N]."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"images must be uint8 [N, C, H, W], got {self.images.dtype} {self.images.shape}"
            )
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"{self.images.shape[0]} images but labels of shape {self.labels.shape}"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: np.ndarray) -> ArraySplit:
        return ArraySplit(self.images[index], self.labels[index])


@dataclass
class RawDataset:
    """A dataset as read from disk: train and test splits of uint8 images.

    Pixels become floats in [0, 1] as `images / pixel_max` (255 for photographs, 16 for
    scikit-learn's digits, whose values run 0..16). `mean`/`std` are the per-channel
    statistics the models normalise with (computed on [0, 1] pixels).
    """

    name: str
    train: ArraySplit
    test: ArraySplit
    num_classes: int
    pixel_max: int = 255
    class_names: list[str] = field(default_factory=list)
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not self.class_names:
            self.class_names = [str(i) for i in range(self.num_classes)]
        if not self.mean or not self.std:
            pixels = self.train.images.astype(np.float64) / self.pixel_max
            self.mean = tuple(float(v) for v in pixels.mean(axis=(0, 2, 3)))
            self.std = tuple(float(max(v, 1e-3)) for v in pixels.std(axis=(0, 2, 3)))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.images.shape[1:]
        return int(c), int(h), int(w)
