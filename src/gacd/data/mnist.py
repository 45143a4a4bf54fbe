"""MNIST and Fashion-MNIST from the official IDX files (raw or gzipped)."""

from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gacd.data.arrays import ArraySplit, DataError, RawDataset
from gacd.data.download import download_from_mirrors, fetch_hint, md5_of

IMAGE_MAGIC = 0x00000803  # IDX: unsigned bytes, 3 dimensions
LABEL_MAGIC = 0x00000801  # IDX: unsigned bytes, 1 dimension
IMAGE_SIZE = 28

# (images, labels) file names per split, as published; each may also end in ".gz".
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FILE_NAMES = tuple(name for pair in SPLIT_FILES.values() for name in pair)


@dataclass(frozen=True)
class MnistVariant:
    """Where one variant is published, its checksums and its normalisation constants."""

    name: str
    title: str
    mirrors: tuple[str, ...]
    md5: dict[str, str]  # keyed by the .gz file name
    subdirs: tuple[str, ...]  # layouts other tools use under the root, tried before the root
    class_names: tuple[str, ...]
    mean: float
    std: float


VARIANTS: dict[str, MnistVariant] = {
    "mnist": MnistVariant(
        name="mnist",
        title="MNIST",
        # yann.lecun.com often refuses downloads now, so the PyTorch mirror comes first.
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        md5={
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        subdirs=("mnist", "mnist/raw", "MNIST/raw", "MNIST"),
        class_names=tuple(str(i) for i in range(10)),
        mean=0.1307,
        std=0.3081,
    ),
    "fashion_mnist": MnistVariant(
        name="fashion_mnist",
        title="Fashion-MNIST",
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
        md5={
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        subdirs=(
            "fashion_mnist",
            "fashion_mnist/raw",
            "FashionMNIST/raw",
            "FashionMNIST",
            "fashion-mnist",
        ),
        class_names=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        mean=0.2860,
        std=0.3530,
    ),
}


def read_mnist(root: Path, variant: str = "mnist", download: bool = False) -> RawDataset:
    """Read MNIST or Fashion-MNIST (`variant`) from the four IDX files under `root`.

    The files are looked for in `root/<variant>`, in the layouts other tools use
    (`root/MNIST/raw`, `root/FashionMNIST/raw`, ...) and in `root` itself, raw or gzipped.
    With `download`, missing files are fetched into `root/<variant>` and checked by MD5.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown MNIST variant '{variant}'; known: {', '.join(VARIANTS)}")
    spec = VARIANTS[variant]
    root = Path(root)
    folder = _find_folder(spec, root)
    if folder is None:
        if not download:
            raise DataError(_missing_message(spec, root))
        folder = _download(spec, root / spec.name)
    _refuse_other_variant(spec, folder)

    splits = {}
    for split, (image_name, label_name) in SPLIT_FILES.items():
        image_path, label_path = _find_file(folder, image_name), _find_file(folder, label_name)
        assert image_path is not None and label_path is not None  # _find_folder checked
        images = read_idx(image_path, IMAGE_MAGIC)
        labels = read_idx(label_path, LABEL_MAGIC)
        if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise DataError(f"{image_path} holds images of size {images.shape[1:]}, expected 28x28")
        if images.shape[0] != labels.shape[0]:
            raise DataError(
                f"{image_path} holds {images.shape[0]} images but {label_path} holds "
                f"{labels.shape[0]} labels"
            )
        if labels.size and labels.max() >= len(spec.class_names):
            raise DataError(f"{label_path} holds label {labels.max()}, expected 0..9")
        splits[split] = ArraySplit(images[:, None].copy(), labels.astype(np.int64))

    return RawDataset(
        name=spec.name,
        train=splits["train"],
        test=splits["test"],
        num_classes=len(spec.class_names),
        pixel_max=255,
        class_names=list(spec.class_names),
        # The published statistics of the full training set, so that a partial or tiny copy
        # of the data does not change how the models normalise.
        mean=(spec.mean,),
        std=(spec.std,),
    )


def read_idx(path: Path, magic: int | None = None) -> np.ndarray:
    """Parse one IDX file of unsigned bytes (raw or `.gz`) into a uint8 array of its shape.

    `magic`, when given, is the exact magic number required (0x803 images, 0x801 labels).
    """
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path} is truncated: {len(data)} bytes, too short for an IDX header")
    found = int.from_bytes(data[:4], "big")
    # An IDX magic is two zero bytes, a type code (0x08: unsigned byte) and the rank.
    if data[:2] != b"\0\0" or data[2] != 0x08 or (magic is not None and found != magic):
        wanted = f"0x{magic:08x}" if magic is not None else "0x000008NN"
        raise DataError(f"{path} has magic number 0x{found:08x}, expected {wanted}: not IDX data")
    rank = data[3]
    header = 4 + 4 * rank
    if len(data) < header:
        raise DataError(f"{path} is truncated inside its IDX header")
    dims = struct.unpack(f">{rank}I", data[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        raise DataError(
            f"{path} is {len(data)} bytes but its header {dims} implies {expected}: "
            "the file is truncated or corrupt"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
        return gzip.decompress(data) if path.suffix == ".gz" else data
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"cannot read {path}: {err} (truncated or corrupt?)") from err


def _candidate_folders(spec: MnistVariant, root: Path) -> list[Path]:
    return [root / sub for sub in spec.subdirs] + [root]


def _find_file(folder: Path, name: str) -> Path | None:
    # The raw file first: it is what the .gz unpacks to, and reads faster.
    for path in (folder / name, folder / f"{name}.gz"):
        if path.is_file():
            return path
    return None


def _find_folder(spec: MnistVariant, root: Path) -> Path | None:
    for folder in _candidate_folders(spec, root):
        if all(_find_file(folder, name) is not None for name in FILE_NAMES):
            return folder
    return None


def _download(spec: MnistVariant, folder: Path) -> Path:
    for name in FILE_NAMES:
        if _find_file(folder, name) is None:
            gz = f"{name}.gz"
            download_from_mirrors([m + gz for m in spec.mirrors], folder / gz, spec.md5[gz])
    return folder


def _refuse_other_variant(spec: MnistVariant, folder: Path) -> None:
    # MNIST and Fashion-MNIST use the same file names, so a shared root could silently give
    # one for the other; the (tiny) official label archives tell them apart.
    labels = folder / "train-labels-idx1-ubyte.gz"
    if not labels.is_file():
        return
    digest = md5_of(labels)
    for other in VARIANTS.values():
        if other.name != spec.name and digest == other.md5[labels.name]:
            raise DataError(
                f"{folder} holds the {other.title} files, not {spec.title}; keep each in its "
                f"own folder (e.g. {folder / spec.name})"
            )


def _missing_message(spec: MnistVariant, root: Path) -> str:
    looked = "\n  ".join(str(p) for p in _candidate_folders(spec, root))
    partial = []
    for folder in _candidate_folders(spec, root):
        absent = [n for n in FILE_NAMES if _find_file(folder, n) is None]
        if len(absent) < len(FILE_NAMES):
            partial.append(f"{folder} lacks {', '.join(absent)}")
    detail = ("; " + "; ".join(partial)) if partial else ""
    return (
        f"{spec.title} not found: no folder holds all of {', '.join(FILE_NAMES)} "
        f"(each raw or .gz){detail}. Looked in:\n  {looked}\n"
        + fetch_hint(spec.mirrors[0] + "<file>.gz", root / spec.name)
    )
