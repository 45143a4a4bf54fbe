"""CIFAR-10 and CIFAR-100 from the official "python version" archives."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from gacd.data.arrays import ArraySplit, DataError, RawDataset
from gacd.data.download import download_and_verify, extract_tarball, fetch_hint, verify_md5

IMAGE_BYTES = 3 * 32 * 32


@dataclass(frozen=True)
class CifarSpec:
    """Where one CIFAR archive is published, what it holds, and its normalisation constants."""

    name: str
    title: str
    folder: str  # the folder the archive unpacks to
    archive: str
    url: str
    md5: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: bytes
    names_key: bytes
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train_files, self.test_file, self.meta_file)


# Module-level so tests can point the download at a local file.
CIFAR10 = CifarSpec(
    name="cifar10",
    title="CIFAR-10",
    folder="cifar-10-batches-py",
    archive="cifar-10-python.tar.gz",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    md5="c58f30108f718f92721af3b95e74349a",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_file="test_batch",
    meta_file="batches.meta",
    label_key=b"labels",
    names_key=b"label_names",
    num_classes=10,
    # Per-channel statistics of the full training set (true pixel std, not the often-copied
    # 0.2023/0.1994/0.2010), fixed so that a partial copy does not change normalisation.
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
)
CIFAR100 = CifarSpec(
    name="cifar100",
    title="CIFAR-100",
    folder="cifar-100-python",
    archive="cifar-100-python.tar.gz",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    md5="eb9058c3a382ffc7106e4002c42a8d85",
    train_files=("train",),
    test_file="test",
    meta_file="meta",
    label_key=b"fine_labels",
    names_key=b"fine_label_names",
    num_classes=100,
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
)


def read_cifar10(root: Path, download: bool = False) -> RawDataset:
    """Read CIFAR-10 from `root/cifar-10-batches-py/` or `root/cifar-10-python.tar.gz`."""
    return _read(CIFAR10, Path(root), download)


def read_cifar100(root: Path, download: bool = False) -> RawDataset:
    """Read CIFAR-100 (fine labels) from `root/cifar-100-python/` or its `.tar.gz`."""
    return _read(CIFAR100, Path(root), download)


def _read(spec: CifarSpec, root: Path, download: bool) -> RawDataset:
    folder = _find_folder(spec, root)
    if folder is None:
        archive = root / spec.archive
        if archive.is_file():
            if download:
                # Asked to fetch the official data: a local archive that is not it is an error,
                # not something to overwrite silently.
                verify_md5(archive, spec.md5)
        elif download:
            download_and_verify(spec.url, archive, spec.md5)
        else:
            raise DataError(_missing_message(spec, root))
        extract_tarball(archive, root)
        folder = _find_folder(spec, root)
        if folder is None:
            raise DataError(
                f"{archive} was extracted into {root}, but {root / spec.folder} still lacks "
                f"{', '.join(_absent(spec, root / spec.folder))}: not the official archive"
            )

    train = [_read_batch(spec, folder / name) for name in spec.train_files]
    test = _read_batch(spec, folder / spec.test_file)
    meta = _unpickle(folder / spec.meta_file)
    names = meta.get(spec.names_key) if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != spec.num_classes:
        raise DataError(
            f"{folder / spec.meta_file} has no list of {spec.num_classes} {spec.names_key!r}"
        )
    return RawDataset(
        name=spec.name,
        train=ArraySplit(
            np.concatenate([s.images for s in train]), np.concatenate([s.labels for s in train])
        ),
        test=test,
        num_classes=spec.num_classes,
        pixel_max=255,
        class_names=[n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names],
        mean=spec.mean,
        std=spec.std,
    )


def _read_batch(spec: CifarSpec, path: Path) -> ArraySplit:
    batch = _unpickle(path)
    if not isinstance(batch, dict) or b"data" not in batch or spec.label_key not in batch:
        raise DataError(f"{path} is not a CIFAR batch: no {b'data'!r} and {spec.label_key!r}")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[spec.label_key])
    if labels.size == 0:  # an empty list reads as float64
        labels = labels.astype(np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != IMAGE_BYTES:
        raise DataError(
            f"{path}: {b'data'!r} is {data.dtype} {data.shape}, expected uint8 [N, {IMAGE_BYTES}]"
        )
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: {data.shape[0]} images but labels of shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise DataError(f"{path}: labels outside 0..{spec.num_classes - 1}")
    # Each row is the red, then green, then blue 32x32 plane, each row-major: CHW.
    return ArraySplit(data.reshape(-1, 3, 32, 32).copy(), labels.astype(np.int64))


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches, allowing only the globals a numpy array needs.

    The official format is a pickle, and a pickle can name any callable to run while it
    loads. These files only ever name numpy's array reconstruction (and `_codecs.encode`,
    which Python 3 uses for bytes in protocol-2 pickles), so anything else is refused.
    """

    _ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        if module.startswith("numpy.core."):
            # numpy 2 renamed numpy.core to numpy._core, keeping the old name as a deprecated
            # alias; files pickled by numpy 1 (the official ones) still use the old name.
            module = "numpy._core." + module.removeprefix("numpy.core.")
        return super().find_class(module, name)


def _unpickle(path: Path) -> Any:
    try:
        with path.open("rb") as fh:
            # encoding="bytes": the official files were written by Python 2, whose str
            # become bytes (hence the b"data" keys).
            return _BatchUnpickler(fh, encoding="bytes").load()
    except Exception as err:  # a corrupt pickle can fail in many ways; all mean "bad file"
        raise DataError(
            f"cannot read {path}: {type(err).__name__}: {err}. The file is truncated or "
            "corrupt: delete it (and its folder) and extract the official archive again"
        ) from err


def _absent(spec: CifarSpec, folder: Path) -> list[str]:
    return [name for name in spec.files if not (folder / name).is_file()]


def _find_folder(spec: CifarSpec, root: Path) -> Path | None:
    # Also accept the batch files placed directly in root.
    for folder in (root / spec.folder, root):
        if not _absent(spec, folder):
            return folder
    return None


def _missing_message(spec: CifarSpec, root: Path) -> str:
    folder = root / spec.folder
    absent = _absent(spec, folder)
    state = (
        f"{folder} does not exist" if not folder.is_dir() else f"{folder} lacks {', '.join(absent)}"
    )
    return (
        f"{spec.title} not found: {state}, and there is no archive {root / spec.archive}. "
        + fetch_hint(spec.url, root)
    )
