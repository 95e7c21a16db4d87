"""Content fingerprints of local files and folders, used in cache keys."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_CHUNK = 1 << 20
_memo: dict[tuple[str, int, int, int, int], str] = {}


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Give the hex SHA-256 of a file's bytes (memoised in this process per path and file identity)."""
    p = Path(path)
    st = p.stat()
    # inode and ctime as well as size and mtime: `cp -p` or `rsync -a` keep the last two.
    memo_key = (str(p.resolve()), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
    if memo_key in _memo:
        return _memo[memo_key]
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    digest = h.hexdigest()
    _memo[memo_key] = digest
    return digest


def tree_fingerprint(root: str | os.PathLike[str], *, content: bool = True) -> str:
    """Give a hex digest of every file under ``root`` (relative names and contents, or sizes).

    With ``content=False`` only names and sizes are hashed: for large image folders, where reading
    every byte on each command would cost more than the cache saves.
    """
    base = Path(root)
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fname in sorted(filenames):
            if fname.startswith("."):
                continue
            fp = Path(dirpath) / fname
            rel = fp.relative_to(base).as_posix()
            h.update(rel.encode())
            h.update(b"\0")
            if content:
                h.update(file_sha256(fp).encode())
            else:
                h.update(str(fp.stat().st_size).encode())
            h.update(b"\n")
    return h.hexdigest()
