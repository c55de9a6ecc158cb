"""Progress lines for long passes: a silent minute at the terminal (or in a log file) reads as
a hung run. One implementation for the recipes' passes over the data (:func:`progress`),
conversion's blocks and training's steps (:class:`neurofm.tasks.callbacks.LogProgress`)."""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TypeVar

#: A pass that runs longer than this reports its progress every this many seconds.
PROGRESS_EVERY_S = 30.0

T = TypeVar("T")


def progress(items: Iterable[T], what: str, every_s: float | None = None, unit: str = "batches") -> Iterator[T]:
    """Yield ``items``; once the pass has run ``every_s`` (default :data:`PROGRESS_EVERY_S`)
    seconds, print a line to stderr every ``every_s`` seconds (``unit`` done, of how many when
    ``items`` has a length, time so far and left) and one when it ends. A short pass prints
    nothing."""
    every_s = PROGRESS_EVERY_S if every_s is None else every_s
    total = len(items) if hasattr(items, "__len__") else None
    start = last = time.monotonic()
    i = 0
    for i, item in enumerate(items, 1):
        yield item
        now = time.monotonic()
        if now - last >= every_s:
            last = now
            left = f", about {(now - start) * (total - i) / i:.0f} s left" if total else ""
            print(f"neurofm: {what}: {i:,}{f' of {total:,}' if total else ''} {unit} in {now - start:.0f} s{left}",
                  file=sys.stderr, flush=True)
    if last > start:
        print(f"neurofm: {what}: done, {i:,} {unit} in {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
