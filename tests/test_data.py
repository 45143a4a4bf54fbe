"""Digits, splits, device batches and in-batch augmentation, checked against scikit-learn's
arrays and brute force (the archive readers are tested in test_readers.py)."""

from __future__ import annotations

import hashlib
import itertools

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from gacd.data import (
    ArraySplit,
    Augment,
    DeviceSplit,
    augment_batch,
    dataset_info,
    read_dataset,
    split_validation,
)
from gacd.training import prepare_data


@pytest.fixture(scope="module")
def sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    bunch = load_digits()
    return bunch.images, bunch.target


@pytest.fixture(scope="module")
def original_index(sklearn_digits):
    """Map (image bytes, label) -> index in load_digits() (the 1,797 images are distinct)."""
    images, labels = sklearn_digits
    assert np.array_equal(images, np.round(images)), "digits values are integers 0..16"
    table = {(images[i].astype(np.uint8).tobytes(), int(labels[i])): i for i in range(len(labels))}
    assert len(table) == len(labels)

    def lookup(split: ArraySplit) -> np.ndarray:
        return np.array(
            [
                table[(img[0].tobytes(), int(lab))]
                for img, lab in zip(split.images, split.labels, strict=True)
            ]
        )

    return lookup


def _arrays(split: DeviceSplit) -> ArraySplit:
    return ArraySplit(split.images.cpu().numpy(), split.labels.cpu().numpy())


# -- digits ------------------------------------------------------------------------------------
def test_digits_pixels_are_sklearn_values_over_16(digits_data, sklearn_digits, original_index):
    images, labels = sklearn_digits
    raw = digits_data.raw
    assert raw.image_shape == (1, 8, 8) and raw.num_classes == 10 and raw.pixel_max == 16
    for split in (digits_data.train, digits_data.val, digits_data.test):
        assert split.images.dtype == torch.uint8
    test_index = original_index(raw.test)
    # Through a device batch: the floats a model sees are exactly load_digits().images / 16.
    pick = torch.tensor([0, 5, 17, 100, 250, len(digits_data.test) - 1])
    batch = digits_data.test.batch_at(pick)
    expected = torch.from_numpy(images[test_index[pick.numpy()]] / 16.0).float()[:, None]
    assert batch.images.dtype == torch.float32
    assert torch.equal(batch.images, expected)
    assert torch.equal(batch.labels, torch.from_numpy(labels[test_index[pick.numpy()]]))
    # Every test image, in bulk.
    whole = digits_data.test.batch_at(torch.arange(len(digits_data.test))).images
    assert torch.equal(whole, torch.from_numpy(images[test_index] / 16.0).float()[:, None])


def test_digits_test_split_is_fixed_stratified_and_disjoint(
    digits_data, sklearn_digits, original_index
):
    _, labels = sklearn_digits
    raw = digits_data.raw
    train_index = original_index(raw.train)
    test_index = original_index(raw.test)
    assert set(train_index).isdisjoint(test_index)
    assert sorted([*train_index, *test_index]) == list(range(len(labels)))
    # 20% of each class, rounded.
    per_class = np.bincount(labels, minlength=10)
    assert np.bincount(raw.test.labels, minlength=10).tolist() == [
        round(n * 0.2) for n in per_class
    ]
    # The same on every read ...
    again = read_dataset("digits")
    assert np.array_equal(again.test.images, raw.test.images)
    assert np.array_equal(again.test.labels, raw.test.labels)
    # ... and on every machine: a fingerprint of the test split's sklearn indices.
    digest = hashlib.sha256(np.sort(test_index).astype(np.int64).tobytes()).hexdigest()
    assert len(test_index) == 359 and sorted(test_index)[:6] == [1, 8, 15, 18, 21, 27]
    assert digest == "56b1aae440dbe7b0e841c8be31cdaabb413cbc3782e49fc37bfee7c23e9c0f2e", (
        "the digits test split changed: results are no longer comparable across runs"
    )


def test_digits_validation_split_is_carved_from_train(digits_data, original_index):
    raw = digits_data.raw
    train = set(original_index(_arrays(digits_data.train)))
    val = set(original_index(_arrays(digits_data.val)))
    assert train.isdisjoint(val)
    assert train | val == set(original_index(raw.train))
    per_class = np.bincount(raw.train.labels, minlength=10)
    assert np.bincount(digits_data.val.labels.numpy(), minlength=10).tolist() == [
        round(n * 0.1) for n in per_class
    ]


# -- validation split --------------------------------------------------------------------------
def _id_split(n: int = 500) -> ArraySplit:
    """Images that spell their own index (two bytes), with unbalanced classes."""
    ids = np.arange(n)
    images = np.stack([ids // 256, ids % 256], axis=1).astype(np.uint8).reshape(n, 1, 1, 2)
    labels = np.where(ids % 10 < 6, ids % 3, 3 + ids % 2)  # classes 0-2 common, 3-4 rarer
    return ArraySplit(images, labels)


def _ids(split: ArraySplit) -> np.ndarray:
    return split.images[:, 0, 0, 0].astype(np.int64) * 256 + split.images[:, 0, 0, 1]


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
def test_validation_split_is_stratified_disjoint_and_deterministic(fraction):
    data = _id_split()
    np.random.seed(1)  # the global NumPy state must not matter
    train, val = split_validation(data, fraction)
    np.random.seed(2)
    train2, val2 = split_validation(data, fraction)
    assert np.array_equal(_ids(val), _ids(val2)) and np.array_equal(_ids(train), _ids(train2))

    train_ids, val_ids = _ids(train), _ids(val)
    assert set(train_ids).isdisjoint(val_ids)
    assert sorted([*train_ids, *val_ids]) == list(range(len(data)))
    # Labels travel with their images.
    assert np.array_equal(val.labels, data.labels[val_ids])
    assert np.array_equal(train.labels, data.labels[train_ids])
    for c in range(5):
        n_c = int((data.labels == c).sum())
        assert int((val.labels == c).sum()) == round(n_c * fraction), c


def test_validation_fraction_bounds():
    data = _id_split(50)
    train, val = split_validation(data, 0.0)
    assert len(val) == 0 and len(train) == 50
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="validation fraction"):
            split_validation(data, bad)


# -- device batches ----------------------------------------------------------------------------
def _device_split(n: int = 103) -> DeviceSplit:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 17, size=(n, 1, 4, 4), dtype=np.uint8)
    return DeviceSplit(ArraySplit(images, rng.integers(0, 10, size=n)), 16, "cpu")


@pytest.mark.parametrize("drop_last", [False, True])
def test_batches_carry_their_indices(drop_last):
    split = _device_split()
    batches = list(
        split.batches(
            10, shuffle=True, generator=torch.Generator().manual_seed(0), drop_last=drop_last
        )
    )
    assert len(batches) == split.num_batches(10, drop_last) == (10 if drop_last else 11)
    for batch in batches:
        assert torch.equal(batch.images, split.images[batch.indices].float() / 16.0)
        assert torch.equal(batch.labels, split.labels[batch.indices])
        assert batch.images.shape[1:] == (1, 4, 4)
    sizes = [len(b.indices) for b in batches]
    assert sizes == [10] * 10 + ([] if drop_last else [3])
    order = torch.cat([b.indices for b in batches])
    assert len(set(order.tolist())) == len(order)  # no index twice
    if not drop_last:
        assert sorted(order.tolist()) == list(range(len(split)))  # a permutation
    assert order.tolist() != sorted(order.tolist())  # shuffled


def test_shuffle_is_reproducible_from_the_seed():
    split = _device_split()

    def order(seed: int) -> list[int]:
        g = torch.Generator().manual_seed(seed)
        return torch.cat([b.indices for b in split.batches(16, shuffle=True, generator=g)]).tolist()

    assert order(3) == order(3)
    assert order(3) != order(4)
    # Consecutive epochs from one generator differ, and replay from the same seed.
    g = torch.Generator().manual_seed(3)
    epochs = [
        [b.indices.tolist() for b in split.batches(16, shuffle=True, generator=g)] for _ in "ab"
    ]
    assert epochs[0] != epochs[1]
    assert list(itertools.chain(*epochs[0])) == order(3)
    with pytest.raises(ValueError, match="generator"):
        next(split.batches(16, shuffle=True))


def test_unshuffled_batches_are_in_order_and_shards_partition_them():
    split = _device_split()  # 103 samples: 7 batches of 16 (the last one short)
    order = torch.cat([b.indices for b in split.batches(16)])
    assert order.tolist() == list(range(len(split)))
    all_batches = [b.indices.tolist() for b in split.batches(16, drop_last=True)]
    shards = [
        [b.indices.tolist() for b in split.batches(16, drop_last=True, shard=(rank, 4))]
        for rank in range(4)
    ]
    # Every rank gets every batch's slice of 16 / 4 samples, rank r the r-th slice: together,
    # step by step, they hold exactly the batch one process would train on.
    assert [len(s) for s in shards] == [len(all_batches)] * 4
    for step, batch in enumerate(all_batches):
        assert all(len(shard[step]) == 4 for shard in shards)
        assert [i for shard in shards for i in shard[step]] == batch
    with pytest.raises(ValueError, match="rank"):
        next(split.batches(16, shard=(4, 4)))


# -- augmentation ------------------------------------------------------------------------------
def _shifted(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """out[.., r, c] = image[.., r + dy, c + dx] where that exists, else 0."""
    out = torch.zeros_like(image)
    h, w = image.shape[-2:]
    rows = slice(max(0, -dy), min(h, h - dy))
    cols = slice(max(0, -dx), min(w, w - dx))
    src_rows = slice(max(0, dy), min(h, h + dy))
    src_cols = slice(max(0, dx), min(w, w + dx))
    out[..., rows, cols] = image[..., src_rows, src_cols]
    return out


def _matching_shifts(out: torch.Tensor, image: torch.Tensor, p: int, flips=(False,)) -> list:
    return [
        (dy, dx, flip)
        for dy, dx in itertools.product(range(-p, p + 1), repeat=2)
        for flip in flips
        if torch.equal(out, _shifted(image, dy, dx).flip(-1) if flip else _shifted(image, dy, dx))
    ]


def _images(n: int, seed: int = 0, shape=(2, 6, 7)) -> torch.Tensor:
    # No zeros and no mirror symmetry: every shift and flip gives a different image.
    return 0.05 + 0.95 * torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("p", [1, 2])
def test_crop_is_a_zero_filled_shift_within_the_padding(p):
    x = _images(120)
    out = augment_batch(x, Augment(crop_padding=p), torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    shifts = []
    for i in range(len(x)):
        found = _matching_shifts(out[i], x[i], p)
        assert len(found) == 1, (i, found)  # one shift, the same for every channel
        shifts.append(found[0][:2])
    # Every shift in [-p, p]^2 is drawn (120 samples, at most 25 shifts).
    assert set(shifts) == set(itertools.product(range(-p, p + 1), repeat=2))


def test_flip_mirrors_some_images_and_keeps_the_rest():
    x = _images(64, seed=1)
    out = augment_batch(x, Augment(flip=True), torch.Generator().manual_seed(0))
    flipped = [bool(torch.equal(o, xi.flip(-1))) for o, xi in zip(out, x, strict=True)]
    kept = [bool(torch.equal(o, xi)) for o, xi in zip(out, x, strict=True)]
    assert all(f != k for f, k in zip(flipped, kept, strict=True)), (
        "each image is either mirrored or kept"
    )
    assert 10 < sum(flipped) < 54


def test_crop_and_flip_together():
    x = _images(64, seed=2)
    out = augment_batch(x, Augment(crop_padding=1, flip=True), torch.Generator().manual_seed(5))
    found = [_matching_shifts(o, xi, 1, flips=(False, True)) for o, xi in zip(out, x, strict=True)]
    assert all(len(f) == 1 for f in found)
    assert {f[0][2] for f in found} == {False, True}


def test_augmentation_is_reproducible_and_off_by_default():
    x = _images(32)
    aug = Augment(crop_padding=2, flip=True)
    a = augment_batch(x, aug, torch.Generator().manual_seed(9))
    assert torch.equal(a, augment_batch(x, aug, torch.Generator().manual_seed(9)))
    assert not torch.equal(a, augment_batch(x, aug, torch.Generator().manual_seed(10)))
    assert not Augment().active
    assert torch.equal(augment_batch(x, Augment()), x)


def test_augmented_batches_are_shifted_copies_of_their_indexed_images():
    split = _device_split(40)
    g = torch.Generator().manual_seed(0)
    for batch in split.batches(16, shuffle=True, augment=Augment(crop_padding=1), generator=g):
        clean = split.images[batch.indices].float() / 16.0
        for out, image in zip(batch.images, clean, strict=True):
            assert _matching_shifts(out, image, 1), "not a shifted copy of its indexed image"
        assert torch.equal(batch.labels, split.labels[batch.indices])


def test_digits_defaults_reach_the_prepared_data(digits_data, digits_config):
    assert digits_data.augment == dataset_info("digits").defaults.augment
    config = digits_config("unused", ["data.crop_padding=2", "data.flip=true"])
    assert prepare_data(config, torch.device("cpu")).augment == Augment(2, True)
