"""Write tiny datasets in the real official file formats, for tests of the readers.

Every `write_*` function returns a `WrittenData` (a 4-tuple) holding exactly what it wrote,
in the layout the readers must return: images uint8 [N, C, H, W], labels int64 [N] from 0.
The writers are written from the format descriptions, independently of the readers, so a
reader bug (say a missing transpose) shows up as a mismatch.
"""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CIFAR10_LABEL_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
STL10_CLASS_NAMES = (
    "airplane",
    "bird",
    "car",
    "cat",
    "deer",
    "dog",
    "horse",
    "monkey",
    "ship",
    "truck",
)


class WrittenData(NamedTuple):
    """What a writer put on disk, as the reader should return it."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


# --------------------------------------------------------------------------- MNIST (IDX)


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write `array` (uint8, any rank) as an IDX file; gzipped when `path` ends in `.gz`."""
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.tobytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def write_idx_mnist(
    root: Path,
    variant: str = "mnist",
    n_train: int = 6,
    n_test: int = 4,
    seed: int = 0,
    gz: bool = False,
    subdir: str | None = None,
) -> WrittenData:
    """Write the four MNIST/Fashion-MNIST IDX files with random 28x28 images.

    They go to `root/<variant>` by default, or to `root/<subdir>` (`subdir=""`: `root`
    itself); `gz=True` writes the `.gz` versions.
    """
    folder = Path(root) / (variant if subdir is None else subdir)
    rng = np.random.default_rng(seed)
    arrays = []
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        image_name, label_name = MNIST_FILES[split]
        suffix = ".gz" if gz else ""
        write_idx(folder / f"{image_name}{suffix}", images)
        write_idx(folder / f"{label_name}{suffix}", labels)
        arrays += [images[:, None], labels.astype(np.int64)]
    return WrittenData(*arrays)


# --------------------------------------------------------------------------- CIFAR (pickles)


def write_cifar10(
    root: Path,
    n_per_batch: int = 5,
    n_test: int = 5,
    seed: int = 0,
    as_tarball: bool = False,
    python2_pickle: bool = True,
) -> WrittenData:
    """Write CIFAR-10's python version: `data_batch_1..5`, `test_batch`, `batches.meta`.

    Into `root/cifar-10-batches-py/`, or (`as_tarball`) as `root/cifar-10-python.tar.gz`
    holding that folder. `python2_pickle` writes the pickles as the official files are
    (Python 2 strings, numpy 1 globals); otherwise with Python 3's protocol 2.
    """
    rng = np.random.default_rng(seed)
    files: dict[str, bytes] = {}
    train_images, train_labels = [], []
    for i in range(1, 6):
        images, labels = _random_cifar(rng, n_per_batch, 10)
        files[f"data_batch_{i}"] = _cifar_batch(
            images, {b"labels": labels}, f"training batch {i} of 5", python2_pickle
        )
        train_images.append(images)
        train_labels.append(labels)
    test_images, test_labels = _random_cifar(rng, n_test, 10)
    files["test_batch"] = _cifar_batch(
        test_images, {b"labels": test_labels}, "testing batch 1 of 1", python2_pickle
    )
    meta = {
        b"num_cases_per_batch": n_per_batch,
        b"label_names": [n.encode() for n in CIFAR10_LABEL_NAMES],
        b"num_vis": 3072,
    }
    files["batches.meta"] = _dumps(meta, python2_pickle)
    _emit(Path(root), "cifar-10-batches-py", files, "cifar-10-python.tar.gz", as_tarball)
    return WrittenData(
        np.concatenate(train_images),
        np.concatenate(train_labels).astype(np.int64),
        test_images,
        np.asarray(test_labels, dtype=np.int64),
    )


def write_cifar100(
    root: Path,
    n_train: int = 10,
    n_test: int = 5,
    seed: int = 0,
    as_tarball: bool = False,
    python2_pickle: bool = True,
) -> WrittenData:
    """Write CIFAR-100's python version: `train`, `test`, `meta` (fine and coarse labels).

    Into `root/cifar-100-python/`, or (`as_tarball`) as `root/cifar-100-python.tar.gz`.
    Class names are placeholders `class_000`..`class_099`.
    """
    rng = np.random.default_rng(seed)
    files: dict[str, bytes] = {}
    written = []
    for split, n in (("train", n_train), ("test", n_test)):
        images, fine = _random_cifar(rng, n, 100)
        coarse = [label // 5 for label in fine]
        files[split] = _cifar_batch(
            images, {b"fine_labels": fine, b"coarse_labels": coarse}, split, python2_pickle
        )
        written += [images, np.asarray(fine, dtype=np.int64)]
    meta = {
        b"fine_label_names": [f"class_{i:03d}".encode() for i in range(100)],
        b"coarse_label_names": [f"superclass_{i:02d}".encode() for i in range(20)],
    }
    files["meta"] = _dumps(meta, python2_pickle)
    _emit(Path(root), "cifar-100-python", files, "cifar-100-python.tar.gz", as_tarball)
    return WrittenData(*written)


def _random_cifar(rng: np.random.Generator, n: int, classes: int) -> tuple[np.ndarray, list]:
    images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    return images, [int(v) for v in rng.integers(0, classes, size=n)]


def _cifar_batch(
    images: np.ndarray, labels: dict[bytes, list], batch_label: str, python2_pickle: bool
) -> bytes:
    # Row i: the 1024 red values, then green, then blue, each plane row by row (CHW order).
    data = images.reshape(len(images), 3 * 32 * 32)
    batch = {
        b"batch_label": batch_label.encode(),
        b"data": data,
        **labels,
        b"filenames": [f"img_{i:05d}.png".encode() for i in range(len(images))],
    }
    return _dumps(batch, python2_pickle)


def _dumps(obj: Any, python2_pickle: bool) -> bytes:
    if python2_pickle:
        return py2_pickle_dumps(obj)
    import pickle

    return pickle.dumps(obj, protocol=2)


def py2_pickle_dumps(obj: Any) -> bytes:
    """Pickle `obj` as Python 2's cPickle (protocol 2) with numpy 1.x wrote the CIFAR files.

    Supports dicts, lists, tuples, bytes (as Python 2 `str`), ints, bools, None and uint8
    numpy arrays (named through `numpy.core.multiarray._reconstruct`, as numpy 1 did).
    """
    out = io.BytesIO()
    out.write(b"\x80\x02")  # PROTO 2
    _py2_write(out, obj)
    out.write(b".")  # STOP
    return out.getvalue()


def _py2_write(out: io.BytesIO, obj: Any) -> None:
    if obj is None:
        out.write(b"N")
    elif isinstance(obj, bool):
        out.write(b"\x88" if obj else b"\x89")
    elif isinstance(obj, int):
        if 0 <= obj < 256:
            out.write(b"K" + bytes([obj]))  # BININT1
        else:
            out.write(b"J" + struct.pack("<i", obj))  # BININT
    elif isinstance(obj, bytes):
        if len(obj) < 256:
            out.write(b"U" + bytes([len(obj)]) + obj)  # SHORT_BINSTRING
        else:
            out.write(b"T" + struct.pack("<i", len(obj)) + obj)  # BINSTRING
    elif isinstance(obj, tuple):
        out.write(b"(")  # MARK
        for item in obj:
            _py2_write(out, item)
        out.write(b"t")  # TUPLE
    elif isinstance(obj, list):
        out.write(b"]")  # EMPTY_LIST
        if obj:
            out.write(b"(")
            for item in obj:
                _py2_write(out, item)
            out.write(b"e")  # APPENDS
    elif isinstance(obj, dict):
        out.write(b"}")  # EMPTY_DICT
        if obj:
            out.write(b"(")
            for key, value in obj.items():
                _py2_write(out, key)
                _py2_write(out, value)
            out.write(b"u")  # SETITEMS
    elif isinstance(obj, np.ndarray):
        if obj.dtype != np.uint8:
            raise TypeError("only uint8 arrays are supported")
        # numpy 1.x pickles an array as _reconstruct(ndarray, (0,), 'b') followed by
        # __setstate__((1, shape, dtype, is_fortran, raw bytes)), and the dtype as
        # dtype('u1', 0, 1) followed by __setstate__((3, '|', None, None, None, -1, -1, 0)).
        out.write(b"cnumpy.core.multiarray\n_reconstruct\n")
        out.write(b"(cnumpy\nndarray\n")
        _py2_write(out, (0,))
        _py2_write(out, b"b")
        out.write(b"tR")  # TUPLE of the arguments, REDUCE
        out.write(b"(")  # MARK: the array's state tuple
        _py2_write(out, 1)
        _py2_write(out, tuple(obj.shape))
        out.write(b"cnumpy\ndtype\n")
        _py2_write(out, (b"u1", 0, 1))
        out.write(b"R")
        _py2_write(out, (3, b"|", None, None, None, -1, -1, 0))
        out.write(b"b")  # BUILD: the dtype's state
        _py2_write(out, False)
        _py2_write(out, np.ascontiguousarray(obj).tobytes())
        out.write(b"tb")  # TUPLE, BUILD: the array's state
    else:
        raise TypeError(f"cannot pickle {type(obj).__name__} the Python 2 way")


# --------------------------------------------------------------------------- STL-10 (binary)


def write_stl10(
    root: Path,
    n_train: int = 4,
    n_test: int = 3,
    seed: int = 0,
    as_tarball: bool = False,
    with_unlabeled: bool = False,
) -> WrittenData:
    """Write STL-10's binary version: `train_X.bin`, `train_y.bin`, `test_X.bin`,
    `test_y.bin`, `class_names.txt` (and a small `unlabeled_X.bin` if `with_unlabeled`).

    Into `root/stl10_binary/`, or (`as_tarball`) as `root/stl10_binary.tar.gz`. Images are
    drawn as height x width x channel pictures and stored as the official files store them:
    channel by channel, each channel column by column; labels are stored as 1..10.
    """
    rng = np.random.default_rng(seed)
    files: dict[str, bytes] = {}
    written = []
    for split, n in (("train", n_train), ("test", n_test)):
        hwc = rng.integers(0, 256, size=(n, 96, 96, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n)
        files[f"{split}_X.bin"] = _stl_bytes(hwc)
        files[f"{split}_y.bin"] = (labels + 1).astype(np.uint8).tobytes()
        written += [hwc.transpose(0, 3, 1, 2).copy(), labels.astype(np.int64)]
    if with_unlabeled:
        files["unlabeled_X.bin"] = _stl_bytes(
            rng.integers(0, 256, size=(2, 96, 96, 3), dtype=np.uint8)
        )
    files["class_names.txt"] = ("\n".join(STL10_CLASS_NAMES) + "\n").encode()
    _emit(Path(root), "stl10_binary", files, "stl10_binary.tar.gz", as_tarball)
    return WrittenData(*written)


def _stl_bytes(hwc: np.ndarray) -> bytes:
    out = bytearray()
    for image in hwc:
        for c in range(3):
            for col in range(image.shape[1]):
                out += image[:, col, c].tobytes()  # one column, top to bottom
    return bytes(out)


# --------------------------------------------------------------------------- shared


def write_tarball(path: Path, folder: str, files: dict[str, bytes]) -> Path:
    """Write a gzipped tar holding `folder/<name>` for each of `files`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        dir_info = tarfile.TarInfo(folder)
        dir_info.type = tarfile.DIRTYPE
        dir_info.mode = 0o755
        tar.addfile(dir_info)
        for name, data in files.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return path


def _emit(root: Path, folder: str, files: dict[str, bytes], archive: str, tarball: bool) -> None:
    if tarball:
        write_tarball(root / archive, folder, files)
        return
    (root / folder).mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (root / folder / name).write_bytes(data)
