"""Embeddings computed elsewhere (npy or safetensors), imported as a model's cache entry."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from stitchcli.data.base import DatasetSpec, SplitData
from stitchcli.embedding.encode import entry_metadata
from stitchcli.encoders.base import ModelSpec
from stitchcli.errors import UsageError
from stitchcli.store import CachedEmbeddings, EmbeddingStore, EntryKey

if TYPE_CHECKING:
    pass


def read_array(path: Path) -> np.ndarray:
    """Give the 2-D float array stored in an npy or safetensors file (UsageError if it is not one)."""
    if not path.is_file():
        raise UsageError(f"array file {str(path)!r} does not exist: pass an .npy or .safetensors file")
    try:
        if path.suffix == ".npy":
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        elif path.suffix == ".safetensors":
            arr = _read_safetensors(path)
        else:
            raise UsageError(f"cannot import {str(path)!r}: --from-array reads .npy or .safetensors files")
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"cannot read array file {str(path)!r}: {type(exc).__name__}: {exc}") from exc
    if arr.ndim != 2 or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise UsageError(f"array file {str(path)!r} holds shape {arr.shape} {arr.dtype}: expected a 2-D real-valued array (rows x dim)")
    return arr


def _read_safetensors(path: Path) -> np.ndarray:
    """Give the tensor named ``embeddings`` (or the only one) of a safetensors file, through torch: torch writes
    bfloat16 (and float8) tensors, which numpy has no type for, so those become float32."""
    import torch
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        names = list(f.keys())
        if "embeddings" not in names and len(names) != 1:
            raise UsageError(f"{path} holds tensors {sorted(names)}: name the one to import 'embeddings'")
        tensor = f.get_tensor("embeddings" if "embeddings" in names else names[0])
    if tensor.is_floating_point() and tensor.dtype not in (torch.float16, torch.float32, torch.float64):
        tensor = tensor.float()
    return tensor.numpy()


def import_array(
    store: EmbeddingStore,
    spec: ModelSpec,
    data: DatasetSpec,
    split: SplitData,
    array_path: Path,
    key: EntryKey,
) -> tuple[CachedEmbeddings, bool]:
    """Import embeddings computed elsewhere as the cache entry of an array model; give (entry, cache hit)."""
    from stitchcli.fingerprint import file_sha256

    if not array_path.is_file():
        raise UsageError(f"array file {str(array_path)!r} is not a file: pass an .npy or .safetensors file")
    digest = file_sha256(array_path)
    existing = store.lookup(spec.storage_name, key)
    if existing is not None and existing.metadata.get("array_sha256") == digest:
        return existing, True
    arr = read_array(array_path)
    if arr.shape[0] != split.num_rows_in_split:
        raise UsageError(
            f"array {str(array_path)!r} has {arr.shape[0]} rows but split {split.split!r} of "
            f"{data.name} has {split.num_rows_in_split}: give one row per split row, in split order"
        )
    embeddings = np.asarray(arr[split.ids], dtype=np.float32)
    if not np.isfinite(embeddings).all():
        raise UsageError(f"array {str(array_path)!r} holds NaN or infinite values")
    metadata = entry_metadata(
        spec,
        data,
        split,
        preprocessing={"imported_from": str(array_path.resolve())},
        extra={"array_sha256": digest, "seconds": 0.0},
    )
    entry = store.write_entry(spec.storage_name, key, embeddings=embeddings, labels=split.labels, ids=split.ids, metadata=metadata)
    return entry, False


