"""The embedding cache and the files stitchcli writes: checksummed safetensors, atomic writes, file locks.

    from stitchcli.store import EmbeddingStore, EntryKey

    store = EmbeddingStore()                      # $STITCHCLI_CACHE, else ~/.cache/stitchcli
    entry = store.lookup(model_name, key)         # a complete, checked entry, or None

Modules, one job each:

- :mod:`~stitchcli.store.embedding_store`: :class:`EmbeddingStore`, the cache's layout, entries, shards being
  built, saved model names.
- :mod:`~stitchcli.store.keys`: :class:`EntryKey`, what identifies an entry; canonical JSON and file-safe names.
- :mod:`~stitchcli.store.safetensors_io`: the safetensors reader and the one writer, with checksums.
- :mod:`~stitchcli.store.shards`: :class:`ShardPlan`, how an entry's rows are cut into resumable shards.
- :mod:`~stitchcli.store.atomic`: writing through a temporary file and a rename.
- :mod:`~stitchcli.store.locks`: :func:`file_lock`, taking turns on a lock file.

Only numpy is imported here: a cache hit never pays for importing torch.
"""

from __future__ import annotations

from stitchcli.store.atomic import atomic_file, is_written_through, remove_interrupted_writes, write_text_atomically
from stitchcli.store.embedding_store import CachedEmbeddings, DamagedEntry, EmbeddingStore, default_cache_dir
from stitchcli.store.keys import SCHEMA_VERSION, EntryKey, canonical_json, slug
from stitchcli.store.locks import file_lock
from stitchcli.store.safetensors_io import (
    CHECKSUM_ALGORITHM,
    CHECKSUM_FIELD,
    METADATA_KEY,
    CorruptEntry,
    SafetensorsHeader,
    TensorSlot,
    read_header,
    read_safetensors_header,
    write_safetensors,
    write_safetensors_streamed,
)
from stitchcli.store.shards import ShardPlan

__all__ = [
    "CHECKSUM_ALGORITHM",
    "CHECKSUM_FIELD",
    "METADATA_KEY",
    "SCHEMA_VERSION",
    "CachedEmbeddings",
    "CorruptEntry",
    "DamagedEntry",
    "EmbeddingStore",
    "EntryKey",
    "SafetensorsHeader",
    "ShardPlan",
    "TensorSlot",
    "atomic_file",
    "canonical_json",
    "default_cache_dir",
    "file_lock",
    "is_written_through",
    "read_header",
    "read_safetensors_header",
    "remove_interrupted_writes",
    "slug",
    "write_safetensors",
    "write_safetensors_streamed",
    "write_text_atomically",
]
