"""Finished shards of an unfinished build, taken over by the build of the same rows in a changed dataset.

A cache entry's key holds the dataset's fingerprint, so removing a bad image from a folder (or a row
from a table) makes a new entry, and the shards a failed run finished for the old one would be computed
again. Each one-process build therefore records beside its shards (``rows.json`` in its ``.partial``
folder) a digest of the rows each shard holds: which files (path and size) or which input cells. A new
build of the same model, dataset path, split, columns and subset takes over (hard-links) every finished
shard of an earlier build whose digest is the same at the same place; a shard's embeddings depend on
its rows' inputs and on the model only. Shards after a removed row hold other rows and are computed
again. Sources that cannot name their rows cheaply (hub and ``save_to_disk`` datasets) record nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from stitchcli.data.base import SplitData
from stitchcli.store import EmbeddingStore, EntryKey, ShardPlan, slug, write_text_atomically

ROWS_FILE = "rows.json"


def shard_digests(split: SplitData, plan: ShardPlan) -> list[str] | None:
    """Give one digest per shard of the rows it holds, or None when the split cannot name its rows."""
    if split.row_keys is None:
        return None
    keys = split.row_keys(split.ids.tolist())
    digests = []
    for index in range(plan.num_shards):
        start, stop = plan.bounds(index)
        digest = hashlib.sha256(f"{stop - start}\n".encode())
        for row_key in keys[start:stop]:
            digest.update(row_key.encode("utf-8", "surrogatepass") + b"\n")
        digests.append(digest.hexdigest())
    return digests


def _identity(key: dict[str, Any]) -> dict[str, Any]:
    """Give what two builds must share for their shards to be interchangeable: the key less the data's hash."""
    return {k: v for k, v in key.items() if k != "dataset_fingerprint"}


def reuse_finished_shards(
    store: EmbeddingStore, model_name: str, key: EntryKey, split: SplitData, plan: ShardPlan, *, take_over: bool = True
) -> int:
    """Record this build's shard rows and (``take_over``) take over the matching finished shards of earlier builds;
    give the rows taken over.

    ``plan.done`` is brought up to date. Call it from the one process that builds the entry, holding its lock.
    """
    digests = shard_digests(split, plan)
    if digests is None:
        return 0
    ours = store.partial_dir(model_name, key)
    record = {"key": key.to_dict(), "shard_rows": plan.shard_rows, "shards": digests}
    write_text_atomically(ours / ROWS_FILE, json.dumps(record))
    done = set(plan.done)
    wanted = {i for i in range(plan.num_shards) if i not in done} if take_over else set()
    taken = 0
    for other_dir in sorted(ours.parent.glob(f"{slug(key.split)}-*.partial")):
        if not wanted:
            break
        if other_dir == ours:
            continue
        other = _read_record(other_dir)
        if other is None or other["shard_rows"] != plan.shard_rows or _identity(other["key"]) != _identity(record["key"]):
            continue
        try:
            other_key = EntryKey(**{k: v for k, v in other["key"].items() if k != "schema_version"})
        except TypeError:  # written by another version of stitchcli
            continue
        other_plan = store.read_plan(model_name, other_key, None)  # its finished shards, each checked
        if other_plan is None:
            continue
        for index in sorted(wanted & set(other_plan.done)):
            if index < len(other["shards"]) and other["shards"][index] == digests[index]:
                if _link(store.shard_path(model_name, other_key, index), store.shard_path(model_name, key, index)):
                    wanted.discard(index)
                    taken += plan.rows_in([index])
    if taken:
        checked = store.read_plan(model_name, key, split.ids)  # the shards taken over, checked as this build's own
        plan.done[:] = checked.done if checked is not None else plan.done
    return taken


def _read_record(partial_dir: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((partial_dir / ROWS_FILE).read_text())
    except (OSError, ValueError):
        return None
    ok = (
        isinstance(record, dict)
        and isinstance(record.get("key"), dict)
        and isinstance(record.get("shard_rows"), int)
        and isinstance(record.get("shards"), list)
    )
    return record if ok else None


def _link(source: Path, target: Path) -> bool:
    """Give whether ``target`` now holds ``source``'s bytes (a hard link, else a copy renamed into place)."""
    with contextlib.suppress(FileNotFoundError):
        target.unlink()
    try:
        os.link(source, target)
        return True
    except FileNotFoundError:
        return False  # the other build finished (or was removed) meanwhile
    except OSError:
        pass  # a file system without hard links
    temporary = target.with_name(f".{target.name}.copy")
    try:
        shutil.copyfile(source, temporary)
        os.replace(temporary, target)
        return True
    except OSError:
        with contextlib.suppress(OSError):
            temporary.unlink()
        return False
