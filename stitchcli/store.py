"""The embedding cache: one safetensors file per (model, dataset, split), keyed by provenance.

Layout under the cache root::

    embeddings/<model>/<dataset>/<split>-<digest>.safetensors      complete entries
    embeddings/<model>/<dataset>/<split>-<digest>.partial/          shards of an entry being built
    names/<NAME>.json                                               model specs saved with --name
    resolved.json                                                   memo of name -> spec resolutions

An entry holds the tensors ``embeddings`` (float32, N x D), ``labels`` (int64) and ``ids`` (int64),
and one JSON document in the safetensors metadata under ``stitchcli``. The file name carries a
digest of the key (model spec, dataset fingerprint, split, subset), and the key is checked again
against the metadata on every read, so a file is used only for the exact inputs that produced it.

Every file written here (entries, shards, and the heads of :mod:`stitchcli.heads`) carries SHA-256 digests of
its header and of its tensor data in that metadata (see :data:`CHECKSUM_FIELD`). A cache hit reads the header
alone and checks its digest and the file's size (truncation, header damage, hand edits); the data's digest is
checked wherever the arrays are read (:meth:`EmbeddingStore.read`, resumed shards, the merge). A file that fails
is reported and rebuilt, never used. A file without digests (written before stitchcli wrote them) is rebuilt too:
it cannot be told apart from one whose digests were lost to damage or an edit, and rebuilding costs compute once,
where using a damaged file would silently skew every result made from it.

Writes are resumable: rows are encoded in fixed shards, each written to a temporary name and
renamed into place, and the final file is assembled under a temporary name and renamed, so a
killed run never leaves a file that looks complete and a rerun starts from the last whole shard.
Only numpy is imported here (the safetensors format is read and written directly, so that the digests are
computed as the bytes go by): a cache hit never pays for importing torch.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import itertools
import json
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from stitchcli.errors import UsageError, WorkError

SCHEMA_VERSION = 1
METADATA_KEY = "stitchcli"
_TENSORS = ("embeddings", "labels", "ids")


def default_cache_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Give the cache root: the argument, else $STITCHCLI_CACHE, else $XDG_CACHE_HOME/stitchcli, else ~/.cache/stitchcli."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("STITCHCLI_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "stitchcli"
    return Path.home() / ".cache" / "stitchcli"


def canonical_json(data: Any) -> str:
    """Give a deterministic JSON text (sorted keys, no spaces) for hashing."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)


def slug(text: str, max_len: int = 80) -> str:
    """Give a file-system-safe name for a model or dataset name (long or path-like names get a hash)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "x"
    if cleaned != text or len(cleaned) > max_len:
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        cleaned = f"{cleaned[: max_len - 9]}-{digest}"
    return cleaned


@dataclass(frozen=True)
class EntryKey:
    """What identifies one cache entry: the model's key, the dataset's identity, the split and subset."""

    model: dict[str, Any]
    dataset_id: str
    dataset_fingerprint: str
    split: str
    limit: int | None = None
    limit_seed: int | None = None
    columns: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Give the key as a JSON-ready dict, with the schema version."""
        return {
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "dataset_id": self.dataset_id,
            "dataset_fingerprint": self.dataset_fingerprint,
            "split": self.split,
            "limit": self.limit,
            "limit_seed": self.limit_seed,
            "columns": self.columns,
        }

    @property
    def digest(self) -> str:
        """Give the first 16 hex digits of the key's SHA-256."""
        return hashlib.sha256(canonical_json(self.to_dict()).encode()).hexdigest()[:16]


@dataclass
class CachedEmbeddings:
    """A complete cache entry read back (arrays loaded lazily by :meth:`EmbeddingStore.read`)."""

    path: Path
    metadata: dict[str, Any]
    rows: int
    dim: int
    embeddings: np.ndarray | None = None
    labels: np.ndarray | None = None
    ids: np.ndarray | None = None


class CorruptEntry(Exception):
    """A cache file that cannot be trusted (unreadable, truncated, failing its checksum, or made for another key)."""


class DamagedEntry(UsageError):
    """A cache entry whose file failed its checks when its arrays were read; it was reported and removed.

    The message starts as :func:`stitchcli.embedding.load_embeddings`' cache miss does ("no cached embeddings"),
    which is what the commands that embed on demand look for: they embed it again.
    """


# Every file stitchcli writes (entries, shards, heads) carries a checksum in its metadata document:
#   "checksum": {"algorithm": "sha256", "data": <hex>, "header": <hex>}
# ``data`` is the SHA-256 of the tensor bytes (everything after the header, in file order); ``header`` that
# of the header without itself: the metadata document, the tensors' dtypes, shapes and offsets. The header
# digest is checked whenever the header is read (cheap: a cache hit reads nothing else), the data digest
# whenever the tensors are. SHA-256 because hashlib has it everywhere, hardware-accelerated on current x86
# and ARM CPUs (1.7 GB/s on this project's 2-core test machine: 0.36 s for 200,000 x 768 float32).
CHECKSUM_FIELD = "checksum"
CHECKSUM_ALGORITHM = "sha256"
_READ_CHUNK = 1 << 24
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit
_ITEMSIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
              "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
_NUMPY_DTYPES = {"BOOL": "?", "U8": "u1", "I8": "i1", "I16": "<i2", "U16": "<u2", "F16": "<f2", "I32": "<i4",
                 "U32": "<u4", "F32": "<f4", "I64": "<i8", "U64": "<u8", "F64": "<f8"}


@dataclass(frozen=True)
class TensorSlot:
    """Where one tensor lies in a safetensors file: dtype (safetensors' name), shape, [start, stop) in the data."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    stop: int


@dataclass(frozen=True)
class SafetensorsHeader:
    """The parsed header of a safetensors file written by stitchcli (see :func:`read_header`).

    Attributes:
        path: the file.
        metadata: the stitchcli JSON document of the metadata.
        tensors: name -> slot, for every tensor.
        extra_metadata: other entries of the safetensors metadata (stitchcli writes none).
        data_start: byte offset of the tensor data.
    """

    path: Path
    metadata: dict[str, Any]
    tensors: dict[str, TensorSlot]
    extra_metadata: dict[str, str]
    data_start: int

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Tensor name -> shape."""
        return {name: slot.shape for name, slot in self.tensors.items()}

    @property
    def dtypes(self) -> dict[str, str]:
        """Tensor name -> dtype, as safetensors names it (F32, I64...)."""
        return {name: slot.dtype for name, slot in self.tensors.items()}

    @property
    def has_checksum(self) -> bool:
        """Whether the metadata carries a checksum record at all (files written before stitchcli wrote checksums do not)."""
        return CHECKSUM_FIELD in self.metadata

    def verify(self) -> None:
        """Check the header against its own checksum; raise CorruptEntry if it has none or it does not match."""
        record = self.metadata.get(CHECKSUM_FIELD)
        if record is None:
            raise CorruptEntry("it has no checksum (written by an older stitchcli, or edited by hand)")
        if not isinstance(record, dict) or record.get("algorithm") != CHECKSUM_ALGORITHM or not isinstance(record.get("data"), str):
            raise CorruptEntry(f"its checksum record is damaged ({_short(record)})")
        if _header_digest(self.metadata, self.tensors, self.extra_metadata) != record.get("header"):
            raise CorruptEntry("its header does not match its checksum (bit rot, or edited by hand)")

    def read_tensors(self) -> dict[str, np.ndarray]:
        """Give every tensor, read in one pass; CorruptEntry if the header or the data fails its checksum."""
        self.verify()
        digest = hashlib.new(CHECKSUM_ALGORITHM)
        tensors: dict[str, np.ndarray] = {}
        try:
            with open(self.path, "rb") as f:
                f.seek(self.data_start)
                for name, slot in sorted(self.tensors.items(), key=lambda item: item[1].start):
                    if slot.dtype not in _NUMPY_DTYPES:
                        raise CorruptEntry(f"tensor {name} has dtype {slot.dtype}, which numpy cannot hold")
                    array = np.empty(slot.shape, dtype=_NUMPY_DTYPES[slot.dtype])
                    view = memoryview(array.reshape(-1).view(np.uint8))
                    done = 0
                    while done < len(view):
                        got = f.readinto(view[done : done + _READ_CHUNK])
                        if not got:
                            raise CorruptEntry(f"it ends inside tensor {name} (truncated)")
                        digest.update(view[done : done + got])
                        done += got
                    tensors[name] = array
        except OSError as exc:
            raise CorruptEntry(f"cannot read it ({exc.strerror or exc})") from exc
        if digest.hexdigest() != self.metadata[CHECKSUM_FIELD]["data"]:
            raise CorruptEntry("its data does not match its checksum (bit rot, or edited by hand)")
        return tensors


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _header_digest(document: dict[str, Any], tensors: dict[str, TensorSlot], extra: dict[str, str]) -> str:
    """Give the checksum of a header: the document (without the header digest itself), the tensors' slots and any
    other metadata entries."""
    record = {k: v for k, v in dict(document.get(CHECKSUM_FIELD) or {}).items() if k != "header"}
    body = {
        "metadata": {**document, CHECKSUM_FIELD: record},
        "tensors": {name: [s.dtype, list(s.shape), [s.start, s.stop]] for name, s in tensors.items()},
        "extra": extra,
    }
    return hashlib.new(CHECKSUM_ALGORITHM, canonical_json(body).encode()).hexdigest()


def read_header(path: Path) -> SafetensorsHeader:
    """Give the parsed header of a safetensors file; CorruptEntry if it is unreadable, truncated, extended or not
    a stitchcli file. Reads the header alone (no tensor data) and checks the file's size against it; the checksums
    are checked by :meth:`SafetensorsHeader.verify` and :meth:`SafetensorsHeader.read_tensors`."""
    try:
        with open(path, "rb") as f:
            stat = os.fstat(f.fileno())
            prefix = f.read(8)
            size = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
            if size < 2 or size > min(_MAX_HEADER_BYTES, stat.st_size - 8):
                raise CorruptEntry(
                    f"unreadable safetensors file ({stat.st_size} bytes, header size {size}): truncated, or not a safetensors file"
                )
            raw = f.read(size)
    except OSError as exc:
        raise CorruptEntry(f"cannot read it ({exc.strerror or exc})") from exc
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptEntry(f"unreadable safetensors file (its header is not JSON: {exc})") from exc
    if not isinstance(header, dict):
        raise CorruptEntry("unreadable safetensors file (its header is not a JSON object)")
    extra = header.pop("__metadata__", None) or {}
    if not isinstance(extra, dict) or not all(isinstance(v, str) for v in extra.values()):
        raise CorruptEntry("unreadable safetensors file (its metadata is not a map of strings)")
    tensors = {name: _tensor_slot(name, entry) for name, entry in header.items()}
    end = 0
    for name, slot in sorted(tensors.items(), key=lambda item: item[1].start):
        if slot.start != end:
            raise CorruptEntry(f"unreadable safetensors file (tensor {name} starts at {slot.start}, not {end})")
        end = slot.stop
    data_start = 8 + size
    if stat.st_size != data_start + end:
        raise CorruptEntry(
            f"the file is {stat.st_size} bytes but its header describes {data_start + end}: truncated, or bytes were added"
        )
    if METADATA_KEY not in extra:
        raise CorruptEntry("no stitchcli metadata in the file")
    try:
        meta = json.loads(extra.pop(METADATA_KEY))
    except json.JSONDecodeError as exc:
        raise CorruptEntry(f"metadata is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise CorruptEntry("its metadata is not a JSON object")
    return SafetensorsHeader(path, meta, tensors, extra, data_start)


def _tensor_slot(name: str, entry: Any) -> TensorSlot:
    """Give the slot a header entry describes; CorruptEntry when it is malformed or its size disagrees with its shape."""
    try:
        dtype, shape, (start, stop) = entry["dtype"], entry["shape"], entry["data_offsets"]
        valid = (
            dtype in _ITEMSIZES
            and isinstance(shape, list)
            and all(type(d) is int and d >= 0 for d in [*shape, start, stop])
            and start <= stop
            and stop - start == int(np.prod(shape, dtype=np.int64)) * _ITEMSIZES[dtype]
        )
    except (KeyError, TypeError, ValueError):
        valid = False
    if not valid:
        raise CorruptEntry(f"unreadable safetensors file (tensor {name}: {_short(entry)})")
    return TensorSlot(dtype, tuple(shape), start, stop)


def read_safetensors_header(path: Path) -> tuple[dict[str, Any], dict[str, tuple[int, ...]], dict[str, str]]:
    """Give (metadata document, tensor shapes, tensor dtypes) of a safetensors file, or raise CorruptEntry.

    The file's size is checked against the header; its checksums are not (see :func:`read_header`).
    """
    header = read_header(path)
    return header.metadata, header.shapes, header.dtypes


def _check_entry(path: Path, key: EntryKey) -> CachedEmbeddings:
    """Give the entry at ``path`` if it is whole and made for ``key``; else raise CorruptEntry.

    Reads the header only (its checksum included): the data's checksum is checked when the arrays are read.
    """
    header = read_header(path)
    header.verify()
    meta, shapes, dtypes = header.metadata, header.shapes, header.dtypes
    missing = [t for t in _TENSORS if t not in shapes]
    if missing:
        raise CorruptEntry(f"missing tensors {missing}")
    if meta.get("key") != json.loads(canonical_json(key.to_dict())):
        raise CorruptEntry("its metadata was made for another key")
    emb_shape = shapes["embeddings"]
    if len(emb_shape) != 2 or dtypes["embeddings"] not in ("F32", "float32"):
        raise CorruptEntry(f"embeddings have shape {emb_shape} and dtype {dtypes['embeddings']}")
    n = emb_shape[0]
    if shapes["labels"] != (n,) or shapes["ids"] != (n,) or meta.get("rows") != n:
        raise CorruptEntry("row counts of embeddings, labels, ids and metadata disagree")
    return CachedEmbeddings(path=path, metadata=meta, rows=n, dim=emb_shape[1])


def _file_identity(path: Path) -> tuple[int, int, int]:
    """Give (inode, size, mtime in ns) of a file: a file renamed into its place later has another."""
    stat = os.stat(path)
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


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


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, Any]) -> None:
    """Write tensors atomically (a temporary file in the same folder, fsync, then rename), with their checksum.

    The tensors are laid out in the given order: the same tensors and metadata give the same file as
    :func:`write_safetensors_streamed`.
    """
    arrays = [(name, np.ascontiguousarray(value)) for name, value in tensors.items()]
    write_safetensors_streamed(path, [(name, a.dtype, a.shape, iter([a])) for name, a in arrays], metadata)


_SAFETENSORS_DTYPES = {
    np.dtype(t): name
    for t, name in ((np.float64, "F64"), (np.float32, "F32"), (np.float16, "F16"), (np.int64, "I64"), (np.int32, "I32"),
                    (np.int16, "I16"), (np.int8, "I8"), (np.uint8, "U8"), (np.bool_, "BOOL"))
}


def write_safetensors_streamed(
    path: Path, tensors: list[tuple[str, np.dtype, tuple[int, ...], Iterator[np.ndarray]]], metadata: dict[str, Any]
) -> None:
    """Write a safetensors file whose tensors arrive in row chunks, atomically, never holding a tensor whole.

    ``tensors``: (name, dtype, shape, chunks) with the chunks in row order; the header is written first
    (the format is an 8-byte little-endian header size, the JSON header padded with spaces to 8 bytes,
    then the tensors' bytes back to back), so memory stays at one chunk whatever the number of rows.

    The metadata document gets the file's checksum record (see :data:`CHECKSUM_FIELD`): the header is
    written with two random 64-hex-digit placeholders in it, the data digest is computed as the chunks go
    by, and the placeholders are then overwritten in place by the two digests, which have the same length,
    so no offset moves.
    """
    data_token, header_token = secrets.token_hex(32), secrets.token_hex(32)
    document = json.loads(json.dumps(metadata, sort_keys=True, default=str))  # as a reader will parse it
    document[CHECKSUM_FIELD] = {"algorithm": CHECKSUM_ALGORITHM, "data": data_token, "header": header_token}
    header: dict[str, Any] = {"__metadata__": {METADATA_KEY: json.dumps(document, sort_keys=True)}}
    slots: dict[str, TensorSlot] = {}
    offset = 0
    for name, dtype, shape, _ in tensors:
        size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        slots[name] = TensorSlot(_SAFETENSORS_DTYPES[np.dtype(dtype)], tuple(int(d) for d in shape), offset, offset + size)
        header[name] = {"dtype": slots[name].dtype, "shape": list(slots[name].shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    where = {token: 8 + encoded.index(token.encode()) for token in (data_token, header_token)}
    digest = hashlib.new(CHECKSUM_ALGORITHM)
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(len(encoded).to_bytes(8, "little"))
        f.write(encoded)
        for name, dtype, shape, chunks in tensors:
            written = 0
            for chunk in chunks:
                data = memoryview(np.ascontiguousarray(chunk, dtype=dtype).reshape(-1).view(np.uint8))
                f.write(data)
                digest.update(data)
                written += len(data)
            if written != slots[name].stop - slots[name].start:
                raise ValueError(f"tensor {name}: {written} bytes written for shape {shape}")
        document[CHECKSUM_FIELD]["data"] = digest.hexdigest()
        for token, value in ((data_token, digest.hexdigest()), (header_token, _header_digest(document, slots, {}))):
            f.seek(where[token])
            f.write(value.encode())


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


@dataclass
class ShardPlan:
    """How the rows of an entry are cut into resumable shards, and which are already done.

    ``jobs`` > 1 when the entry is built by several processes (torchrun ranks or array jobs): job ``j``
    computes the contiguous run of shards :meth:`job_shards` gives, so every shard is in exactly one job.
    """

    rows: int
    shard_rows: int
    done: list[int]
    jobs: int = 1

    def job_shards(self, job: int) -> list[int]:
        """Give the shard indices job ``job`` (of ``jobs``) computes (with fewer shards than jobs, the last jobs get none)."""
        if self.num_shards < self.jobs:
            return [job] if job < self.num_shards else []
        return list(range(job * self.num_shards // self.jobs, (job + 1) * self.num_shards // self.jobs))

    @property
    def missing_jobs(self) -> list[int]:
        """Give the jobs that still have a shard to compute."""
        done = set(self.done)
        return [j for j in range(self.jobs) if any(i not in done for i in self.job_shards(j))]

    @property
    def num_shards(self) -> int:
        """Give the number of shards covering all rows."""
        return (self.rows + self.shard_rows - 1) // self.shard_rows

    def bounds(self, index: int) -> tuple[int, int]:
        """Give the [start, stop) positions of one shard."""
        start = index * self.shard_rows
        return start, min(start + self.shard_rows, self.rows)

    @property
    def todo(self) -> list[int]:
        """Give the shard indices still to compute, in order."""
        done = set(self.done)
        return [i for i in range(self.num_shards) if i not in done]

    def rows_in(self, indices: Iterable[int]) -> int:
        """Give the number of rows the shards ``indices`` hold."""
        return sum(self.bounds(i)[1] - self.bounds(i)[0] for i in indices)

    @property
    def rows_done(self) -> int:
        """Give the number of rows already in finished shards."""
        return self.rows_in(self.done)


class EmbeddingStore:
    """The embedding cache rooted at one folder (see the module docstring for the layout)."""

    def __init__(self, root: str | os.PathLike[str] | None = None, *, warn: Callable[[str], None] | None = None):
        self.root = default_cache_dir(root)
        if self.root.exists() and not self.root.is_dir():
            raise UsageError(f"cache folder {str(self.root)!r} is a file: give a folder with --cache-dir or $STITCHCLI_CACHE")
        self._warn = warn or (lambda message: None)
        # shard file -> ((inode, size, mtime), its start row, its rows or None when damaged): each version of a
        # shard file is read and checked once per store, however often the plan is read again
        self._checked_shards: dict[Path, tuple[tuple[int, int, int], Any, Any]] = {}
        self._reported: set[tuple[Path, Any]] = set()

    # ----- entries -------------------------------------------------------------------------
    def entry_path(self, model_name: str, key: EntryKey) -> Path:
        """Give the path of the complete entry for a key."""
        return (
            self.root
            / "embeddings"
            / slug(model_name)
            / slug(key.dataset_id)
            / f"{slug(key.split)}-{key.digest}.safetensors"
        )

    def partial_dir(self, model_name: str, key: EntryKey) -> Path:
        """Give the folder holding the finished shards of an entry being built."""
        final = self.entry_path(model_name, key)
        return final.with_name(final.name.replace(".safetensors", ".partial"))

    def lookup(self, model_name: str, key: EntryKey) -> CachedEmbeddings | None:
        """Give the complete entry for a key, or None; a damaged or mismatched file is reported, never used."""
        path = self.entry_path(model_name, key)
        if not path.exists():
            return None
        try:
            return _check_entry(path, key)
        except CorruptEntry as exc:
            self._warn_once(path, f"cache file {path} cannot be used: {exc}; rebuilding it")
            return None

    def _warn_once(self, path: Path, message: str) -> None:
        """Report a damaged file once per version of it, however often it is looked up (or its plan read)."""
        try:
            seen = (path, _file_identity(path))
        except OSError:
            seen = (path, None)
        if seen not in self._reported:
            self._reported.add(seen)
            self._warn(message)

    def read(self, entry: CachedEmbeddings) -> CachedEmbeddings:
        """Give the entry with its arrays loaded, checked against the file's checksums on the way.

        Raises:
            DamagedEntry: the file no longer passes its checks (bit rot, truncated or edited since
                :meth:`lookup`, or gone): it was reported through the warn callback and removed, so the next
                ``embed`` (or any command that embeds on demand) builds it again.
        """
        path = entry.path
        try:
            before = _file_identity(path)
        except OSError:
            before = None
        try:
            header = read_header(path)
            header.verify()
            if header.metadata.get("key_digest") != entry.metadata.get("key_digest"):
                raise CorruptEntry("it was replaced by an entry made for another key")
            tensors = header.read_tensors()
            missing = [t for t in _TENSORS if t not in tensors]
            if missing:
                raise CorruptEntry(f"missing tensors {missing}")
        except CorruptEntry as exc:
            self._warn(f"cache file {path} cannot be used: {exc}; removed it, so that it is rebuilt")
            with file_lock(path.with_name(path.name.replace(".safetensors", ".lock"))):
                with contextlib.suppress(OSError):
                    if before is not None and _file_identity(path) == before:  # not a good file another process wrote since
                        path.unlink()
            raise DamagedEntry(
                f"no cached embeddings in {path}: {exc}, so the file was removed; "
                "run the same command again, or `stitchcli embed`, to rebuild it"
            ) from None
        entry.embeddings = tensors["embeddings"]
        entry.labels = tensors["labels"]
        entry.ids = tensors["ids"]
        return entry

    # ----- building an entry ---------------------------------------------------------------
    def lock_path(self, model_name: str, key: EntryKey) -> Path:
        """Give the lock file that processes building the same entry take turns on (kept beside the entry)."""
        final = self.entry_path(model_name, key)
        return final.with_name(final.name.replace(".safetensors", ".lock"))

    def read_plan(self, model_name: str, key: EntryKey, ids: np.ndarray | None) -> ShardPlan | None:
        """Give the plan of an earlier, unfinished build of this entry with its finished shards, or None when
        there is none for these exact rows (``ids`` None: for this key, whatever the rows)."""
        pdir = self.partial_dir(model_name, key)
        try:
            existing = json.loads((pdir / "plan.json").read_text())
        except (OSError, json.JSONDecodeError):
            return None
        wanted = {"key_digest": key.digest} if ids is None else self._plan_identity(key, ids)
        if not isinstance(existing, dict) or any(existing.get(k) != v for k, v in wanted.items()):
            return None
        if not isinstance(existing.get("shard_rows"), int) or existing["shard_rows"] <= 0 or not isinstance(existing.get("rows"), int):
            return None
        plan = ShardPlan(rows=existing["rows"], shard_rows=existing["shard_rows"], done=[], jobs=int(existing.get("jobs", 1)))
        plan.done = [i for i in range(plan.num_shards) if self._shard_ok(pdir, plan, i)]
        return plan

    @staticmethod
    def _plan_identity(key: EntryKey, ids: np.ndarray) -> dict[str, Any]:
        ids_digest = hashlib.sha256(np.ascontiguousarray(ids, dtype=np.int64).tobytes()).hexdigest()
        return {"key_digest": key.digest, "rows": int(len(ids)), "ids_sha256": ids_digest}

    def plan(
        self, model_name: str, key: EntryKey, ids: np.ndarray, shard_rows: int, *, fresh: bool = False, jobs: int = 1
    ) -> ShardPlan:
        """Give the shard plan for building an entry, resuming the finished shards of an earlier run.

        An earlier run's shards are reused when they were made for the same key, the same row ids and the
        same number of jobs, and the earlier shard size is kept (so several jobs, each calling this, cut the
        same shards: the first to come writes the plan). Otherwise they are discarded: with one job (or
        ``fresh``) silently, as before; with several, a plan another number of jobs left is a UsageError
        while it has finished shards. ``fresh`` with several jobs keeps the plan (each job then recomputes
        its own shards). Processes take turns on the entry's lock file, so two never write the plan at once.
        """
        pdir = self.partial_dir(model_name, key)
        with file_lock(self.lock_path(model_name, key)):
            existing = None if fresh and jobs == 1 else self.read_plan(model_name, key, ids)
            if existing is not None:
                if existing.jobs == jobs:
                    return existing
                if existing.done and not fresh:
                    made_by = "one process" if existing.jobs == 1 else f"{existing.jobs} jobs"
                    asked = "one process" if jobs == 1 else f"{jobs} jobs"
                    raise UsageError(
                        f"{pdir} holds {len(existing.done)} finished shards made by {made_by}, not {asked}: "
                        f"run with the same number of shards (--num-shards, or torchrun's process count), or add --force to start over"
                    )
            if jobs > 1 and not fresh and self.lookup(model_name, key) is not None:
                # another job joined the entry since this one looked: nothing left to compute
                return ShardPlan(rows=len(ids), shard_rows=int(shard_rows), done=list(range(-(-len(ids) // int(shard_rows)))), jobs=jobs)
            if pdir.exists():
                shutil.rmtree(pdir)
            pdir.mkdir(parents=True, exist_ok=True)
            plan = {**self._plan_identity(key, ids), "shard_rows": int(shard_rows), "jobs": int(jobs)}
            write_text_atomically(pdir / "plan.json", json.dumps(plan))
        return ShardPlan(rows=len(ids), shard_rows=int(shard_rows), done=[], jobs=jobs)

    def write_job_record(self, model_name: str, key: EntryKey, job: int, record: dict[str, Any]) -> None:
        """Save what one job of a several-process build reports (device, timings, preprocessing), for the merge."""
        path = self.partial_dir(model_name, key) / f"job-{job:06d}.json"
        write_text_atomically(path, json.dumps(record, sort_keys=True, default=str))

    def job_records(self, model_name: str, key: EntryKey) -> list[dict[str, Any]]:
        """Give the records the jobs of a several-process build saved, in job order (unreadable ones skipped)."""
        records = []
        for path in sorted(self.partial_dir(model_name, key).glob("job-*.json")):
            try:
                records.append(json.loads(path.read_text()))
            except (OSError, json.JSONDecodeError):
                continue
        return records

    def shard_dim(self, model_name: str, key: EntryKey, plan: ShardPlan) -> int | None:
        """Give the embedding width of the first finished shard, or None when none is finished."""
        for index in sorted(plan.done):
            try:
                _, shapes, _ = read_safetensors_header(self._shard_path(self.partial_dir(model_name, key), index))
            except CorruptEntry:
                continue
            return int(shapes["embeddings"][1])
        return None

    @staticmethod
    def _shard_path(pdir: Path, index: int) -> Path:
        return pdir / f"shard-{index:06d}.safetensors"

    def shard_path(self, model_name: str, key: EntryKey, index: int) -> Path:
        """Give the file of one shard of an entry being built (it may not exist yet)."""
        return self._shard_path(self.partial_dir(model_name, key), index)

    def _shard_ok(self, pdir: Path, plan: ShardPlan, index: int) -> bool:
        """Tell whether a shard is finished: there, holding this shard's rows, and passing its checksums (the data's
        included: reading a shard costs far less than computing it again, and a damaged one must not be merged)."""
        path = self._shard_path(pdir, index)
        try:
            identity = _file_identity(path)
        except OSError:
            return False
        checked = self._checked_shards.get(path)
        if checked is None or checked[0] != identity:
            try:
                header = read_header(path)
                shape = header.read_tensors()["embeddings"].shape if "embeddings" in header.tensors else (None,)
                checked = (identity, header.metadata.get("start"), shape[0])
            except CorruptEntry as exc:
                self._warn(f"cache shard {path} cannot be used: {exc}; computing it again")
                checked = (identity, None, None)
            self._checked_shards[path] = checked
        start, stop = plan.bounds(index)
        return checked[1] == start and checked[2] == stop - start

    def write_shard(self, model_name: str, key: EntryKey, plan: ShardPlan, index: int, embeddings: np.ndarray) -> None:
        """Write one finished shard atomically and mark it done."""
        start, stop = plan.bounds(index)
        if embeddings.shape[0] != stop - start:
            raise ValueError(f"shard {index} expects {stop - start} rows, got {embeddings.shape[0]}")
        path = self._shard_path(self.partial_dir(model_name, key), index)
        write_safetensors(
            path,
            {"embeddings": np.asarray(embeddings, dtype=np.float32)},
            {"start": start, "stop": stop, "key_digest": key.digest},
        )
        with contextlib.suppress(OSError):  # written from memory just now: no need to read it back to trust it
            self._checked_shards[path] = (_file_identity(path), start, stop - start)
        plan.done.append(index)

    def iter_shards(self, model_name: str, key: EntryKey, plan: ShardPlan) -> Iterator[np.ndarray]:
        """Yield the embeddings of every shard in order (all must be done), each checked against its checksums.

        Raises:
            WorkError: a shard is damaged; it was reported and removed, so that running the command again
                computes it again (the other shards are kept).
        """
        pdir = self.partial_dir(model_name, key)
        for index in range(plan.num_shards):
            path = self._shard_path(pdir, index)
            start, stop = plan.bounds(index)
            try:
                header = read_header(path)
                embeddings = header.read_tensors().get("embeddings")
                if header.metadata.get("start") != start or embeddings is None or embeddings.shape[0] != stop - start:
                    raise CorruptEntry(f"it does not hold rows {start} to {stop}")
            except CorruptEntry as exc:
                self._warn(f"cache shard {path} cannot be used: {exc}; removed it")
                path.unlink(missing_ok=True)
                self._checked_shards.pop(path, None)
                raise WorkError(
                    f"shard {index} of {pdir} cannot be merged: {exc}, so it was removed; "
                    "run the same command again to compute it again (the other shards are kept)"
                ) from None
            yield embeddings

    def finish(
        self,
        model_name: str,
        key: EntryKey,
        plan: ShardPlan,
        *,
        labels: np.ndarray,
        ids: np.ndarray,
        metadata: dict[str, Any],
    ) -> CachedEmbeddings:
        """Join the shards into the entry file (atomic rename), remove the shards, give the entry.

        The shards are streamed into the file one at a time, so the memory this takes does not grow with
        the number of rows.
        """
        if not plan.rows:
            return self.write_entry(model_name, key, embeddings=np.zeros((0, 0), np.float32), labels=labels, ids=ids, metadata=metadata)
        shards = self.iter_shards(model_name, key, plan)
        first = next(shards)  # gives the dimension; read once, then written first
        return self._write_entry(model_name, key, itertools.chain([first], shards), plan.rows, int(first.shape[1]),
                                 labels=labels, ids=ids, metadata=metadata)

    def write_entry(
        self,
        model_name: str,
        key: EntryKey,
        *,
        embeddings: np.ndarray,
        labels: np.ndarray,
        ids: np.ndarray,
        metadata: dict[str, Any],
    ) -> CachedEmbeddings:
        """Write a complete entry atomically (and drop its shards), give it back."""
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2:
            raise ValueError("embeddings, labels and ids must have one row per sample")
        rows, dim = embeddings.shape
        return self._write_entry(model_name, key, iter([embeddings]), rows, dim, labels=labels, ids=ids, metadata=metadata)

    def _write_entry(
        self,
        model_name: str,
        key: EntryKey,
        embeddings: Iterator[np.ndarray],
        rows: int,
        dim: int,
        *,
        labels: np.ndarray,
        ids: np.ndarray,
        metadata: dict[str, Any],
    ) -> CachedEmbeddings:
        """Stream the (rows, dim) embeddings, given in row chunks, into the entry file with labels, ids and metadata."""
        labels, ids = np.asarray(labels, dtype=np.int64), np.asarray(ids, dtype=np.int64)
        if len(labels) != rows or len(ids) != rows:
            raise ValueError("embeddings, labels and ids must have one row per sample")
        meta = {
            **metadata,
            "schema_version": SCHEMA_VERSION,
            "key": json.loads(canonical_json(key.to_dict())),
            "key_digest": key.digest,
            "rows": rows,
            "dim": dim,
            "created": metadata.get("created") or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        path = self.entry_path(model_name, key)
        write_safetensors_streamed(
            path,
            [
                ("embeddings", np.dtype(np.float32), (rows, dim), embeddings),
                ("labels", np.dtype(np.int64), (rows,), iter([labels])),
                ("ids", np.dtype(np.int64), (rows,), iter([ids])),
            ],
            meta,
        )
        pdir = self.partial_dir(model_name, key)
        if pdir.exists():
            shutil.rmtree(pdir, ignore_errors=True)
        return CachedEmbeddings(path=path, metadata=meta, rows=rows, dim=dim)

    # ----- names and resolutions -----------------------------------------------------------
    def _name_path(self, name: str) -> Path:
        return self.root / "names" / f"{slug(name)}.json"

    def save_name(self, name: str, spec: dict[str, Any]) -> Path:
        """Save a model spec under a short name that every later command accepts as a model."""
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            # the name comes from --name, or from --model when importing arrays (which saves the model under it)
            raise UsageError(
                f"{name!r} cannot name a saved model (--name, or --model with --from-array): use letters, digits, '.', '_' and '-'"
            )
        path = self._name_path(name)
        write_text_atomically(path, json.dumps({**spec, "name": name}, indent=2, sort_keys=True))
        return path

    def load_name(self, name: str) -> dict[str, Any] | None:
        """Give the spec saved under a name, or None when the name is not registered."""
        path = self._name_path(name)
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UsageError(f"saved model name file {path} is damaged ({exc}); register it again with embed --name {name}") from exc
        return data

    def list_names(self) -> list[str]:
        """Give the registered model names."""
        folder = self.root / "names"
        return sorted(p.stem for p in folder.glob("*.json")) if folder.exists() else []

    def memo_get(self, memo_key: str) -> dict[str, Any] | None:
        """Give a memoised resolution, or None."""
        path = self.root / "resolved.json"
        try:
            return json.loads(path.read_text()).get(memo_key)
        except (OSError, json.JSONDecodeError):
            return None

    def memo_put(self, memo_key: str, value: dict[str, Any]) -> None:
        """Memoise a resolution (best effort: a failure to write only costs time later)."""
        path = self.root / "resolved.json"
        try:
            data = json.loads(path.read_text()) if path.exists() else {}
        except (OSError, json.JSONDecodeError):
            data = {}
        data[memo_key] = value
        with contextlib.suppress(OSError):
            write_text_atomically(path, json.dumps(data))
