"""Readers of the official dataset formats, on tiny files written in those formats."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from format_writers import (
    STL10_CLASS_NAMES,
    WrittenData,
    write_cifar10,
    write_cifar100,
    write_idx,
    write_idx_mnist,
    write_stl10,
    write_tarball,
)
from gacd.data import cifar, stl10
from gacd.data.arrays import DataError, RawDataset
from gacd.data.cifar import read_cifar10, read_cifar100
from gacd.data.download import download_and_verify, extract_tarball
from gacd.data.mnist import read_idx, read_mnist
from gacd.data.stl10 import read_stl10


def assert_round_trip(ds: RawDataset, written: WrittenData) -> None:
    np.testing.assert_array_equal(ds.train.images, written.train_images)
    np.testing.assert_array_equal(ds.train.labels, written.train_labels)
    np.testing.assert_array_equal(ds.test.images, written.test_images)
    np.testing.assert_array_equal(ds.test.labels, written.test_labels)
    assert ds.train.images.dtype == np.uint8 and ds.train.labels.dtype == np.int64


def md5_hex(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


# --------------------------------------------------------------------------- MNIST


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_round_trip_raw_and_gz(tmp_path: Path, gz: bool) -> None:
    written = write_idx_mnist(tmp_path, "mnist", n_train=7, n_test=3, seed=1, gz=gz)
    ds = read_mnist(tmp_path, variant="mnist")
    assert_round_trip(ds, written)
    assert ds.name == "mnist" and ds.num_classes == 10 and ds.pixel_max == 255
    assert ds.train.images.shape == (7, 1, 28, 28)
    assert ds.mean == (0.1307,) and ds.std == (0.3081,)


@pytest.mark.parametrize("subdir", ["", "MNIST/raw"])
def test_mnist_lenient_layouts(tmp_path: Path, subdir: str) -> None:
    written = write_idx_mnist(tmp_path, "mnist", seed=2, gz=True, subdir=subdir)
    assert_round_trip(read_mnist(tmp_path, variant="mnist"), written)


def test_fashion_mnist_names_and_constants(tmp_path: Path) -> None:
    written = write_idx_mnist(tmp_path, "fashion_mnist", seed=3, subdir="FashionMNIST/raw")
    ds = read_mnist(tmp_path, variant="fashion_mnist")
    assert_round_trip(ds, written)
    assert ds.name == "fashion_mnist"
    assert ds.class_names[0] == "T-shirt/top" and ds.class_names[-1] == "Ankle boot"
    assert ds.mean == (0.2860,) and ds.std == (0.3530,)


def test_mnist_missing_names_paths_and_how_to_get_it(tmp_path: Path) -> None:
    root = tmp_path / "nowhere"
    with pytest.raises(DataError) as info:
        read_mnist(root, variant="mnist")
    message = str(info.value)
    assert str(root / "mnist") in message and "train-images-idx3-ubyte" in message
    assert "https://" in message and "data.download=true" in message


def test_mnist_truncated_file(tmp_path: Path) -> None:
    write_idx_mnist(tmp_path, "mnist", subdir="")
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="truncated") as info:
        read_mnist(tmp_path)
    assert str(path) in str(info.value)


def test_mnist_corrupt_gzip(tmp_path: Path) -> None:
    write_idx_mnist(tmp_path, "mnist", subdir="", gz=True)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-6])
    with pytest.raises(DataError, match=str(path)):
        read_mnist(tmp_path)


def test_mnist_bad_magic_and_count_mismatch(tmp_path: Path) -> None:
    write_idx_mnist(tmp_path, "mnist", n_train=5, subdir="")
    labels = tmp_path / "train-labels-idx1-ubyte"
    # Images where labels belong: right file name, wrong magic number.
    write_idx(labels, np.zeros((5, 28, 28), np.uint8))
    with pytest.raises(DataError, match="magic number 0x00000803, expected 0x00000801"):
        read_mnist(tmp_path)
    write_idx(labels, np.zeros(4, np.uint8))
    with pytest.raises(DataError, match="5 images but"):
        read_mnist(tmp_path)


def test_read_idx_header(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "x.gz", np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    assert read_idx(path).shape == (2, 3, 4)
    with pytest.raises(DataError, match="magic"):
        read_idx(path, magic=0x00000801)
    (tmp_path / "short").write_bytes(b"\x00\x00")
    with pytest.raises(DataError, match="short"):
        read_idx(tmp_path / "short")


def test_mnist_refuses_the_other_variant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gacd.data import mnist

    write_idx_mnist(tmp_path, "fashion_mnist", gz=True, subdir="")
    labels_gz = tmp_path / "train-labels-idx1-ubyte.gz"
    # Pretend these tiny labels are the official MNIST ones.
    spec = mnist.VARIANTS["mnist"]
    md5 = {**spec.md5, labels_gz.name: md5_hex(labels_gz)}
    monkeypatch.setitem(mnist.VARIANTS, "mnist", dataclasses.replace(spec, md5=md5))
    with pytest.raises(DataError, match="holds the MNIST files, not Fashion-MNIST"):
        read_mnist(tmp_path, variant="fashion_mnist")


def test_mnist_download_fetches_missing_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gacd.data import mnist

    mirror = tmp_path / "mirror"
    written = write_idx_mnist(mirror, "mnist", gz=True, subdir="")
    md5 = {p.name: md5_hex(p) for p in mirror.iterdir()}
    spec = dataclasses.replace(
        mnist.VARIANTS["mnist"],
        mirrors=((tmp_path / "broken").as_uri() + "/", mirror.as_uri() + "/"),
        md5=md5,
    )
    monkeypatch.setitem(mnist.VARIANTS, "mnist", spec)
    root = tmp_path / "data"
    assert_round_trip(read_mnist(root, variant="mnist", download=True), written)
    assert sorted(p.name for p in (root / "mnist").iterdir()) == sorted(md5)


# --------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("python2_pickle", [True, False])
def test_cifar10_round_trip(tmp_path: Path, python2_pickle: bool) -> None:
    written = write_cifar10(tmp_path, n_per_batch=5, n_test=5, python2_pickle=python2_pickle)
    ds = read_cifar10(tmp_path)
    assert_round_trip(ds, written)
    assert ds.train.images.shape == (25, 3, 32, 32)
    assert ds.name == "cifar10" and ds.num_classes == 10
    assert ds.class_names[:2] == ["airplane", "automobile"]
    assert ds.mean == (0.4914, 0.4822, 0.4465) and ds.std == (0.2470, 0.2435, 0.2616)


def test_cifar10_from_tarball(tmp_path: Path) -> None:
    written = write_cifar10(tmp_path, n_per_batch=2, n_test=3, seed=5, as_tarball=True)
    assert not (tmp_path / "cifar-10-batches-py").exists()
    assert_round_trip(read_cifar10(tmp_path), written)
    assert (tmp_path / "cifar-10-batches-py" / "data_batch_5").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left
    assert_round_trip(read_cifar10(tmp_path), written)  # now from the extracted folder


@pytest.mark.parametrize("as_tarball", [False, True])
def test_cifar100_round_trip(tmp_path: Path, as_tarball: bool) -> None:
    written = write_cifar100(tmp_path, n_train=6, n_test=4, seed=6, as_tarball=as_tarball)
    ds = read_cifar100(tmp_path)
    assert_round_trip(ds, written)
    assert ds.name == "cifar100" and ds.num_classes == 100 and len(ds.class_names) == 100
    assert ds.mean == (0.5071, 0.4865, 0.4409)


def test_cifar_missing_names_paths_and_url(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        read_cifar10(tmp_path)
    message = str(info.value)
    assert str(tmp_path / "cifar-10-batches-py") in message
    assert str(tmp_path / "cifar-10-python.tar.gz") in message
    assert cifar.CIFAR10.url in message and "data.download=true" in message


def test_cifar_partial_folder_lists_missing_files(tmp_path: Path) -> None:
    write_cifar100(tmp_path)
    (tmp_path / "cifar-100-python" / "test").unlink()
    with pytest.raises(DataError, match="lacks test"):
        read_cifar100(tmp_path)


def test_cifar_truncated_pickle(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="data_batch_3"):
        read_cifar10(tmp_path)


def test_cifar_pickle_with_foreign_global_is_refused(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple:
            return (Path.touch, (marker,))

    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(
        pickle.dumps({b"data": Evil(), b"labels": []})
    )
    with pytest.raises(DataError, match="refusing to load global"):
        read_cifar10(tmp_path)
    assert not marker.exists()


def test_cifar_corrupt_tarball(tmp_path: Path) -> None:
    write_cifar10(tmp_path, as_tarball=True)
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataError, match=r"cifar-10-python\.tar\.gz"):
        read_cifar10(tmp_path)
    # Nothing half-extracted that a later run could mistake for the dataset.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-10-python.tar.gz"]


def test_cifar_local_tarball_with_wrong_md5_when_downloading(tmp_path: Path) -> None:
    # download=True promises the official data: a local archive that is not it is an error.
    write_cifar10(tmp_path, as_tarball=True)
    with pytest.raises(DataError, match="md5"):
        read_cifar10(tmp_path, download=True)


def test_cifar_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = tmp_path / "mirror"
    written = write_cifar10(mirror, n_per_batch=1, as_tarball=True)
    archive = mirror / "cifar-10-python.tar.gz"
    spec = dataclasses.replace(cifar.CIFAR10, url=archive.as_uri(), md5=md5_hex(archive))
    monkeypatch.setattr(cifar, "CIFAR10", spec)
    root = tmp_path / "data"
    assert_round_trip(read_cifar10(root, download=True), written)
    assert (root / "cifar-10-python.tar.gz").is_file()


# --------------------------------------------------------------------------- STL-10


@pytest.mark.parametrize("as_tarball", [False, True])
def test_stl10_round_trip(tmp_path: Path, as_tarball: bool) -> None:
    written = write_stl10(tmp_path, n_train=3, n_test=2, seed=7, as_tarball=as_tarball)
    ds = read_stl10(tmp_path)
    assert_round_trip(ds, written)
    assert ds.train.images.shape == (3, 3, 96, 96)
    assert ds.name == "stl10" and ds.class_names == list(STL10_CLASS_NAMES)
    expected_mean = written.train_images.mean(axis=(0, 2, 3)) / 255
    np.testing.assert_allclose(ds.mean, expected_mean, rtol=1e-9)
    expected_std = (written.train_images / 255).std(axis=(0, 2, 3))
    np.testing.assert_allclose(ds.std, expected_std, rtol=1e-6)


def test_stl10_column_major_layout(tmp_path: Path) -> None:
    # A single picture with a bright top row: rows and columns must not come back swapped.
    write_stl10(tmp_path, n_train=1, n_test=1)
    folder = tmp_path / "stl10_binary"
    hwc = np.zeros((96, 96, 3), np.uint8)
    hwc[0, :, :] = 255
    (folder / "train_X.bin").write_bytes(hwc.transpose(2, 1, 0).tobytes())
    image = read_stl10(tmp_path).train.images[0]
    assert (image[:, 0, :] == 255).all() and (image[:, 1:, :] == 0).all()


def test_stl10_tarball_skips_unlabeled(tmp_path: Path) -> None:
    written = write_stl10(tmp_path, as_tarball=True, with_unlabeled=True)
    assert_round_trip(read_stl10(tmp_path), written)
    assert not (tmp_path / "stl10_binary" / "unlabeled_X.bin").exists()


def test_stl10_truncated_and_bad_labels(tmp_path: Path) -> None:
    write_stl10(tmp_path)
    x_path = tmp_path / "stl10_binary" / "test_X.bin"
    good = x_path.read_bytes()
    x_path.write_bytes(good[:-1])
    with pytest.raises(DataError, match="truncated") as info:
        read_stl10(tmp_path)
    assert str(x_path) in str(info.value)
    x_path.write_bytes(good)
    y_path = tmp_path / "stl10_binary" / "train_y.bin"
    y_path.write_bytes(b"\x00" + y_path.read_bytes()[1:])  # labels are 1..10 on disk
    with pytest.raises(DataError, match=r"expected 1\.\.10"):
        read_stl10(tmp_path)


def test_stl10_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        read_stl10(tmp_path / "void")
    message = str(info.value)
    assert str(tmp_path / "void" / "stl10_binary") in message and stl10.URL in message


# --------------------------------------------------------------------------- download / extract


def test_download_and_verify_good_md5(tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(b"official bytes" * 1000)
    dest = tmp_path / "out" / "file.bin"
    assert download_and_verify(source.as_uri(), dest, md5_hex(source)) == dest
    assert dest.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["file.bin"]


def test_download_and_verify_bad_md5_leaves_nothing(tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(b"tampered")
    dest = tmp_path / "out" / "file.bin"
    wrong = "0" * 32
    with pytest.raises(DataError) as info:
        download_and_verify(source.as_uri(), dest, wrong)
    message = str(info.value)
    assert str(dest) in message and wrong in message and md5_hex(source) in message
    assert not list(dest.parent.iterdir())


def test_download_unreachable_url(tmp_path: Path) -> None:
    dest = tmp_path / "file.bin"
    with pytest.raises(DataError, match="could not download"):
        download_and_verify((tmp_path / "absent").as_uri(), dest, "0" * 32)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["../escape.txt", "/abs/escape.txt", "a/../../escape.txt"])
def test_extract_refuses_members_outside_destination(tmp_path: Path, name: str) -> None:
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo(name)
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match="unsafe member"):
        extract_tarball(archive, dest)
    assert not (tmp_path / "escape.txt").exists()
    assert not list(dest.iterdir())


def test_extract_refuses_links(tmp_path: Path) -> None:
    archive = tmp_path / "link.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("d/link")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(DataError, match="unsafe member"):
        extract_tarball(archive, tmp_path / "dest")


def test_extract_merges_into_partial_folder(tmp_path: Path) -> None:
    archive = write_tarball(tmp_path / "a.tar.gz", "folder", {"x": b"1", "y": b"2"})
    (tmp_path / "dest" / "folder").mkdir(parents=True)
    (tmp_path / "dest" / "folder" / "x").write_bytes(b"stale")
    extract_tarball(archive, tmp_path / "dest")
    assert (tmp_path / "dest" / "folder" / "x").read_bytes() == b"1"
    assert (tmp_path / "dest" / "folder" / "y").read_bytes() == b"2"


def test_writers_produce_gzip_idx(tmp_path: Path) -> None:
    # Guard the test helper itself: .gz output really is gzip holding an IDX header.
    path = write_idx(tmp_path / "l.gz", np.arange(3, dtype=np.uint8))
    assert gzip.decompress(path.read_bytes())[:8] == b"\x00\x00\x08\x01\x00\x00\x00\x03"
