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


# The silence the passes share: when the last line was printed (or the silence began) and when the
# last pass ended. Evaluation after training runs a dozen passes of 10-20 s each; timed one by one,
# none reached 30 s and the run printed nothing for 2.5 minutes.
_silence = {"since": None, "pass_ended": None}


def progress(items: Iterable[T], what: str, every_s: float | None = None, unit: str = "batches") -> Iterator[T]:
    """Yield ``items``; once ``every_s`` (default :data:`PROGRESS_EVERY_S`) seconds passed without
    a progress line, print one to stderr (``unit`` done, of how many when ``items`` has a length,
    time so far and left), and one when a pass that printed ends. The silence is shared by passes
    that follow each other (each starting within ``every_s`` of the last one's end), so a run of
    short passes is not silent either; a lone short pass prints nothing."""
    every_s = PROGRESS_EVERY_S if every_s is None else every_s
    total = len(items) if hasattr(items, "__len__") else None
    start = time.monotonic()
    ended = _silence["pass_ended"]
    if _silence["since"] is None or ended is None or start - ended > every_s:
        _silence["since"] = start
    printed = False
    i = 0
    try:
        for i, item in enumerate(items, 1):
            yield item
            now = time.monotonic()
            if now - _silence["since"] >= every_s:
                _silence["since"], printed = now, True
                left = f", about {(now - start) * (total - i) / i:.0f} s left" if total else ""
                print(f"neurofm: {what}: {i:,}{f' of {total:,}' if total else ''} {unit} in {now - start:.0f} s{left}",
                      file=sys.stderr, flush=True)
    finally:
        _silence["pass_ended"] = time.monotonic()
    if printed:
        _silence["since"] = time.monotonic()
        print(f"neurofm: {what}: done, {i:,} {unit} in {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
