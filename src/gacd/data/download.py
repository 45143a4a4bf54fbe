"""Fetching official archives: atomic downloads with an MD5 check, and safe tar extraction."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from gacd.data.arrays import DataError

_CHUNK = 1 << 20
_TIMEOUT_S = 60


def fetch_hint(url: str, into: Path) -> str:
    """The sentence every 'data missing' error ends with."""
    return f"Download it from {url} into {into}, or pass data.download=true."


def md5_of(path: Path) -> str:
    """MD5 hex digest of a file, read in chunks (the official checksums are MD5)."""
    digest = hashlib.md5(usedforsecurity=False)
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_md5(path: Path, md5: str) -> None:
    """Raise DataError if `path`'s MD5 is not `md5` (the file is left in place)."""
    actual = md5_of(path)
    if actual != md5.lower():
        raise DataError(
            f"{path} is corrupt or not the official file: md5 {actual}, expected {md5}; "
            "delete it and download it again"
        )


def download_and_verify(url: str, dest: Path, md5: str) -> Path:
    """Download `url` to `dest`, checking its MD5; `dest` appears only once it is verified.

    The bytes go to a temporary file beside `dest` and are renamed into place, so an
    interrupted or corrupt download never leaves a file that looks complete.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        request = urllib.request.Request(url, headers={"User-Agent": "gacd"})
        try:
            with (
                os.fdopen(fd, "wb") as out,
                urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response,
            ):
                total = response.headers.get("Content-Length")
                with tqdm(
                    total=int(total) if total and total.isdigit() else None,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=dest.name,
                    disable=None,  # no bar when stderr is not a terminal (CI logs)
                ) as bar:
                    for chunk in iter(lambda: response.read(_CHUNK), b""):
                        out.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise DataError(f"could not download {url} to {dest}: {err}") from err
        actual = digest.hexdigest()
        if actual != md5.lower():
            raise DataError(
                f"downloaded {url} to {dest} but its md5 is {actual}, expected {md5}; "
                "the file was deleted (a bad mirror or a truncated transfer: try again)"
            )
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return dest


def download_from_mirrors(urls: Sequence[str], dest: Path, md5: str) -> Path:
    """Try each mirror in turn; raise DataError listing every failure if none works."""
    failures = []
    for url in urls:
        try:
            return download_and_verify(url, dest, md5)
        except DataError as err:
            failures.append(str(err))
    raise DataError("every mirror failed:\n  " + "\n  ".join(failures))


def extract_tarball(archive: Path, dest: Path, skip: Callable[[str], bool] | None = None) -> None:
    """Extract `archive` into `dest` safely; members for which `skip(name)` is true are left out.

    Members that would land outside `dest` (absolute paths, `..`, links pointing out) or that
    are devices are refused. Everything is first extracted into a temporary folder inside
    `dest` and moved into place only when the whole archive has been read, so a truncated
    archive never leaves half its files looking like a complete dataset.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest, prefix=".extract-"))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                members = [m for m in tar.getmembers() if not (skip and skip(m.name))]
                for member in members:
                    _check_member(member, archive)
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(staging, members=members, filter="data")
                else:  # Python without extraction filters: _check_member already refused links
                    tar.extractall(staging, members=members)
        except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
            raise DataError(
                f"{archive} is not a readable tar archive ({err}); it is probably truncated or "
                "corrupt: delete it and download it again"
            ) from err
        for child in staging.iterdir():
            _merge_move(child, dest / child.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    path = PurePosixPath(member.name)
    unsafe = path.is_absolute() or ".." in path.parts or member.name.startswith("\\")
    if member.issym() or member.islnk():
        # The official archives hold no links; refusing them closes the "link out of the
        # destination" hole on Pythons whose tarfile has no extraction filter.
        unsafe = True
    if member.isdev() or member.isfifo():
        unsafe = True
    if unsafe:
        raise DataError(
            f"{archive} holds an unsafe member {member.name!r} (outside the destination, a "
            "link or a device); refusing to extract it: this is not the official archive"
        )


def _merge_move(src: Path, dst: Path) -> None:
    # A folder that already exists (say a partial earlier extraction) is merged file by file.
    if src.is_dir() and dst.is_dir():
        for child in src.iterdir():
            _merge_move(child, dst / child.name)
    else:
        if dst.is_dir():
            shutil.rmtree(dst)
        os.replace(src, dst)
