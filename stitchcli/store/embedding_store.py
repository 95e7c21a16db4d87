"""The embedding cache: one safetensors file per (model, dataset, split), keyed by provenance.

Layout under the cache root::

    embeddings/<model>/<dataset>/<split>-<digest>.safetensors      complete entries
    embeddings/<model>/<dataset>/<split>.<layer>-<digest>.safetensors   one layer's entry (embed --layers)
    embeddings/<model>/<dataset>/<split>-<digest>.partial/          shards of an entry being built
    names/<NAME>.json                                               model specs saved with --name
    resolved.json                                                   memo of name -> spec resolutions

An entry holds the tensors ``embeddings`` (float32, N x D), ``labels`` (int64) and ``ids`` (int64),
and one JSON document in the safetensors metadata under ``stitchcli``. The file name carries a
digest of the key (model spec, dataset fingerprint, split, subset), and the key is checked again
against the metadata on every read, so a file is used only for the exact inputs that produced it.

Every file carries checksums (:mod:`stitchcli.store.safetensors_io`). A cache hit reads the header alone and
checks its digest and the file's size (truncation, header damage, hand edits); the data's digest is checked
wherever the arrays are read (:meth:`EmbeddingStore.read`, resumed shards, the merge). A file that fails is
reported and rebuilt, never used. A file without digests (written before stitchcli wrote them) is rebuilt too:
it cannot be told apart from one whose digests were lost to damage or an edit, and rebuilding costs compute once,
where using a damaged file would silently skew every result made from it.

Writes are resumable: rows are encoded in fixed shards, each written to a temporary name and
renamed into place, and the final file is assembled under a temporary name and renamed, so a
killed run never leaves a file that looks complete and a rerun starts from the last whole shard.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from stitchcli.errors import NotCached, UsageError, WorkError
from stitchcli.store.atomic import write_text_atomically
from stitchcli.store.keys import SCHEMA_VERSION, EntryKey, canonical_json, slug
from stitchcli.store.locks import file_lock
from stitchcli.store.safetensors_io import (
    CorruptEntry,
    read_header,
    read_safetensors_header,
    write_safetensors,
    write_safetensors_streamed,
)
from stitchcli.store.shards import ShardPlan

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



class DamagedEntry(NotCached):
    """A cache entry whose file failed its checks when its arrays were read; it was reported and removed.

    It is a :class:`~stitchcli.errors.NotCached`: the commands that embed on demand embed it again.
    """


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
        """Give the path of the complete entry for a key (a layer's entry names its layer after the split)."""
        stem = slug(key.split) if key.layer is None else f"{slug(key.split)}.{slug(key.layer)}"
        return self.root / "embeddings" / slug(model_name) / slug(key.dataset_id) / f"{stem}-{key.digest}.safetensors"

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
