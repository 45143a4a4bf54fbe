"""STL-10 (labelled part) from the official binary archive."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np

from gacd.data.arrays import ArraySplit, DataError, RawDataset
from gacd.data.download import download_and_verify, extract_tarball, fetch_hint, verify_md5

FOLDER = "stl10_binary"
ARCHIVE = "stl10_binary.tar.gz"
# Module-level so tests can point the download at a local file.
URL = "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz"
MD5 = "91f7769df0f17e558f3565bffb0c7dfb"
IMAGE_SIZE = 96
IMAGE_BYTES = 3 * IMAGE_SIZE * IMAGE_SIZE
SPLIT_FILES = {"train": ("train_X.bin", "train_y.bin"), "test": ("test_X.bin", "test_y.bin")}
FILE_NAMES = tuple(name for pair in SPLIT_FILES.values() for name in pair)
CLASS_NAMES_FILE = "class_names.txt"
# As in the official class_names.txt; used only if that file is absent.
DEFAULT_CLASS_NAMES = (
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
# The 100,000 unlabelled images (2.7 GB unpacked) are not used: never extracted.
_UNUSED = frozenset({"unlabeled_X.bin"})


def read_stl10(root: Path, download: bool = False) -> RawDataset:
    """Read STL-10's 5,000 train / 8,000 test labelled 96x96 images from `root`.

    Looks for `root/stl10_binary/` (or the files directly in `root`), else extracts
    `root/stl10_binary.tar.gz` (fetched first with `download`). Labels become 0..9.
    """
    root = Path(root)
    folder = _find_folder(root)
    if folder is None:
        archive = root / ARCHIVE
        if archive.is_file():
            if download:
                verify_md5(archive, MD5)
        elif download:
            download_and_verify(URL, archive, MD5)
        else:
            raise DataError(_missing_message(root))
        extract_tarball(archive, root, skip=lambda name: PurePosixPath(name).name in _UNUSED)
        folder = _find_folder(root)
        if folder is None:
            raise DataError(
                f"{archive} was extracted into {root}, but {root / FOLDER} still lacks "
                f"{', '.join(_absent(root / FOLDER))}: not the official archive"
            )

    splits = {}
    for split, (x_name, y_name) in SPLIT_FILES.items():
        images, labels = read_images(folder / x_name), read_labels(folder / y_name)
        if len(images) != len(labels):
            raise DataError(
                f"{folder / x_name} holds {len(images)} images but {folder / y_name} holds "
                f"{len(labels)} labels"
            )
        splits[split] = ArraySplit(images, labels)
    # Computed here in integers: RawDataset's float64 copy of 5,000 96x96 images is 1.1 GB.
    mean, std = _channel_stats(splits["train"].images)
    return RawDataset(
        name="stl10",
        train=splits["train"],
        test=splits["test"],
        num_classes=len(DEFAULT_CLASS_NAMES),
        pixel_max=255,
        class_names=_class_names(folder / CLASS_NAMES_FILE),
        mean=mean,
        std=std,
    )


def read_images(path: Path) -> np.ndarray:
    """Read an STL-10 `*_X.bin` into uint8 [N, 3, 96, 96] (channels, rows, columns).

    Each image is stored channel by channel, and each channel column by column (Fortran
    order, as written by MATLAB), so the last two axes are swapped after reading.
    """
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise DataError(f"cannot read {path}: {err}") from err
    if raw.size % IMAGE_BYTES:
        raise DataError(
            f"{path} is {raw.size} bytes, not a whole number of {IMAGE_BYTES}-byte images: "
            "the file is truncated or corrupt"
        )
    columns_first = raw.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE)  # [N, C, W, H]
    return np.ascontiguousarray(columns_first.transpose(0, 1, 3, 2))


def read_labels(path: Path) -> np.ndarray:
    """Read an STL-10 `*_y.bin` (one byte per image, 1..10) into int64 labels 0..9."""
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise DataError(f"cannot read {path}: {err}") from err
    if raw.size and (raw.min() < 1 or raw.max() > len(DEFAULT_CLASS_NAMES)):
        raise DataError(
            f"{path} holds labels {raw.min()}..{raw.max()}, expected 1..10: corrupt file"
        )
    return raw.astype(np.int64) - 1


def _channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    count = images.shape[0] * images.shape[2] * images.shape[3]
    if count == 0:
        raise DataError("STL-10 training split is empty")
    total = np.zeros(images.shape[1], dtype=np.float64)
    total_sq = np.zeros(images.shape[1], dtype=np.float64)
    for start in range(0, images.shape[0], 500):  # chunks keep the int64 copies small
        chunk = images[start : start + 500].astype(np.int64)
        total += chunk.sum(axis=(0, 2, 3))
        total_sq += (chunk * chunk).sum(axis=(0, 2, 3))
    mean = total / count / 255.0
    var = np.maximum(total_sq / count / 255.0**2 - mean**2, 0.0)
    std = np.maximum(np.sqrt(var), 1e-3)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _class_names(path: Path) -> list[str]:
    if not path.is_file():
        return list(DEFAULT_CLASS_NAMES)
    try:
        names = [line.strip() for line in path.read_text("utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {path}: {err}") from err
    if len(names) != len(DEFAULT_CLASS_NAMES):
        raise DataError(f"{path} lists {len(names)} class names, expected 10")
    return names


def _absent(folder: Path) -> list[str]:
    return [name for name in FILE_NAMES if not (folder / name).is_file()]


def _find_folder(root: Path) -> Path | None:
    for folder in (root / FOLDER, root):
        if not _absent(folder):
            return folder
    return None


def _missing_message(root: Path) -> str:
    folder = root / FOLDER
    state = (
        f"{folder} does not exist"
        if not folder.is_dir()
        else f"{folder} lacks {', '.join(_absent(folder))}"
    )
    return f"STL-10 not found: {state}, and there is no archive {root / ARCHIVE}. " + fetch_hint(
        URL, root
    )
