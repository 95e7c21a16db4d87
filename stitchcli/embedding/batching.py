"""Batches: their size, slicing a batch that runs out of memory, loading inputs beside or between forward passes, shard order."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

import numpy as np

from stitchcli.data.base import SplitData
from stitchcli.embedding.options import EmbedOptions
from stitchcli.encoders.base import ModelSpec

if TYPE_CHECKING:
    pass


def default_batch_size(device_type: str) -> int:
    """Give the batch size used when --batch-size is not given.

    CPU: 32. Throughput is flat above about 32 rows on the CPU (the cores are busy at that size already)
    and memory is plentiful, so a larger batch only delays the first shard and the progress bar.
    GPU (cuda, mps): 256. Inference keeps no activations for a backward pass, so 256 rows of a base-size
    model (ViT-B/16 at 224 px, BERT-base at 512 tokens) fit in a few GiB in fp32, and small models need
    batches this large to keep a GPU busy. A batch that does not fit is not an error: ``encode_split``
    encodes it in smaller slices (see :func:`decay_batch_step`). 256 also divides the default shard
    size (1024), so the shards keep their size.
    """
    return 256 if device_type in ("cuda", "mps") else 32


def decay_batch_step(batch_size: int) -> int:
    """Give the next smaller batch to try after running out of memory at ``batch_size`` (0 after 1).

    timm's ``timm.utils.decay_batch_step`` with two steps per power of two (256, 192, 128, 96, 64, 48,
    32, 24, 16, 12, 8, 6, 4, 3, 2, 1), written out so a text model's run need not import timm.
    """
    if batch_size <= 1:
        return 0
    base = 1 << (batch_size - 1).bit_length() - 1  # the largest power of two below batch_size
    step = max(base // 2, 1)
    return base + (batch_size - base - 1) // step * step


def batch_rows(batch: Any) -> int | None:
    """Give the rows of a collated batch (a tensor, or a mapping or sequence of tensors), None if unknown."""
    shape = getattr(batch, "shape", None)
    if shape is not None and len(shape):
        return int(shape[0])
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else ()
    for value in values:
        rows = batch_rows(value)
        if rows is not None:
            return rows
    return None


def slice_batch(batch: Any, start: int, stop: int, rows: int) -> Any:
    """Give rows [start, stop) of a collated batch: each tensor of ``rows`` rows sliced along dim 0."""
    shape = getattr(batch, "shape", None)
    if shape is not None and len(shape) and shape[0] == rows:
        return batch[start:stop]
    if isinstance(batch, Mapping):
        return {key: slice_batch(value, start, stop, rows) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(slice_batch(value, start, stop, rows) for value in batch)
    return batch


@dataclass
class MicroBatch:
    """The largest slice of a batch that fitted in memory so far, shared by the splits one encoder encodes.

    ``size`` None: no batch has run out of memory yet (batches are encoded whole).
    """

    size: int | None = None


def free_memory(device: Any) -> None:
    """Give back what a failed forward pass left allocated (its tensors are garbage once its frames are)."""
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


def out_of_memory_hint(spec: ModelSpec, device: Any) -> str:
    """Give the one-line WorkError message for a model that runs out of memory on one row."""
    fixes = ["a smaller model"]
    if spec.precision == "fp32":
        fixes.append("--precision bf16" if device.type == "cpu" else "--precision bf16 (or fp16)")
    fixes.append("--device cpu" if device.type != "cpu" else "a machine with more memory")
    return (
        f"out of memory encoding with {spec.name} on {device}, even one row at a time: use {', '.join(fixes[:-1])} "
        f"or {fixes[-1]}; finished shards are kept, so the same command resumes"
    )


@dataclass(frozen=True)
class Loading:
    """How a split's inputs are read, decoded and collated: ``workers`` loader processes that run beside
    the model, or (0) the main process between batches, images split among ``threads`` threads."""

    workers: int
    threads: int = 1

    def describe(self) -> str:
        if self.workers:
            return f"{self.workers} worker process{'es' if self.workers > 1 else ''}"
        return "main process" + (f", {self.threads} threads" if self.threads > 1 else "")


def choose_loading(num_workers: int | None, device_type: str, modality: str) -> Loading:
    """Give the loading of ``--num-workers`` (None: the default for this device).

    Beside a GPU the CPU is free: loader processes (CPU count - 1, at most 8) decode and prefetch while
    the GPU works. On the CPU the model's threads already use every core, so a loader process can only
    take turns with them, and a preempted thread stalls its partners at the next barrier; there the
    default is the main process, which loads each batch between two forward passes with as many threads
    as the model has (Pillow decodes and resizes outside the GIL). On 2 cores, ViT-S/16 on 500x375 JPEGs:
    docs/PERFORMANCE.md. ``--num-workers 0`` chooses that, N > 0 N loader processes.
    """
    import torch

    if num_workers is None:
        num_workers = 0 if device_type == "cpu" else min(8, max(0, (os.cpu_count() or 1) - 1))
    threads = max(1, torch.get_num_threads()) if num_workers == 0 and modality == "image" else 1
    return Loading(num_workers, threads)


def batches_in_threads(
    split: SplitData, batches: list[list[int]], collate: Callable[[list[Any]], Any], threads: int, *, per_part: bool = True
) -> Iterable[Any]:
    """Give the collated batches, each loaded in the main process with its rows split among ``threads``
    threads. With ``per_part`` (a collator that treats each input alone, as timm's and open_clip's
    transforms do) every thread reads and collates its contiguous part and the parts are joined in order;
    otherwise (an image processor may pad to the largest image of the batch) the threads only read and
    decode, and the whole batch is collated once."""
    from concurrent.futures import ThreadPoolExecutor

    def load(positions: list[int]) -> Any:
        inputs = split.get_inputs(positions)
        return collate(inputs) if per_part else inputs

    with ThreadPoolExecutor(threads, thread_name_prefix="stitchcli-load") as pool:
        for positions in batches:
            size = -(-len(positions) // threads)
            parts = list(pool.map(load, [positions[i : i + size] for i in range(0, len(positions), size)]))
            yield join_parts(parts) if per_part else collate([item for part in parts for item in part])


def join_parts(parts: list[Any]) -> Any:
    """Join collated parts of one batch along the rows: tensors, or mappings of tensors, key by key."""
    import torch

    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    if isinstance(first, Mapping):
        joined = {key: join_parts([part[key] for part in parts]) for key in first}
        return type(first)(joined) if type(first) is not dict else joined
    raise TypeError(f"cannot join collated parts of type {type(first).__name__}")


class SplitRows:
    """A map-style dataset over split positions whose batches are fetched in one call."""

    def __init__(self, split: SplitData):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitems__(self, positions: list[int]) -> list[Any]:
        return self.split.get_inputs(positions)

    def __getitem__(self, position: int) -> Any:
        return self.split.get_inputs([position])[0]


def shard_order(split: SplitData, start: int, stop: int) -> np.ndarray:
    """Give the positions of one shard in the order they are encoded: row order for images; for text,
    longest first (by characters, ties in row order), so each batch pads its texts to similar lengths and
    little compute goes to padding. The encoded rows are put back in row order before the shard is written.
    """
    positions = np.arange(start, stop, dtype=np.int64)
    if split.modality != "text":
        return positions
    lengths = np.array([len(text) for text in split.get_inputs(positions.tolist())], dtype=np.int64)
    return positions[np.argsort(-lengths, kind="stable")]


def rows_per_shard(options: EmbedOptions, batch_size: int, rows: int, jobs: int) -> int:
    """Give the rows per shard: whole batches, and for several jobs small enough that each job gets shards."""
    # Shards hold whole batches, so a resumed run cuts the same batches as an uninterrupted one
    # (slices made after running out of memory are cut inside a batch, so they change nothing here).
    whole = max(batch_size, (options.shard_rows + batch_size - 1) // batch_size * batch_size)
    if jobs == 1:
        return whole
    # at least 4 shards per job where batches allow, so the jobs' contiguous runs of shards come out even
    per_shard = max(1, (rows + 4 * jobs - 1) // (4 * jobs))
    return min(whole, (per_shard + batch_size - 1) // batch_size * batch_size)


