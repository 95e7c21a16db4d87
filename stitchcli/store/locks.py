"""File locks: processes (and threads) that write the same files take turns on a lock file beside them."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Callable, Iterator


_HELD_LOCKS: set[tuple[int, int, str]] = set()
"""The (process, thread, lock file) triples whose lock :func:`file_lock` holds now."""


@contextlib.contextmanager
def file_lock(path: Path, *, on_wait: Callable[[], None] | None = None) -> Iterator[bool]:
    """Hold an exclusive advisory lock on ``path`` (created if missing) while the block runs, waiting for
    any other holder first (``on_wait`` is called once before waiting, to tell the user why nothing moves).
    POSIX ``flock``; where fcntl does not exist the block runs unlocked. Gives whether the block holds the lock
    (False without fcntl: the block must then not assume that no other process writes the same files).

    Re-entrant within a thread: a block nested in another on the same path runs at once under the outer
    block's lock. (flock belongs to an open file, so locking the same file through a second open() would
    wait for this very thread forever.) Other threads and processes wait as usual.
    """
    try:
        import fcntl
    except ImportError:  # Windows: one process per entry is the user's to ensure
        yield False
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    held = (os.getpid(), threading.get_ident(), os.path.realpath(path))
    if held in _HELD_LOCKS:
        yield True
        return
    with open(path, "a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        _HELD_LOCKS.add(held)
        try:
            yield True
        finally:
            _HELD_LOCKS.discard(held)
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
