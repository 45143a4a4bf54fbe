"""Device-resident datasets: uint8 images live on the training device, batches are sliced,
converted and augmented there, with no per-image Python in the loop."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from gacd.data.arrays import ArraySplit


class Batch(NamedTuple):
    """Images as floats in [0, 1] (NCHW), labels, and indices into the split they came from."""

    images: Tensor
    labels: Tensor
    indices: Tensor


@dataclass(frozen=True)
class Augment:
    """In-batch augmentation: random crop after zero padding, random horizontal flip."""

    crop_padding: int = 0
    flip: bool = False

    @property
    def active(self) -> bool:
        return self.crop_padding > 0 or self.flip


def augment_batch(
    images: Tensor, augment: Augment, generator: torch.Generator | None = None
) -> Tensor:
    """Augment a float batch on its own device; each sample draws its own shift and flip.

    The few random numbers are drawn on the generator's device (the images' device when
    there is none) and moved to the images: a CPU generator gives the same augmentation on
    every device, a generator on the training device saves the copy.
    """
    n, _, h, w = images.shape
    device = images.device
    draw_on = generator.device if generator is not None else device
    if augment.crop_padding > 0:
        p = augment.crop_padding
        padded = torch.nn.functional.pad(images, (p, p, p, p))
        shift = torch.randint(0, 2 * p + 1, (2, n), generator=generator, device=draw_on)
        shift = shift.to(device)
        rows = torch.arange(h, device=device)[None, :] + shift[0][:, None]  # [N, H]
        cols = torch.arange(w, device=device)[None, :] + shift[1][:, None]  # [N, W]
        batch_index = torch.arange(n, device=device)[:, None, None]
        # Advanced indexing puts the indexed dims first: result is [N, H, W, C].
        images = padded.permute(0, 2, 3, 1)[batch_index, rows[:, :, None], cols[:, None, :]]
        images = images.permute(0, 3, 1, 2).contiguous()
    if augment.flip:
        flip = (torch.rand(n, generator=generator, device=draw_on) < 0.5).to(device)
        images = torch.where(flip[:, None, None, None], images.flip(3), images)
    return images


class DeviceSplit:
    """One split of a dataset kept on `device` as uint8, iterated in batches."""

    def __init__(self, split: ArraySplit, pixel_max: int, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.images = torch.from_numpy(np.ascontiguousarray(split.images)).to(self.device)
        self.labels = torch.from_numpy(split.labels).to(self.device)
        self.pixel_max = float(pixel_max)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batch_at(self, indices: Tensor) -> Batch:
        indices = indices.to(self.device)
        images = self.images[indices].float().div_(self.pixel_max)
        return Batch(images, self.labels[indices], indices)

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        n = len(self)
        return n // batch_size if drop_last else -(-n // batch_size)

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        augment: Augment | None = None,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        shard: tuple[int, int] = (0, 1),
        augment_generator: torch.Generator | None = None,
    ) -> Iterator[Batch]:
        """Yield batches; `shard=(rank, world)` yields each batch's rank-th of `world`
        slices (equal when `world` divides the batch size): data-parallel ranks together
        train on exactly the batches one process would.

        `generator` (a CPU generator) drives shuffling, so a seed gives the same batches on
        every device and every rank; augmentation draws from `augment_generator` (default:
        `generator`), which data-parallel ranks hold each their own.
        """
        n = len(self)
        if shuffle:
            if generator is None:
                raise ValueError("shuffle=True needs a generator (for reproducible runs)")
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n)
        rank, world = shard
        if not 0 <= rank < world:
            raise ValueError(f"shard {shard}: need 0 <= rank < world")
        for b in range(self.num_batches(batch_size, drop_last)):
            indices = order[b * batch_size : (b + 1) * batch_size]
            if world > 1:
                indices = torch.tensor_split(indices, world)[rank]
            batch = self.batch_at(indices)
            if augment is not None and augment.active:
                images = augment_batch(batch.images, augment, augment_generator or generator)
                batch = batch._replace(images=images)
            yield batch
