"""Output files that a crash, a full disk or a concurrent writer cannot leave half written.

Every file neurofm writes (session files, checkpoints, ``model.safetensors``, ``config.json``,
cards, metrics, plots) goes through :func:`atomic_output` (or :func:`atomic_write` for one-shot
writes):

* the data is written to a temporary file IN THE DESTINATION DIRECTORY (``.NAME.XXXX.tmp``),
  so the final step is a rename within one filesystem, never a copy over the old file (a
  move from ``/tmp`` to a run folder on another filesystem, usual on clusters, is a copy: a
  kill during it leaves a truncated file under the final name);
* the temporary file is flushed and fsynced, given the mode a plain ``open()`` would give
  (``0o666 & ~umask``: ``mkstemp`` creates ``0600``, which lab-mates on a shared server cannot
  read), then renamed over the destination (``os.replace``, atomic) and the directory is
  fsynced, so the destination is either the old complete file or the new complete file;
* ``keep_previous=PATH`` first keeps the old destination as ``PATH`` (a hard link, else a
  rename), so the previous good file survives damage to the new one (resume falls back to it);
* ``overwrite=False`` publishes with ``os.link`` (or an exclusive create where hard links are
  not supported), which fails if the destination appeared in the meantime: no race between
  the existence check and the rename can replace someone else's file;
* on any error the temporary file is removed, and errors of the output side (no space, no
  permission, the destination is a directory, file size limit) are :class:`OutputError`
  naming the OUTPUT path and the fix, never reported as a damaged input.
"""

from __future__ import annotations

import errno
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

#: errno values that only a write can cause (a failed read never reports them)
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


class OutputError(OSError):
    """Writing an output file failed (disk full, no permission, a directory in the way...).

    ``path`` is the OUTPUT the user asked for; the message says what went wrong and the fix.
    """

    def __init__(self, path: str | os.PathLike, problem: str, fix: str = "", err: int | None = None):
        super().__init__(err or 0, problem)
        self.path, self.problem, self.fix = str(path), problem, fix
        self.filename = str(path)

    def __str__(self) -> str:
        return f"{self.path}: cannot write this output: {self.problem}" + (f" ({self.fix})" if self.fix else "")


def output_error(e: OSError, path: str | os.PathLike) -> OutputError:
    """``e`` (raised while writing ``path``) as an :class:`OutputError` saying what to do."""
    if isinstance(e, OutputError):
        return e
    path = Path(path)
    code = e.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        problem, fix = "no space left on the device (disk full or quota exceeded)", \
            "free space there, or write the output to another disk"
    elif code == errno.EFBIG:
        problem, fix = "file too large for this filesystem or the process's file size limit (ulimit -f)", \
            "raise the limit or write to another filesystem"
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        problem, fix = f"no permission to write in {path.parent} ({os.strerror(code)})", \
            "choose a folder you can write to"
    elif code == errno.ENOTDIR:
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), path.parent)
        problem, fix = f"{blocker} is a file, not a folder", "remove or rename that file, or choose another path"
    elif code == errno.EISDIR:
        problem, fix = "is a directory", "give a file name inside it, e.g. " + str(path / "session.h5")
    else:
        problem, fix = f"{type(e).__name__}: {e.strerror or e}", ""
    return OutputError(path, problem, fix, code)


def is_output_errno(e: BaseException) -> bool:
    """An OSError only a write can cause (no space, quota, file size limit, read-only)."""
    return isinstance(e, OSError) and e.errno in _WRITE_ERRNOS


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows (thread-safe)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def output_mode() -> int:
    """Mode of a new output file: what ``open(path, "w")`` would give (``0o666 & ~umask``)."""
    return 0o666 & ~current_umask()


def check_destination(path: str | os.PathLike, overwrite: bool = True) -> Path:
    """Fail early, naming the output, when ``path`` cannot be written (a directory there, or it
    exists and ``overwrite`` is False). Creates missing parent folders."""
    path = Path(path)
    if path.is_dir():
        raise output_error(OSError(errno.EISDIR, "is a directory"), path)
    if not overwrite and (path.exists() or path.is_symlink()):
        raise FileExistsError(f"{path} exists; pass overwrite=True (CLI: leave out --no-overwrite) to replace it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise output_error(e, path) from None
    return path


def temp_beside(path: str | os.PathLike) -> Path:
    """A new empty temporary file in ``path``'s directory (``.NAME.XXXX.tmp``)."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise output_error(e, path) from None
    os.close(fd)
    return Path(tmp)


def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    except OSError:
        if not directory:  # some filesystems cannot fsync a directory; a file must be synced
            raise
    finally:
        os.close(fd)


def publish(tmp: str | os.PathLike, path: str | os.PathLike, *, overwrite: bool = True,
            keep_previous: str | os.PathLike | None = None) -> Path:
    """Move the finished temporary file ``tmp`` (in ``path``'s directory) to ``path``; see the
    module docstring. ``tmp`` is gone afterwards, whatever happens."""
    tmp, path = Path(tmp), Path(path)
    try:
        _fsync(tmp)
        os.chmod(tmp, output_mode())
        if keep_previous is not None and path.is_file():
            _keep(path, Path(keep_previous))
        if overwrite:
            os.replace(tmp, path)
        else:
            _publish_exclusive(tmp, path)
        _fsync(path.parent, directory=True)
    except FileExistsError:
        raise
    except OSError as e:
        raise output_error(e, path) from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _keep(path: Path, previous: Path) -> None:
    """Keep the current ``path`` as ``previous`` (a second name for the same complete file)."""
    link = previous.with_name(f".{previous.name}.{os.getpid()}.link")
    link.unlink(missing_ok=True)
    try:
        os.link(path, link)
        os.replace(link, previous)
    except OSError:  # no hard links here: move it (path is absent until the new file lands)
        link.unlink(missing_ok=True)
        os.replace(path, previous)


def _publish_exclusive(tmp: Path, path: Path) -> None:
    try:
        os.link(tmp, path)  # fails with FileExistsError if anything appeared at path
        return
    except FileExistsError:
        raise FileExistsError(f"{path} exists (it appeared while this output was being written); nothing was "
                              f"replaced: remove it or leave out --no-overwrite / pass overwrite=True") from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV, errno.ENOSYS):
            raise
    try:  # a filesystem without hard links: claim the name exclusively, then fill it
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        raise FileExistsError(f"{path} exists (it appeared while this output was being written); nothing was "
                              f"replaced: remove it or leave out --no-overwrite / pass overwrite=True") from None
    os.replace(tmp, path)


@contextmanager
def atomic_output(path: str | os.PathLike, *, overwrite: bool = True,
                  keep_previous: str | os.PathLike | None = None) -> Iterator[Path]:
    """``with atomic_output(path) as tmp: write(tmp)``: ``path`` appears, complete, only when the
    block ends without an exception; on any exception the temporary file is removed and
    output-side OS errors become :class:`OutputError` naming ``path``."""
    path = check_destination(path, overwrite)
    tmp = temp_beside(path)
    try:
        yield tmp
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if is_output_errno(e) and not isinstance(e, OutputError):
            raise output_error(e, path) from e
        raise
    publish(tmp, path, overwrite=overwrite, keep_previous=keep_previous)


def atomic_write(path: str | os.PathLike, data: str | bytes | Callable[[Path], object], **kwargs) -> Path:
    """Write ``data`` (text, bytes, or a function that writes the file at the path it is given)
    to ``path`` atomically (see :func:`atomic_output`, which takes the same ``kwargs``)."""
    with atomic_output(path, **kwargs) as tmp:
        if isinstance(data, str):
            tmp.write_text(data)
        elif isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            data(tmp)
    return Path(path)
