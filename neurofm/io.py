"""Atomic file writes: a file appears under its final name complete, or not at all.

Everything neurofm writes for others to read (session files, checkpoints' folders, configs,
metrics, plots) is written to a temporary file in the same folder and moved into place with
``os.replace`` (atomic on one file system), so a crash or a reader in another process never
sees half a file. :func:`atomic_write` for one-shot writes, :func:`atomic_path` when the
writing takes several statements, :func:`temp_beside` for a writer that lives longer (e.g.
:class:`~neurofm.data.session.SessionWriter`, which replaces it on ``close``).
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Union

__all__ = ["atomic_write", "atomic_path", "temp_beside"]

PathLike = Union[str, "os.PathLike[str]"]


def temp_beside(path: PathLike) -> Path:
    """A new empty temporary file ``.<name>.<random>.tmp`` in ``path``'s folder (created if
    missing), for a caller that ``os.replace``-s it onto ``path`` when done (and removes it
    on failure)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """``with atomic_path(p) as tmp:`` write ``tmp``; on success it replaces ``p``, on any
    error it is removed and ``p`` is untouched."""
    tmp = temp_beside(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: PathLike, data: str | bytes | Callable[[Path], object]) -> Path:
    """Write ``data`` (text, bytes, or a function that writes the file at the path it is
    given) to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data)
        elif isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            data(tmp)
    return Path(path)
