"""scikit-learn's digits: 1,797 real 8x8 grey images shipped inside scikit-learn (the default)."""

from __future__ import annotations

import numpy as np

from gacd.data.arrays import ArraySplit, RawDataset

# The digits have no official test split; this fixed fraction, drawn with a fixed seed and
# stratified by class, is ours and never changes between runs or machines.
TEST_FRACTION = 0.2
_SPLIT_SEED = 20201


def read_digits() -> RawDataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.uint8)[:, None]  # values 0..16, pixel = value / 16
    labels = bunch.target.astype(np.int64)
    rng = np.random.default_rng(_SPLIT_SEED)
    test_mask = np.zeros(len(labels), dtype=bool)
    for c in range(10):
        members = np.flatnonzero(labels == c)
        n_test = round(len(members) * TEST_FRACTION)
        test_mask[rng.choice(members, size=n_test, replace=False)] = True
    return RawDataset(
        name="digits",
        train=ArraySplit(images[~test_mask], labels[~test_mask]),
        test=ArraySplit(images[test_mask], labels[test_mask]),
        num_classes=10,
        pixel_max=16,
    )
