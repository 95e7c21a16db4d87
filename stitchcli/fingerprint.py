"""Content fingerprints of local files and folders, used in cache keys."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_CHUNK = 1 << 20
_memo: dict[tuple[str, int, int, int, int], str] = {}


def file_identity(st: os.stat_result) -> tuple[int, int, int, int]:
    """Give what tells a file's content changed without reading it: size, mtime, inode and ctime.

    Inode and ctime as well as size and mtime: `cp -p`, `rsync -a` or tar keep the last two.
    """
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


def path_identity(path: str | os.PathLike[str]) -> list[object] | None:
    """Give the identity of a local file, or of every file under a folder, or None when nothing is there."""
    p = Path(path).expanduser()
    if not p.exists():
        return None
    if p.is_file():
        return [str(p.resolve()), *file_identity(p.stat())]
    files = []
    for dirpath, dirnames, filenames in os.walk(p):
        dirnames.sort()
        for fname in sorted(filenames):
            files.append([fname, *file_identity((Path(dirpath) / fname).stat())])
    return [str(p.resolve()), files]


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Give the hex SHA-256 of a file's bytes (memoised in this process per path and file identity)."""
    p = Path(path)
    memo_key = (str(p.resolve()), *file_identity(p.stat()))
    if memo_key in _memo:
        return _memo[memo_key]
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    digest = h.hexdigest()
    _memo[memo_key] = digest
    return digest


def tree_fingerprint(
    root: str | os.PathLike[str], *, content: bool = True, names: list[str] | None = None, links: list[str] | None = None
) -> str:
    """Give a hex digest of every file under ``root`` (relative names and contents, or sizes).

    With ``content=False`` only names and sizes are hashed: for large image folders, where reading
    every byte on each command would cost more than the cache saves. A symbolic link to nothing is
    hashed as its target's name. ``names``, when given, receives every hashed file's relative name; ``links`` the
    relative names of the symbolic links to folders, which are not followed (their files are not hashed).
    """
    base = Path(root)
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if links is not None:
            links.extend(Path(dirpath, d).relative_to(base).as_posix() for d in dirnames if os.path.islink(os.path.join(dirpath, d)))
        for fname in sorted(filenames):
            if fname.startswith("."):
                continue
            fp = Path(dirpath) / fname
            rel = fp.relative_to(base).as_posix()
            h.update(rel.encode())
            h.update(b"\0")
            if names is not None:
                names.append(rel)
            if fp.is_symlink() and not fp.exists():
                h.update(b"link to " + os.fsencode(os.readlink(fp)))
            elif content:
                h.update(file_sha256(fp).encode())
            else:
                h.update(str(fp.stat().st_size).encode())
            h.update(b"\n")
    return h.hexdigest()
