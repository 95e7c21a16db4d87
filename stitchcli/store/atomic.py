"""Atomic writes: a file is written under a temporary name beside it, fsynced and renamed into place, so a
reader sees the old file or the new one whole and a killed process leaves nothing that looks complete."""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
from pathlib import Path
from typing import Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[str]:
    """Give a temporary path beside ``path`` to write; then fsync it, give it the permissions a plain open()
    would (mkstemp makes 0600) and rename it onto ``path``. On any failure the temporary file is removed, so
    nothing that looks complete is left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # name the file the user knows, not a temporary name
        raise type(exc)(exc.errno, exc.strerror, str(path)) from None
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomically(path: Path, text: str) -> None:
    """Write a small text file (JSON, CSV) through a temporary file beside it, fsync and a rename, so a reader
    sees the old or the new file whole and a killed process leaves no torn one (its unique temporary name
    never collides with another writer's). A file that already holds exactly ``text`` is left alone: nothing
    to write, so rerunning a command on a read-only cache that holds its results does not fail. A path the
    user named that is a link, a pipe or a device (``--csv /dev/stdout``) is written through, not replaced."""
    path = Path(path)
    data = text.encode()
    with contextlib.suppress(OSError):
        if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
            return
    if is_written_through(path):
        with open(path, "wb") as f:
            f.write(data)
        return
    with atomic_file(path) as tmp:
        Path(tmp).write_bytes(data)


def is_written_through(path: Path) -> bool:
    """Tell whether ``path`` is a link, a pipe or a device: a file the user named that is written through, in
    place, rather than replaced by a renamed temporary file."""
    return path.is_symlink() or (path.exists() and not path.is_file())


def remove_interrupted_writes(path: Path) -> None:
    """Remove the temporary files killed processes left while writing ``path`` through :func:`atomic_file`.

    Call it only under a lock that every writer of ``path`` holds while writing, so none of them is live."""
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        tmp.unlink(missing_ok=True)
