"""Embedding: dataset rows -> encoder -> cache, resumable, with one summary record per entry."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from stitchcli.data.base import DatasetSpec, SplitData
from stitchcli.encoders.base import ModelSpec
from stitchcli.device import is_out_of_memory
from stitchcli.errors import UsageError, WorkError, out_of_space_as_work_error
from stitchcli.fingerprint import path_identity
from stitchcli.hub import prefer_offline_when_unreachable
from stitchcli.store import CachedEmbeddings, EmbeddingStore, EntryKey, ShardPlan, canonical_json, file_lock, remove_interrupted_writes

if TYPE_CHECKING:
    from stitchcli.distributed import Workers
    from stitchcli.encoders.base import Encoder

DEFAULT_SPLITS = ("train", "test")
DEFAULT_SHARD_ROWS = 1024
_VERSIONED = ("stitchcli", "torch", "timm", "transformers", "open_clip_torch", "datasets", "safetensors", "numpy")


MODEL_OPTIONS = ("weights", "pooling", "max_length", "precision", "revision")
"""embed's options that decide how a model embeds (and so which cache entries it has)."""


@dataclass(frozen=True)
class ModelRef:
    """A model as commands and recipes name it: a model name plus the embed options it is embedded with.

    Attributes:
        name: anything ``embed --model`` accepts (a name saved with ``--name`` carries its own options).
        options: the non-None values of :data:`MODEL_OPTIONS`.
    """

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.options) - set(MODEL_OPTIONS))
        if unknown:
            raise UsageError(f"model {self.name!r}: unknown option {', '.join(unknown)} (use some of {', '.join(MODEL_OPTIONS)})")


@dataclass
class EmbedResult:
    """One row of the embed summary: what was cached where, and how fast."""

    model: str
    dataset: str
    split: str
    rows: int
    dim: int
    seconds: float
    rows_per_s: float | None
    cache_hit: bool
    path: str
    resumed_rows: int = 0
    num_shards: int = 1
    shard_index: int | None = None
    complete: bool = True
    waiting_for_shards: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Give a JSON-ready record."""
        return asdict(self)


@dataclass
class EmbedOptions:
    """How to run the models; everything here except the seed is outside the cache key."""

    batch_size: int | None = None
    device: str = "auto"
    num_workers: int | None = None
    shard_rows: int = DEFAULT_SHARD_ROWS
    force: bool = False
    limit: int | None = None
    seed: int = 0
    compile: bool = False
    num_shards: int = 1
    shard_index: int | None = None
    merge: bool = False
    trust_remote_code: bool = False  # let a transformers model run the code it ships (auto_map); off: refused


@dataclass
class Reporter:
    """Where embedding reports progress: callbacks the CLI wires to rich, no-ops for library use."""

    warn: Callable[[str], None] = lambda message: None
    info: Callable[[str], None] = lambda message: None
    start: Callable[..., None] = lambda label, total, done, unit="rows": None
    advance: Callable[[int], None] = lambda rows: None
    stop: Callable[[], None] = lambda: None


def library_versions() -> dict[str, str]:
    """Give the versions of the libraries that shape the embeddings (read from metadata, no imports)."""
    versions = {"python": platform.python_version()}
    for dist in _VERSIONED:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def resolve_model_spec(
    store: EmbeddingStore,
    name: str,
    *,
    weights: str | None = None,
    pooling: str | None = None,
    max_length: int | None = None,
    precision: str | None = None,
    seed: int = 0,
    revision: str | None = None,
) -> ModelSpec:
    """Give the spec a model name stands for: a name saved with --name, else the backend registry's.

    A saved name keeps its weights; the run-time options given with it (precision, text pooling and
    length) are applied on top, so they change the cache key as they would for the full name.
    ``precision`` None means the saved spec's own, else fp32. Resolutions are memoised in the cache
    (keyed by the arguments, the backend library versions and the identity of any local file they
    name), so a cache hit needs neither torch nor timm.
    """
    saved = store.load_name(name)
    if saved is not None:
        return _with_options(ModelSpec.from_dict(saved), name, weights=weights, pooling=pooling,
                             max_length=max_length, precision=precision, revision=revision)
    precision = precision or "fp32"
    args = {
        "name": name,
        "weights": weights,
        "pooling": pooling,
        "max_length": max_length,
        "precision": precision,
        "seed": seed,
        "revision": revision,
    }
    memo_key = canonical_json(
        {
            "args": args,
            "versions": library_versions(),
            "name_stat": path_identity(name) if name else None,
            "weights_stat": path_identity(weights) if weights not in (None, "random") else None,
        }
    )
    cached = store.memo_get(memo_key)
    if cached is not None:
        return ModelSpec.from_dict(cached)
    from stitchcli.encoders import resolve_model

    spec = resolve_model(
        name,
        weights=weights,
        pooling=pooling,
        max_length=max_length,
        precision=precision,
        seed=seed,
        revision=revision,
    )
    _refuse_near_miss_of_saved_name(store, name, spec)
    store.memo_put(memo_key, spec.to_dict())
    return spec


def _with_options(
    spec: ModelSpec,
    name: str,
    *,
    weights: str | None,
    pooling: str | None,
    max_length: int | None,
    precision: str | None,
    revision: str | None,
) -> ModelSpec:
    """Give a saved spec with the user's run-time options applied; refuse options that do not apply."""
    from dataclasses import replace

    from stitchcli.encoders import check_model_options

    if weights is not None or revision is not None:
        raise UsageError(
            f"{name!r} is a saved model spec with its own weights: --weights and --revision apply to the "
            f"model it was saved from ({spec.backend}: {spec.source}); save that under another --name"
        )
    if spec.backend == "array":
        if pooling is not None or max_length is not None or precision not in (None, "fp32"):
            raise UsageError(f"{name!r} holds imported arrays: --precision, --pooling and --max-length do not apply")
        return spec
    check_model_options(pooling=pooling, max_length=max_length, precision=precision)
    if (pooling is not None or max_length is not None) and spec.pooling is None:
        raise UsageError(f"--pooling and --max-length apply to text models; {name!r} is {spec.backend}: {spec.source}")
    given = {"precision": precision, "pooling": pooling, "max_length": max_length}
    return replace(spec, **{field: value for field, value in given.items() if value is not None})


def _check_new_name(store: EmbeddingStore, name: str, spec: ModelSpec, *, force: bool) -> None:
    """Refuse a name for --name or --from-array that would hide a model or silently replace a saved one."""
    from stitchcli.encoders import known_model_names

    saved = store.load_name(name)
    if saved is not None:
        old = {k: v for k, v in saved.items() if k != "name"}
        new = {k: v for k, v in spec.to_dict().items() if k != "name"}
        if old != new and not force:
            raise UsageError(
                f"the name {name!r} is already saved for {saved.get('backend')}: {saved.get('source')}; "
                "choose another name, or pass --force to replace it"
            )
        return
    arch = name.split(".", 1)[0]
    taken = name in known_model_names() or Path(name).expanduser().exists()
    if not taken and "-" not in arch and arch == arch.lower():
        import timm

        taken = timm.is_model(arch)
    if taken:
        raise UsageError(f"the name {name!r} already means a model (or a path): choose another name so both stay usable")


def _refuse_near_miss_of_saved_name(store: EmbeddingStore, name: str, spec: ModelSpec) -> None:
    """Raise a UsageError when a bare name headed for the hub is a typo of a name saved with --name.

    Only bare names (no '/', no prefix) that resolved to a hub id are checked: an explicit
    ``hf:`` id or a local folder is taken as written.
    """
    import difflib

    if spec.backend != "transformers" or "/" in name or ":" in name or Path(spec.source).exists():
        return
    close = difflib.get_close_matches(name, store.list_names(), n=3, cutoff=0.8)
    if close:
        raise UsageError(
            f"unknown model {name!r}; did you mean the saved name {' or '.join(repr(c) for c in close)}? "
            f"(saved names: {', '.join(store.list_names())}; for a hub id write hf:{name})"
        )


def entry_key(
    spec: ModelSpec, data: DatasetSpec, split: str, *, limit: int | None, seed: int
) -> EntryKey:
    """Give the cache key of a model's embeddings of one split."""
    from stitchcli.data import dataset_fingerprint

    return EntryKey(
        model=spec.key(),
        dataset_id=data.dataset_id,
        dataset_fingerprint=dataset_fingerprint(data, split),
        split=split,
        limit=limit,
        limit_seed=seed if limit is not None else None,
        columns={"input": list(data.input_columns), "label": data.label_column},
    )


def _default_batch_size(device_type: str) -> int:
    """Give the batch size used when --batch-size is not given.

    CPU: 32. Throughput is flat above about 32 rows on the CPU (the cores are busy at that size already)
    and memory is plentiful, so a larger batch only delays the first shard and the progress bar.
    GPU (cuda, mps): 256. Inference keeps no activations for a backward pass, so 256 rows of a base-size
    model (ViT-B/16 at 224 px, BERT-base at 512 tokens) fit in a few GiB in fp32, and small models need
    batches this large to keep a GPU busy. A batch that does not fit is not an error: ``encode_split``
    encodes it in smaller slices (see :func:`_decay_batch_step`). 256 also divides the default shard
    size (1024), so the shards keep their size.
    """
    return 256 if device_type in ("cuda", "mps") else 32


def _decay_batch_step(batch_size: int) -> int:
    """Give the next smaller batch to try after running out of memory at ``batch_size`` (0 after 1).

    timm's ``timm.utils.decay_batch_step`` with two steps per power of two (256, 192, 128, 96, 64, 48,
    32, 24, 16, 12, 8, 6, 4, 3, 2, 1), written out so a text model's run need not import timm.
    """
    if batch_size <= 1:
        return 0
    base = 1 << (batch_size - 1).bit_length() - 1  # the largest power of two below batch_size
    step = max(base // 2, 1)
    return base + (batch_size - base - 1) // step * step


def _batch_rows(batch: Any) -> int | None:
    """Give the rows of a collated batch (a tensor, or a mapping or sequence of tensors), None if unknown."""
    shape = getattr(batch, "shape", None)
    if shape is not None and len(shape):
        return int(shape[0])
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else ()
    for value in values:
        rows = _batch_rows(value)
        if rows is not None:
            return rows
    return None


def _slice_batch(batch: Any, start: int, stop: int, rows: int) -> Any:
    """Give rows [start, stop) of a collated batch: each tensor of ``rows`` rows sliced along dim 0."""
    shape = getattr(batch, "shape", None)
    if shape is not None and len(shape) and shape[0] == rows:
        return batch[start:stop]
    if isinstance(batch, Mapping):
        return {key: _slice_batch(value, start, stop, rows) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_slice_batch(value, start, stop, rows) for value in batch)
    return batch


@dataclass
class MicroBatch:
    """The largest slice of a batch that fitted in memory so far, shared by the splits one encoder encodes.

    ``size`` None: no batch has run out of memory yet (batches are encoded whole).
    """

    size: int | None = None


def _free_memory(device: Any) -> None:
    """Give back what a failed forward pass left allocated (its tensors are garbage once its frames are)."""
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


def _out_of_memory_hint(spec: ModelSpec, device: Any) -> str:
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


def _batches_in_threads(
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
            yield _join_parts(parts) if per_part else collate([item for part in parts for item in part])


def _join_parts(parts: list[Any]) -> Any:
    """Join collated parts of one batch along the rows: tensors, or mappings of tensors, key by key."""
    import torch

    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    if isinstance(first, Mapping):
        joined = {key: _join_parts([part[key] for part in parts]) for key in first}
        return type(first)(joined) if type(first) is not dict else joined
    raise TypeError(f"cannot join collated parts of type {type(first).__name__}")


class _Rows:
    """A map-style dataset over split positions whose batches are fetched in one call."""

    def __init__(self, split: SplitData):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitems__(self, positions: list[int]) -> list[Any]:
        return self.split.get_inputs(positions)

    def __getitem__(self, position: int) -> Any:
        return self.split.get_inputs([position])[0]


def _metadata(
    spec: ModelSpec,
    data: DatasetSpec,
    split: SplitData,
    *,
    preprocessing: dict[str, Any],
    extra: dict[str, Any],
) -> dict[str, Any]:
    return {
        "model": spec.to_dict(),
        "backend": spec.backend,
        "pooling": spec.pooling,
        "precision": spec.precision,
        "preprocessing": preprocessing,
        "dataset": {**data.to_dict(), "id": data.dataset_id, "fingerprint": split.fingerprint},
        "split": split.split,
        "modality": split.modality,
        "class_names": list(split.class_names),
        "input_columns": list(split.input_columns),
        "label_column": split.label_column,
        "rows_in_split": int(split.num_rows_in_split),
        "versions": library_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }


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


def _shard_rows(options: EmbedOptions, batch_size: int, rows: int, jobs: int) -> int:
    """Give the rows per shard: whole batches, and for several jobs small enough that each job gets shards."""
    # Shards hold whole batches, so a resumed run cuts the same batches as an uninterrupted one
    # (slices made after running out of memory are cut inside a batch, so they change nothing here).
    whole = max(batch_size, (options.shard_rows + batch_size - 1) // batch_size * batch_size)
    if jobs == 1:
        return whole
    # at least 4 shards per job where batches allow, so the jobs' contiguous runs of shards come out even
    per_shard = max(1, (rows + 4 * jobs - 1) // (4 * jobs))
    return min(whole, (per_shard + batch_size - 1) // batch_size * batch_size)


def encode_split(
    store: EmbeddingStore,
    spec: ModelSpec,
    key: EntryKey,
    split: SplitData,
    data: DatasetSpec,
    encoder: "Encoder",
    options: EmbedOptions,
    reporter: Reporter,
    micro: MicroBatch | None = None,
    workers: "Workers | None" = None,
) -> tuple[CachedEmbeddings | None, ShardPlan, int, float]:
    """Encode a split into the cache shard by shard; give (entry, plan, rows resumed, seconds of model work).

    A batch that runs out of memory is encoded again in slices, smaller each time (timm's
    ``decay_batch_step``) until they fit; later batches start at the size that fitted (``micro``, which
    the splits of one encoder share). The rows, their order and the shards are those of whole batches.

    With several ``workers`` this process encodes only its own shards; the entry is None when it is not
    assembled here (under torchrun rank 0 assembles it; an array job, when other jobs' shards are missing).
    """
    from stitchcli.distributed import Workers

    workers = workers or Workers()
    batch_size = options.batch_size or _default_batch_size(encoder.device.type)
    loading = choose_loading(options.num_workers, encoder.device.type, split.modality)
    micro = micro if micro is not None else MicroBatch()
    shard_rows = _shard_rows(options, batch_size, len(split.ids), workers.count)
    plan = store.plan(spec.storage_name, key, split.ids, shard_rows, fresh=options.force, jobs=workers.count)
    if workers.count == 1:  # shards of an earlier build of the same rows (before a bad file was removed) are reused
        from stitchcli.shard_reuse import reuse_finished_shards

        reuse_finished_shards(store, spec.storage_name, key, split, plan, take_over=not options.force)
    mine = plan.job_shards(workers.index)
    # --force with several jobs recomputes this job's shards and leaves the others' alone
    done = set(plan.done)
    todo = mine if options.force and workers.count > 1 else [i for i in mine if i not in done]
    resumed = plan.rows_in(set(mine) - set(todo))
    where = "" if workers.count == 1 else f" (shard {workers.index} of {workers.count})"
    if resumed:
        own = plan.rows_in(mine)
        reporter.info(f"{spec.name} {data.name}/{split.split}{where}: resuming, {resumed} of {own} rows already done")
    job_record = {"job": workers.index, "jobs": workers.count, "rows": plan.rows_in(mine), "host": platform.node(),
                  "device": str(encoder.device), "preprocessing": encoder.preprocessing()}
    if workers.count > 1:  # saved before the first shard, so a job with shards always has its record
        store.write_job_record(spec.storage_name, key, workers.index, {**job_record, "seconds": None, "resumed_rows": resumed})
    reporter.start(f"{spec.name} · {data.name}/{split.split}{where}", resumed + plan.rows_in(todo), resumed)
    try:
        seconds, first_batch, model_seconds = _encode_shards(store, spec, key, split, encoder, plan, todo, batch_size, loading, reporter, micro)
    finally:
        reporter.stop()
    compile_error = getattr(encoder, "compile_error", None)
    if compile_error:
        reporter.warn(f"{spec.name}: torch.compile failed ({compile_error}); the model ran uncompiled")
    record = {
        "device": str(encoder.device),
        "batch_size": batch_size,
        "micro_batch_size": min(batch_size, micro.size or batch_size),  # the slices that fitted in memory
        "batching": "length-sorted within shards" if split.modality == "text" else "row order",
        "loading": loading.describe(),
        "compiled": bool(getattr(encoder, "compiled", False)),
        "seconds": round(seconds, 3),
        "first_batch_seconds": None if first_batch is None else round(first_batch, 3),
        "model_seconds": round(model_seconds, 3),  # of ``seconds``, in the model (the rest: waiting for inputs, writing)
        "resumed_rows": resumed,
    }
    if workers.count == 1:
        metadata = _metadata(spec, data, split, preprocessing=job_record["preprocessing"], extra=record)
        entry = store.finish(spec.storage_name, key, plan, labels=split.labels, ids=split.ids, metadata=metadata)
        return entry, plan, resumed, seconds
    store.write_job_record(spec.storage_name, key, workers.index, {**job_record, **record})
    if workers.distributed:
        workers.barrier()  # every rank has written its shards
        entry = assemble(store, spec, key, split, data) if workers.leader else None
        if workers.leader and entry is None:
            raise UsageError(
                f"rank 0 does not see every rank's shards of {spec.name} on {data.name}/{split.split} in "
                f"{store.partial_dir(spec.storage_name, key)}: all ranks must use one cache folder (--cache-dir on a shared file system)"
            )
        workers.barrier()  # the entry exists before any rank goes on
        return entry, plan, resumed, seconds
    return assemble(store, spec, key, split, data), plan, resumed, seconds


def _encode_shards(
    store: EmbeddingStore,
    spec: ModelSpec,
    key: EntryKey,
    split: SplitData,
    encoder: "Encoder",
    plan: ShardPlan,
    todo: list[int],
    batch_size: int,
    loading: Loading,
    reporter: Reporter,
    micro: MicroBatch,
) -> tuple[float, float | None, float]:
    """Encode the shards ``todo`` and write each as it completes; give (seconds, seconds to the first batch,
    seconds in the model)."""
    import torch
    from torch.utils.data import DataLoader

    orders = {index: shard_order(split, *plan.bounds(index)) for index in todo}
    batches = [order[b : b + batch_size].tolist() for order in orders.values() for b in range(0, len(order), batch_size)]
    loader: Iterable[Any]
    if loading.threads > 1:
        per_part = bool(getattr(encoder, "collates_each_input_alone", False))
        loader = _batches_in_threads(split, batches, encoder.collate, loading.threads, per_part=per_part)
    else:
        loader = DataLoader(
            _Rows(split),
            batch_sampler=batches,
            collate_fn=encoder.collate,
            num_workers=loading.workers if batches else 0,
            persistent_workers=False,
            prefetch_factor=4 if loading.workers and batches else None,
        )

    def encode(batch: Any) -> np.ndarray:
        """Give the float32 embeddings of one collated batch, in slices of ``micro.size`` rows once one did not fit."""
        rows = _batch_rows(batch)
        total = 1 if rows is None else rows  # a batch of unknown rows is encoded whole (it cannot be sliced)
        outputs: list[np.ndarray] = []
        start = 0
        while start < total:
            size = total - start if micro.size is None else min(micro.size, total - start)
            part = batch if size == total else _slice_batch(batch, start, start + size, total)
            try:
                outputs.append(encoder.encode(part).detach().to("cpu", torch.float32).numpy())
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                smaller = _decay_batch_step(size) if rows is not None else 0
                if smaller == 0:
                    raise WorkError(_out_of_memory_hint(spec, encoder.device)) from exc
            else:
                start += size
                continue
            del part  # the failed pass's tensors go with its frames, which left with the exception
            _free_memory(encoder.device)
            if micro.size is None:
                reporter.info(f"out of memory at batch {size} on {encoder.device}: continuing with {smaller}")
            micro.size = smaller
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs, axis=0)

    started = time.perf_counter()
    first_batch: float | None = None  # seconds to the first batch's embeddings: loader start-up, and compilation if any
    in_model = 0.0
    pending: list[np.ndarray] = []
    pending_rows = 0
    shard_iter = iter(todo)
    current = next(shard_iter, None)
    with torch.inference_mode():
        for batch in loader:
            before = time.perf_counter()
            arr = encode(batch)
            in_model += time.perf_counter() - before
            if first_batch is None:
                first_batch = time.perf_counter() - started
            pending.append(arr)
            pending_rows += arr.shape[0]
            reporter.advance(arr.shape[0])
            assert current is not None
            start, stop = plan.bounds(current)
            if pending_rows == stop - start:
                done = np.concatenate(pending, axis=0)
                shard = np.empty_like(done)
                shard[orders[current] - start] = done  # back to row order
                store.write_shard(spec.storage_name, key, plan, current, shard)
                pending, pending_rows = [], 0
                current = next(shard_iter, None)
    return time.perf_counter() - started, first_batch, in_model


def assemble(store: EmbeddingStore, spec: ModelSpec, key: EntryKey, split: SplitData, data: DatasetSpec) -> CachedEmbeddings | None:
    """Join the shards that several jobs wrote into the entry, once all are there; give it, or None while
    shards are missing. Processes take turns on the entry's lock, so only one joins and the others find it."""
    with file_lock(store.lock_path(spec.storage_name, key)):
        plan = store.read_plan(spec.storage_name, key, split.ids)
        if plan is None:  # another job joined it already (the partial folder goes with the join)
            return store.lookup(spec.storage_name, key)
        if plan.todo:
            return None
        records = store.job_records(spec.storage_name, key)
        if not records:
            return None
        first = records[0]
        extra = {k: v for k, v in first.items() if k not in ("job", "jobs", "preprocessing", "rows", "host")}
        extra.update(
            seconds=max(r.get("seconds") or 0.0 for r in records),  # the jobs ran side by side: the slowest one's time
            model_seconds=max(r.get("model_seconds") or 0.0 for r in records),  # the most any one job spent in its model
            resumed_rows=sum(r.get("resumed_rows") or 0 for r in records),
            jobs=[{k: r.get(k) for k in ("job", "host", "device", "rows", "seconds", "resumed_rows")} for r in records],
        )
        metadata = _metadata(spec, data, split, preprocessing=first.get("preprocessing", {}), extra=extra)
        return store.finish(spec.storage_name, key, plan, labels=split.labels, ids=split.ids, metadata=metadata)


def read_array(path: Path) -> np.ndarray:
    """Give the 2-D float array stored in an npy or safetensors file (UsageError if it is not one)."""
    if not path.is_file():
        raise UsageError(f"array file {str(path)!r} does not exist: pass an .npy or .safetensors file")
    try:
        if path.suffix == ".npy":
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        elif path.suffix == ".safetensors":
            from safetensors.numpy import load_file

            tensors = load_file(str(path))
            if "embeddings" in tensors:
                arr = tensors["embeddings"]
            elif len(tensors) == 1:
                arr = next(iter(tensors.values()))
            else:
                raise UsageError(
                    f"{path} holds tensors {sorted(tensors)}: name the one to import 'embeddings'"
                )
        else:
            raise UsageError(f"cannot import {str(path)!r}: --from-array reads .npy or .safetensors files")
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"cannot read array file {str(path)!r}: {type(exc).__name__}: {exc}") from exc
    if arr.ndim != 2 or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise UsageError(f"array file {str(path)!r} holds shape {arr.shape} {arr.dtype}: expected a 2-D real-valued array (rows x dim)")
    return arr


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
    metadata = _metadata(
        spec,
        data,
        split,
        preprocessing={"imported_from": str(array_path.resolve())},
        extra={"array_sha256": digest, "seconds": 0.0},
    )
    entry = store.write_entry(spec.storage_name, key, embeddings=embeddings, labels=split.labels, ids=split.ids, metadata=metadata)
    return entry, False


def parse_splits(values: Sequence[str] | None) -> tuple[list[str], dict[str, str]]:
    """Give (split names, split name -> file path) from ``--split`` values (``NAME`` or ``NAME=PATH``)."""
    names: list[str] = []
    paths: dict[str, str] = {}
    for value in values or DEFAULT_SPLITS:
        if "=" in value:
            split_name, _, path = value.partition("=")
            if not split_name or not path:
                raise UsageError(f"--split {value!r}: write NAME or NAME=PATH (for example test=data/test.csv)")
            paths[split_name] = str(Path(path).expanduser().resolve())
            names.append(split_name)
        else:
            names.append(value)
    if len(set(names)) != len(names):
        raise UsageError(f"--split lists a split twice: {', '.join(names)}")
    return names, paths


def parse_array_files(values: Sequence[str] | None, splits: Sequence[str]) -> dict[str, Path]:
    """Give split -> array file from ``--from-array`` values (``FILE`` for one split, or ``SPLIT=FILE``)."""
    files: dict[str, Path] = {}
    for value in values or ():
        if "=" in value and not Path(value).exists():
            split_name, _, path = value.partition("=")
            files[split_name] = Path(path).expanduser()
        else:
            if len(splits) != 1:
                raise UsageError(
                    "--from-array FILE fits one split; with several splits write --from-array SPLIT=FILE for each"
                )
            files[splits[0]] = Path(value).expanduser()
    unknown = sorted(set(files) - set(splits))
    if unknown:
        raise UsageError(f"--from-array names split(s) {', '.join(unknown)} not given with --split")
    missing = [s for s in splits if s not in files] if files else []
    if missing:
        raise UsageError(f"--from-array has no file for split(s) {', '.join(missing)}: give SPLIT=FILE for each")
    return files


def embed(
    models: Sequence[str],
    dataset: str,
    splits: Sequence[str] | None = None,
    *,
    store: EmbeddingStore,
    options: EmbedOptions | None = None,
    weights: str | None = None,
    pooling: str | None = None,
    max_length: int | None = None,
    precision: str | None = None,
    revision: str | None = None,
    dataset_revision: str | None = None,
    input_column: str | None = None,
    label_column: str | None = None,
    from_array: Sequence[str] | None = None,
    register_as: str | None = None,
    reporter: Reporter | None = None,
) -> list[EmbedResult]:
    """Give one result per (model, split) after making sure each is in the cache.

    A cache hit builds no model and reads no data beyond the cheap fingerprints. A miss loads the
    split (once for all models), builds the model (once for all splits) and encodes the rows in
    resumable shards.
    """
    from stitchcli.data import load_split, resolve_dataset
    from stitchcli.demo import prepare_packaged
    from stitchcli.distributed import check_shard_options, start_workers

    options = options or EmbedOptions()
    reporter = reporter or Reporter()
    dataset = prepare_packaged(store, dataset, models, reporter)
    if not models:
        raise UsageError("no model given: pass --model NAME (a timm name, openclip:ARCH/TAG, a hub id or a local folder)")
    if len(set(models)) != len(models):
        raise UsageError(f"--model lists a model twice: {', '.join(models)}")
    if options.limit is not None and options.limit <= 0:
        raise UsageError(f"--limit must be a positive number of rows, not {options.limit}")
    if options.batch_size is not None and options.batch_size <= 0:
        raise UsageError(f"--batch-size must be positive, not {options.batch_size}")
    if options.num_workers is not None and options.num_workers < 0:
        raise UsageError(f"--num-workers must be 0 (load in the main process) or more, not {options.num_workers}")
    if options.shard_rows <= 0:
        raise UsageError(f"--shard-rows must be positive, not {options.shard_rows}")
    _check_device_options(options.device, precision)
    check_shard_options(options.num_shards, options.shard_index)
    if options.merge and (options.force or options.num_shards > 1 or from_array):
        raise UsageError("--merge joins finished array jobs' shards: it takes no --force, --num-shards or --from-array")
    if options.num_shards > 1 and from_array:
        raise UsageError("--num-shards splits the encoding of rows: --from-array does not apply")
    if register_as and len(models) != 1:
        raise UsageError("--name registers one model: give exactly one --model with it")
    split_names, split_paths = parse_splits(splits)
    arrays = parse_array_files(from_array, split_names)
    if arrays and len(models) != 1:
        raise UsageError("--from-array imports one model's embeddings: give exactly one --model with it")
    if arrays and (weights or register_as):
        raise UsageError("--from-array imports finished embeddings: --weights and --name do not apply")
    data = resolve_dataset(
        dataset,
        input_column=input_column,
        label_column=label_column,
        split_paths=split_paths or None,
        revision=dataset_revision,
    )

    loaded: dict[str, SplitData] = {}

    def split_rows(split_name: str) -> SplitData:
        if split_name not in loaded:
            if data.kind == "hub":
                prefer_offline_when_unreachable()
            loaded[split_name] = load_split(data, split_name, limit=options.limit, seed=options.seed)
        return loaded[split_name]

    # Every name is resolved before any work starts, so a typo in the last model costs nothing.
    specs = [
        _spec_for(store, model, arrays=bool(arrays), weights=weights, pooling=pooling, max_length=max_length,
                  precision=precision, seed=options.seed, revision=revision)
        for model in models
    ]
    if register_as:
        from dataclasses import replace

        specs = [replace(specs[0], name=register_as)]
        _check_new_name(store, register_as, specs[0], force=options.force)
    if arrays:
        _check_new_name(store, specs[0].name, specs[0], force=options.force)
    # Keys (hence the fingerprints, which check each local split exists) before any work too.
    keys = {
        (spec.name, split_name): entry_key(spec, data, split_name, limit=options.limit, seed=options.seed)
        for spec in specs
        for split_name in split_names
    }
    if register_as or arrays:
        store.save_name(specs[0].name, specs[0].to_dict())
        if register_as:
            reporter.info(f"saved model spec as {register_as!r}: later commands accept --model {register_as}")

    workers, device = start_workers(options.num_shards, options.shard_index, options.device)
    if options.merge and workers.count > 1:
        workers.close()
        raise UsageError("--merge runs in one process: run it without torchrun")
    if device != options.device:
        from dataclasses import replace

        options = replace(options, device=device)
    try:
        return _embed_all(store, specs, split_names, keys, data, arrays, split_rows, options, reporter, workers)
    finally:
        workers.close()


def _embed_all(
    store: EmbeddingStore,
    specs: Sequence[ModelSpec],
    split_names: Sequence[str],
    keys: Mapping[tuple[str, str], EntryKey],
    data: DatasetSpec,
    arrays: Mapping[str, Path],
    split_rows: Callable[[str], SplitData],
    options: EmbedOptions,
    reporter: Reporter,
    workers: "Workers",
) -> list[EmbedResult]:
    """Give one result per (model, split): a cache hit, a merge of finished jobs' shards, or new work."""
    results: list[EmbedResult] = []
    for spec in specs:
        encoder: Encoder | None = None
        micro = MicroBatch()  # a batch size that ran out of memory on one split would on the next too
        for split_name in split_names:
            key = keys[(spec.name, split_name)]
            started = time.perf_counter()
            # the entry's path names the write that ran out of room; a one-process build holds the entry's lock
            with out_of_space_as_work_error(store.entry_path(spec.storage_name, key)), contextlib.ExitStack() as building:
                if split_name in arrays:
                    entry, hit = import_array(store, spec, data, split_rows(split_name), arrays[split_name], key)
                    results.append(_result(spec.name, data, split_name, entry, time.perf_counter() - started, hit))
                    continue
                entry = None if options.force else store.lookup(spec.storage_name, key)
                if workers.count == 1 and entry is None:
                    # One process builds an entry at a time: another one that needs it waits, then reads it.
                    lock = store.lock_path(spec.storage_name, key)
                    locked = building.enter_context(file_lock(lock, on_wait=lambda: reporter.info(
                        f"{spec.name} {data.name}/{split_name}: waiting for another process building the same cache entry ({lock})"
                    )))
                    entry = None if options.force else store.lookup(spec.storage_name, key)
                    if entry is None and locked:
                        remove_interrupted_writes(store.entry_path(spec.storage_name, key))  # only we write it now
                if workers.agree(entry is not None):  # every rank takes rank 0's branch
                    entry = entry or store.lookup(spec.storage_name, key)
                    if entry is not None:
                        results.append(_result(spec.name, data, split_name, entry, time.perf_counter() - started, True))
                    continue
                split = split_rows(split_name)
                if workers.count == 1 and not options.force:
                    entry = _merge_array_jobs(store, spec, key, split, data, merge_only=options.merge)
                    if entry is not None:
                        results.append(_result(spec.name, data, split_name, entry, time.perf_counter() - started, False))
                        continue
                if encoder is None:
                    encoder = _build(spec, split.modality, options, reporter)
                elif encoder.modality != split.modality:
                    raise UsageError(f"split {split_name!r} holds {split.modality} data but others hold {encoder.modality}")
                entry, plan, resumed, seconds = encode_split(store, spec, key, split, data, encoder, options, reporter, micro, workers)
                computed = plan.rows_in(plan.job_shards(workers.index)) - resumed
                if entry is not None:
                    result = _result(spec.name, data, split_name, entry, time.perf_counter() - started, False)
                else:
                    result = _pending_result(store, spec, key, data, split, plan, workers.index, time.perf_counter() - started)
                if workers.count > 1:
                    result.num_shards, result.shard_index = workers.count, workers.index
                if workers.distributed and entry is not None:  # the whole entry's figures: the ranks ran side by side
                    resumed, seconds = int(entry.metadata.get("resumed_rows", 0)), float(entry.metadata.get("seconds", 0.0))
                    computed = entry.rows - resumed
                result.resumed_rows = resumed
                result.rows_per_s = round(computed / seconds, 2) if seconds > 0 and computed else None
                if workers.leader:
                    results.append(result)
    return results


def _merge_array_jobs(
    store: EmbeddingStore, spec: ModelSpec, key: EntryKey, split: SplitData, data: DatasetSpec, *, merge_only: bool
) -> CachedEmbeddings | None:
    """Give the entry joined from array jobs' shards when all are there; UsageError naming the jobs still
    missing when some are not; None when no array job started this entry (``merge_only``: UsageError then)."""
    plan = store.read_plan(spec.storage_name, key, split.ids)
    where = f"{spec.name} on {data.name}/{split.split}"
    if plan is None or plan.jobs == 1:
        if merge_only:
            raise UsageError(
                f"nothing to merge for {where}: no array job has written shards of it; run embed with --num-shards K --shard-index I first"
            )
        return None
    entry = None if plan.missing_jobs else assemble(store, spec, key, split, data)
    if entry is None:
        raise UsageError(_missing_jobs_message(where, plan))
    return entry


def _missing_jobs_message(where: str, plan: ShardPlan) -> str:
    """Say which array jobs of an entry have not finished, and how to run them (one line)."""
    missing = plan.missing_jobs or [0]  # every shard there but no job's record (removed by hand): any one job's rerun writes it
    done = [j for j in range(plan.jobs) if j not in missing]
    return (
        f"embeddings of {where} are incomplete: shard{'s' if len(missing) > 1 else ''} "
        f"{', '.join(map(str, missing))} of {plan.jobs} not done (done: {', '.join(map(str, done)) or 'none'}); "
        f"run `stitchcli embed` for it with --num-shards {plan.jobs} --shard-index {missing[0]}"
        f"{' (and the others)' if len(missing) > 1 else ''}, or `stitchcli embed ... --force` to embed it all in one process"
    )


def _pending_result(
    store: EmbeddingStore, spec: ModelSpec, key: EntryKey, data: DatasetSpec, split: SplitData, plan: ShardPlan, job: int, seconds: float
) -> EmbedResult:
    """Give the result of an array job whose entry waits for other jobs' shards."""
    latest = store.read_plan(spec.storage_name, key, split.ids)
    plan = latest if latest is not None and latest.jobs == plan.jobs else plan
    return EmbedResult(
        model=spec.name,
        dataset=data.name,
        split=split.split,
        rows=plan.rows_in(plan.job_shards(job)),  # this job's rows
        dim=store.shard_dim(spec.storage_name, key, plan) or 0,
        seconds=round(seconds, 3),
        rows_per_s=None,
        cache_hit=False,
        path=str(store.partial_dir(spec.storage_name, key)),
        complete=False,
        waiting_for_shards=plan.missing_jobs,
    )


def _check_device_options(device: str, precision: str | None) -> None:
    """Refuse a device or precision that cannot be right, before any work (no torch import needed)."""
    from stitchcli.device import check_device_name, check_precision, check_precision_name

    check_device_name(device)
    if precision is None:
        return
    if device == "auto":
        check_precision_name(precision)  # which device "auto" picks is known only once torch is imported
    else:
        check_precision(precision, device)


def _spec_for(store: EmbeddingStore, model: str, *, arrays: bool, **resolve_args: Any) -> ModelSpec:
    """Give the spec of one --model value (an imported-array name when importing)."""
    if arrays:
        return ModelSpec(name=model, backend="array", source=model)
    spec = resolve_model_spec(store, model, **resolve_args)
    if spec.backend == "array":
        raise UsageError(
            f"model {model!r} holds imported arrays; import more with embed --model {model} --from-array FILE"
        )
    return spec


def _needs_hub(spec: ModelSpec) -> bool:
    """Tell whether building this model may download from the hub (pretrained weights or a hub config)."""
    if spec.backend == "array" or Path(spec.source).exists():
        return False
    return spec.weights is None or spec.backend == "transformers"


def _build(spec: ModelSpec, modality: str, options: EmbedOptions, reporter: Reporter) -> "Encoder":
    from stitchcli.device import check_precision, resolve_device
    from stitchcli.encoders import build_encoder

    device = resolve_device(options.device)
    check_precision(spec.precision, device)
    if _needs_hub(spec):
        prefer_offline_when_unreachable()
    reporter.info(f"loading {spec.name} ({spec.backend}: {spec.source}) on {device}")
    encoder = build_encoder(spec, modality, device, trust_remote_code=options.trust_remote_code)
    if options.compile:
        encoder.compile()
        reporter.info(f"{spec.name}: compiling with torch.compile on the first batch (tens of seconds; cached by torch for later runs)")
    return encoder


def _result(model: str, data: DatasetSpec, split: str, entry: CachedEmbeddings, seconds: float, hit: bool) -> EmbedResult:
    return EmbedResult(
        model=model,
        dataset=data.name,
        split=split,
        rows=entry.rows,
        dim=entry.dim,
        seconds=round(seconds, 3),
        rows_per_s=None,
        cache_hit=hit,
        path=str(entry.path),
    )


def load_embeddings(
    store: EmbeddingStore,
    model: str,
    dataset: str,
    split: str,
    *,
    limit: int | None = None,
    seed: int = 0,
    weights: str | None = None,
    pooling: str | None = None,
    max_length: int | None = None,
    precision: str | None = None,
    revision: str | None = None,
    dataset_revision: str | None = None,
    input_column: str | None = None,
    label_column: str | None = None,
) -> CachedEmbeddings:
    """Give a model's cached embeddings of one split with arrays loaded; UsageError if not cached yet."""
    from stitchcli.data import resolve_dataset

    data = resolve_dataset(dataset, input_column=input_column, label_column=label_column, revision=dataset_revision)
    spec = resolve_model_spec(
        store, model, weights=weights, pooling=pooling, max_length=max_length, precision=precision, seed=seed, revision=revision
    )
    key = entry_key(spec, data, split, limit=limit, seed=seed)
    entry = store.lookup(spec.storage_name, key)
    pending = None if entry is not None else store.read_plan(spec.storage_name, key, None)
    if pending is not None and pending.jobs > 1 and pending.missing_jobs:
        raise UsageError(_missing_jobs_message(f"{model} on {dataset}/{split}", pending))
    if entry is None:
        raise UsageError(
            f"no cached embeddings of {model!r} on {dataset}/{split} with these options: run `stitchcli embed --model {model} --dataset {dataset} --split {split}` first"
        )
    return store.read(entry)
