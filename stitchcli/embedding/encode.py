"""Encoding a split into the cache shard by shard, resumable, and joining array jobs' shards into the entry."""

from __future__ import annotations

import platform
import time
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from stitchcli.data.base import DatasetSpec, SplitData
from stitchcli.device import is_out_of_memory
from stitchcli.embedding.batching import (
    Loading,
    MicroBatch,
    SplitRows,
    batch_rows,
    batches_in_threads,
    choose_loading,
    decay_batch_step,
    default_batch_size,
    free_memory,
    out_of_memory_hint,
    shard_order,
    rows_per_shard,
    slice_batch,
)
from stitchcli.embedding.options import EmbedOptions
from stitchcli.encoders.base import ModelSpec
from stitchcli.errors import UsageError, WorkError
from stitchcli.progress import Reporter
from stitchcli.provenance import library_versions
from stitchcli.store import (
    CachedEmbeddings,
    EmbeddingStore,
    EntryKey,
    ShardPlan,
    file_lock,
)

if TYPE_CHECKING:
    from stitchcli.distributed import Workers
    from stitchcli.encoders.base import Encoder


def entry_metadata(
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
    batch_size = options.batch_size or default_batch_size(encoder.device.type)
    loading = choose_loading(options.num_workers, encoder.device.type, split.modality)
    micro = micro if micro is not None else MicroBatch()
    shard_rows = rows_per_shard(options, batch_size, len(split.ids), workers.count)
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
        metadata = entry_metadata(spec, data, split, preprocessing=job_record["preprocessing"], extra=record)
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
        loader = batches_in_threads(split, batches, encoder.collate, loading.threads, per_part=per_part)
    else:
        loader = DataLoader(
            SplitRows(split),
            batch_sampler=batches,
            collate_fn=encoder.collate,
            num_workers=loading.workers if batches else 0,
            persistent_workers=False,
            prefetch_factor=4 if loading.workers and batches else None,
        )

    def encode(batch: Any) -> np.ndarray:
        """Give the float32 embeddings of one collated batch, in slices of ``micro.size`` rows once one did not fit."""
        rows = batch_rows(batch)
        total = 1 if rows is None else rows  # a batch of unknown rows is encoded whole (it cannot be sliced)
        outputs: list[np.ndarray] = []
        start = 0
        while start < total:
            size = total - start if micro.size is None else min(micro.size, total - start)
            part = batch if size == total else slice_batch(batch, start, start + size, total)
            try:
                outputs.append(encoder.encode(part).detach().to("cpu", torch.float32).numpy())
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                smaller = decay_batch_step(size) if rows is not None else 0
                if smaller == 0:
                    raise WorkError(out_of_memory_hint(spec, encoder.device)) from exc
            else:
                start += size
                continue
            del part  # the failed pass's tensors go with its frames, which left with the exception
            free_memory(encoder.device)
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
        metadata = entry_metadata(spec, data, split, preprocessing=first.get("preprocessing", {}), extra=extra)
        return store.finish(spec.storage_name, key, plan, labels=split.labels, ids=split.ids, metadata=metadata)


