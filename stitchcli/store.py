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

Writes are resumable: rows are encoded in fixed shards, each written to a temporary name and
renamed into place, and the final file is assembled under a temporary name and renamed, so a
killed run never leaves a file that looks complete and a rerun starts from the last whole shard.
Only numpy and safetensors are imported here: a cache hit never pays for importing torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from stitchcli.errors import UsageError

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
    """A cache file that cannot be trusted (unreadable, truncated, or made for another key)."""


def read_safetensors_header(path: Path) -> tuple[dict[str, Any], dict[str, tuple[int, ...]], dict[str, str]]:
    """Give (metadata document, tensor shapes, tensor dtypes) of a safetensors file, or raise CorruptEntry."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            raw = f.metadata() or {}
            shapes: dict[str, tuple[int, ...]] = {}
            dtypes: dict[str, str] = {}
            for name in f.keys():
                sl = f.get_slice(name)
                shapes[name] = tuple(sl.get_shape())
                dtypes[name] = str(sl.get_dtype())
    except Exception as exc:  # safetensors raises several types for a damaged header
        raise CorruptEntry(f"unreadable safetensors file ({type(exc).__name__}: {exc})") from exc
    if METADATA_KEY not in raw:
        raise CorruptEntry("no stitchcli metadata in the file")
    try:
        meta = json.loads(raw[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise CorruptEntry(f"metadata is not valid JSON ({exc})") from exc
    return meta, shapes, dtypes


def _check_entry(path: Path, key: EntryKey) -> CachedEmbeddings:
    """Give the entry at ``path`` if it is whole and made for ``key``; else raise CorruptEntry."""
    meta, shapes, dtypes = read_safetensors_header(path)
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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _atomic_file(path: Path) -> Iterator[str]:
    """Give a temporary path beside ``path`` to write; then fsync it, give it the permissions a plain open()
    would (mkstemp makes 0600) and rename it onto ``path``. On any failure the temporary file is removed, so
    nothing that looks complete is left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, Any]) -> None:
    """Write tensors atomically: a temporary file in the same folder, fsync, then rename."""
    from safetensors.numpy import save_file

    with _atomic_file(path) as tmp:
        save_file(
            {k: np.ascontiguousarray(v) for k, v in tensors.items()},
            tmp,
            metadata={METADATA_KEY: json.dumps(metadata, sort_keys=True, default=str)},
        )


_SAFETENSORS_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.int64): "I64"}


def write_safetensors_streamed(
    path: Path, tensors: list[tuple[str, np.dtype, tuple[int, ...], Iterator[np.ndarray]]], metadata: dict[str, Any]
) -> None:
    """Write a safetensors file whose tensors arrive in row chunks, atomically, never holding a tensor whole.

    ``tensors``: (name, dtype, shape, chunks) with the chunks in row order; the header is written first
    (the format is an 8-byte little-endian header size, the JSON header padded with spaces to 8 bytes,
    then the tensors' bytes back to back), so memory stays at one chunk whatever the number of rows.
    """
    header: dict[str, Any] = {"__metadata__": {METADATA_KEY: json.dumps(metadata, sort_keys=True, default=str)}}
    sizes = [int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize for _, dtype, shape, _ in tensors]
    offset = 0
    for (name, dtype, shape, _), size in zip(tensors, sizes):
        header[name] = {"dtype": _SAFETENSORS_DTYPES[np.dtype(dtype)], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with _atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(len(encoded).to_bytes(8, "little"))
        f.write(encoded)
        for (name, dtype, shape, chunks), size in zip(tensors, sizes):
            written = 0
            for chunk in chunks:
                data = np.ascontiguousarray(chunk, dtype=dtype)
                f.write(data.tobytes())
                written += data.nbytes
            if written != size:
                raise ValueError(f"tensor {name}: {written} bytes written for shape {shape}")


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if missing) while the block runs, waiting for
    any other holder first. POSIX ``flock``; where fcntl does not exist the block runs unlocked."""
    try:
        import fcntl
    except ImportError:  # Windows: one process per entry is the user's to ensure
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
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
        """Give the shard indices job ``job`` (of ``jobs``) computes."""
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
            self._warn(f"cache file {path} cannot be used: {exc}; rebuilding it")
            return None

    def read(self, entry: CachedEmbeddings) -> CachedEmbeddings:
        """Give the entry with its arrays loaded."""
        from safetensors.numpy import load_file

        try:
            tensors = load_file(str(entry.path))
        except Exception as exc:
            raise CorruptEntry(f"cannot read {entry.path}: {exc}") from exc
        entry.embeddings = tensors["embeddings"]
        entry.labels = tensors["labels"]
        entry.ids = tensors["ids"]
        return entry

    # ----- building an entry ---------------------------------------------------------------
    def lock_path(self, model_name: str, key: EntryKey) -> Path:
        """Give the lock file that processes building the same entry take turns on (kept beside the entry)."""
        final = self.entry_path(model_name, key)
        return final.with_name(final.name.replace(".safetensors", ".lock"))

    def read_plan(self, model_name: str, key: EntryKey, ids: np.ndarray) -> ShardPlan | None:
        """Give the plan of an earlier, unfinished build of this entry with its finished shards, or None when
        there is none for these exact rows."""
        pdir = self.partial_dir(model_name, key)
        try:
            existing = json.loads((pdir / "plan.json").read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if not isinstance(existing, dict) or any(existing.get(k) != v for k, v in self._plan_identity(key, ids).items()):
            return None
        if not isinstance(existing.get("shard_rows"), int) or existing["shard_rows"] <= 0:
            return None
        plan = ShardPlan(rows=len(ids), shard_rows=existing["shard_rows"], done=[], jobs=int(existing.get("jobs", 1)))
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
                if jobs > 1 and existing.done and not fresh:
                    made_by = "one process" if existing.jobs == 1 else f"{existing.jobs} jobs"
                    raise UsageError(
                        f"{pdir} holds {len(existing.done)} finished shards made by {made_by}, not {jobs}: "
                        f"run with the same number of shards, or add --force to start over"
                    )
            if pdir.exists():
                shutil.rmtree(pdir)
            pdir.mkdir(parents=True, exist_ok=True)
            plan_file = pdir / "plan.json"
            tmp = plan_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({**self._plan_identity(key, ids), "shard_rows": int(shard_rows), "jobs": int(jobs)}))
            os.replace(tmp, plan_file)
        return ShardPlan(rows=len(ids), shard_rows=int(shard_rows), done=[], jobs=jobs)

    def write_job_record(self, model_name: str, key: EntryKey, job: int, record: dict[str, Any]) -> None:
        """Save what one job of a several-process build reports (device, timings, preprocessing), for the merge."""
        path = self.partial_dir(model_name, key) / f"job-{job:06d}.json"
        with _atomic_file(path) as tmp:
            Path(tmp).write_text(json.dumps(record, sort_keys=True, default=str))

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

    def _shard_ok(self, pdir: Path, plan: ShardPlan, index: int) -> bool:
        path = self._shard_path(pdir, index)
        if not path.exists():
            return False
        start, stop = plan.bounds(index)
        try:
            meta, shapes, _ = read_safetensors_header(path)
        except CorruptEntry:
            return False
        return meta.get("start") == start and shapes.get("embeddings", (None,))[0] == stop - start

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
        plan.done.append(index)

    def iter_shards(self, model_name: str, key: EntryKey, plan: ShardPlan) -> Iterator[np.ndarray]:
        """Yield the embeddings of every shard in order (all must be done)."""
        from safetensors.numpy import load_file

        pdir = self.partial_dir(model_name, key)
        for index in range(plan.num_shards):
            yield load_file(str(self._shard_path(pdir, index)))["embeddings"]

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
            raise UsageError(f"--name {name!r} is not a valid name: use letters, digits, '.', '_' and '-'")
        path = self._name_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**spec, "name": name}, indent=2, sort_keys=True))
        os.replace(tmp, path)
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
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".resolved.", dir=path.parent)
            with os.fdopen(fd, "w") as f:
                json.dump(data, f)
            os.replace(tmp, path)
        except OSError:
            pass
