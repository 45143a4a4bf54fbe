"""Progress on long work: a bar on a terminal, plain lines anywhere else.

A log file or CI output gets whole lines (one per epoch, per attack, per stage) instead of
tqdm's carriage returns; a terminal gets a live bar and the same summary lines.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def interactive() -> bool:
    """True when progress bars can redraw in place (stderr is a terminal)."""
    return sys.stderr.isatty()


def bar(
    items: Iterable[T], *, total: int | None = None, desc: str = "", enabled: bool = True
) -> tqdm:
    """A tqdm bar over `items` on a terminal; a silent pass-through elsewhere."""
    return tqdm(
        items,
        total=total,
        desc=desc,
        leave=False,
        disable=not (enabled and interactive()),
        dynamic_ncols=True,
    )


def say(message: str) -> None:
    """One whole line of progress on stdout, flushed (it must reach a log file now), in a
    single write: lines of parallel stage workers sharing the output never interleave."""
    sys.stdout.write(f"{message}\n")
    sys.stdout.flush()


def duration(seconds: float) -> str:
    """'42 s', '3 min 05 s', '2 h 07 min'."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def remaining(done: float, total: float, elapsed: float) -> str:
    """Time left at the pace so far, e.g. '~3 min 05 s left' ('' before any progress)."""
    if done <= 0 or total <= done:
        return ""
    return f"~{duration(elapsed * (total - done) / done)} left"


def chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, stop) of consecutive slices of `size` covering range(n)."""
    for start in range(0, n, size):
        yield start, min(n, start + size)
