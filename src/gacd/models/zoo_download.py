"""Fetching a RobustBench checkpoint from Google Drive, where RobustBench hosts them.

Large Drive files answer a plain download link with an HTML page ("can't scan this file for
viruses") whose form carries the confirmation parameters; like gdown, which robustbench
uses, we submit that form. The bytes go to a temporary file beside the destination and are
renamed into place only once complete and recognisably a torch checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import urllib.error
import urllib.parse
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import BinaryIO
from urllib.request import Request, urlopen

from tqdm import tqdm

from gacd.errors import ZooError
from gacd.models.zoo_table import ZooEntry

# The direct-download endpoint gdown uses; confirm=t skips the warning page when it can.
DOWNLOAD_URL = "https://drive.usercontent.google.com/download?id={id}&export=download&confirm=t"
_CHUNK = 1 << 20
_TIMEOUT_S = 60
_MAX_PAGES = 3  # warning pages to follow before giving up
# torch.save writes a zip archive; files from before PyTorch 1.6 are a raw pickle stream.
_CHECKPOINT_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


class _FormParser(HTMLParser):
    """The first form's action and its input fields; the page title, for error messages."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}
        self.title = ""
        self._in_form = self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form" and self.action is None:
            self.action, self._in_form = a.get("action", ""), True
        elif tag == "input" and self._in_form and a.get("name"):
            self.fields[a["name"]] = a.get("value", "")
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._in_form = False
        elif tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data


def gdrive_url(entry: ZooEntry) -> str:
    return f"https://drive.google.com/uc?id={entry.gdrive_id}"


def download_checkpoint(
    entry: ZooEntry, dest: str | Path, log: Callable[[str], None] = print
) -> Path:
    """Download `entry`'s checkpoint to `dest`; returns `dest`. ZooError on failure."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    url = DOWNLOAD_URL.format(id=entry.gdrive_id)
    log(f"downloading {entry.id} from Google Drive ({gdrive_url(entry)}) to {dest}")
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for _ in range(_MAX_PAGES + 1):
                page = _fetch(url, out, dest, entry)
                if page is None:
                    break
                url = _confirmation_url(page, url, entry)
            else:
                raise ZooError(
                    f"Google Drive kept answering with pages instead of {entry.id}'s file; "
                    f"download {gdrive_url(entry)} by hand and save it as {dest}"
                )
        with tmp.open("rb") as fh:
            head = fh.read(4)
        if not head.startswith(_CHECKPOINT_MAGIC):
            raise ZooError(
                f"the file downloaded for {entry.id} is not a torch checkpoint (it starts with "
                f"{head!r}); download {gdrive_url(entry)} by hand and save it as {dest}"
            )
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    log(f"saved {entry.id} to {dest} ({dest.stat().st_size / 1e6:.1f} MB)")
    return dest


def _confirmation_url(page: str, url: str, entry: ZooEntry) -> str:
    """The URL the warning page's form submits to (GET), or ZooError if the page has none
    (quota exceeded, file not shared, sign-in wall...)."""
    parser = _FormParser()
    parser.feed(page)
    if not parser.action or "id" not in parser.fields:
        title = parser.title.strip() or "no title"
        raise ZooError(
            f"Google Drive answered with a page ('{title}') instead of {entry.id}'s file "
            f"(download quota exceeded, or the file moved); try again later or download "
            f"{gdrive_url(entry)} by hand"
        )
    action = urllib.parse.urljoin(url, parser.action)
    return f"{action}?{urllib.parse.urlencode(parser.fields)}"


def _fetch(url: str, out: BinaryIO, dest: Path, entry: ZooEntry) -> str | None:
    """Write the file at `url` to `out` and return None, or return the HTML page served
    instead of it."""
    request = Request(url, headers={"User-Agent": "gacd"})
    try:
        with urlopen(request, timeout=_TIMEOUT_S) as response:
            if response.headers.get("Content-Type", "").startswith("text/html"):
                return response.read().decode("utf-8", "replace")
            total = response.headers.get("Content-Length")
            with tqdm(
                total=int(total) if total and total.isdigit() else None,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=dest.name,
                disable=None,  # no bar when stderr is not a terminal
            ) as bar:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError) as err:
        raise ZooError(
            f"could not download {entry.id} from {gdrive_url(entry)}: {err}; "
            f"download it by hand and save it as {dest}"
        ) from err
    return None
