"""embed and load_embeddings: dataset rows -> encoder -> cache, one summary record per entry."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from stitchcli.data.base import DatasetSpec, SplitData
from stitchcli.embedding.arrays import import_array
from stitchcli.embedding.batching import MicroBatch
from stitchcli.embedding.encode import assemble, encode_split
from stitchcli.embedding.options import (
    EmbedOptions,
    EmbedResult,
    parse_array_files,
    parse_splits,
)
from stitchcli.embedding.specs import check_new_name, entry_key, resolve_model_spec
from stitchcli.encoders.base import ModelSpec
from stitchcli.errors import NotCached, UsageError, out_of_space_as_work_error
from stitchcli.models import ModelRef
from stitchcli.hub import prefer_offline_when_unreachable
from stitchcli.progress import Reporter
from stitchcli.settings import DatasetOptions
from stitchcli.store import (
    CachedEmbeddings,
    EmbeddingStore,
    EntryKey,
    ShardPlan,
    file_lock,
    remove_interrupted_writes,
)

if TYPE_CHECKING:
    from stitchcli.distributed import Workers
    from stitchcli.encoders.base import Encoder


def embed(
    models: Sequence[ModelRef | str],
    dataset: str | DatasetSpec,
    splits: Sequence[str] | None = None,
    *,
    store: EmbeddingStore,
    options: EmbedOptions | None = None,
    dataset_options: DatasetOptions = DatasetOptions(),
    from_array: Sequence[str] | None = None,
    register_as: str | None = None,
    reporter: Reporter | None = None,
) -> list[EmbedResult]:
    """Give one result per (model, split) after making sure each is in the cache.

    A cache hit builds no model and reads no data beyond the cheap fingerprints. A miss loads the
    split (once for all models), builds the model (once for all splits) and encodes the rows in
    resumable shards.

    Args:
        models: the models, each a name or a :class:`~stitchcli.models.ModelRef` (a name with its embed options).
        dataset: a name as ``embed --dataset`` takes it (``dataset_options`` apply to it), or a spec
            resolved already (the options are then in it).
        splits: ``NAME`` or ``NAME=PATH`` values (default: train and test).
        store: the cache.
        options: how to run (batch size, device, limit, shards...).
        from_array: ``FILE`` or ``SPLIT=FILE``: import embeddings computed elsewhere under the one model's name.
        register_as: save the one model's spec under this name (``embed --name``).
        reporter: where progress goes.
    """
    from stitchcli.data import load_split
    from stitchcli.distributed import check_shard_options, start_workers

    options = options or EmbedOptions()
    reporter = reporter or Reporter()
    refs = model_refs(models)
    names = [ref.name for ref in refs]
    if options.limit is not None and options.limit <= 0:
        raise UsageError(f"--limit must be a positive number of rows, not {options.limit}")
    if options.batch_size is not None and options.batch_size <= 0:
        raise UsageError(f"--batch-size must be positive, not {options.batch_size}")
    if options.num_workers is not None and options.num_workers < 0:
        raise UsageError(f"--num-workers must be 0 (load in the main process) or more, not {options.num_workers}")
    if options.shard_rows <= 0:
        raise UsageError(f"--shard-rows must be positive, not {options.shard_rows}")
    for ref in refs:
        _check_device_options(options.device, ref.options.get("precision"))
    check_shard_options(options.num_shards, options.shard_index)
    if options.merge and (options.force or options.num_shards > 1 or from_array):
        raise UsageError("--merge joins finished array jobs' shards: it takes no --force, --num-shards or --from-array")
    if options.num_shards > 1 and from_array:
        raise UsageError("--num-shards splits the encoding of rows: --from-array does not apply")
    if register_as and len(refs) != 1:
        raise UsageError("--name registers one model: give exactly one --model with it")
    split_names, split_paths = parse_splits(splits)
    arrays = parse_array_files(from_array, split_names)
    if arrays and len(refs) != 1:
        raise UsageError("--from-array imports one model's embeddings: give exactly one --model with it")
    if arrays and (refs[0].options.get("weights") or register_as):
        raise UsageError("--from-array imports finished embeddings: --weights and --name do not apply")
    data = resolve_embed_dataset(store, dataset, names, split_paths, reporter, dataset_options)

    loaded: dict[str, SplitData] = {}

    def split_rows(split_name: str) -> SplitData:
        if split_name not in loaded:
            if data.kind == "hub":
                prefer_offline_when_unreachable()
            loaded[split_name] = load_split(data, split_name, limit=options.limit, seed=options.seed)
            if not loaded[split_name].labelled and data.label_column is None:
                reporter.info(f"{data.name}/{split_name} has no label column: reading it without labels "
                              "(enough for embed and similarity; pass --label-column NAME to read one)")
        return loaded[split_name]

    # Every name is resolved before any work starts, so a typo in the last model costs nothing.
    specs = [_spec_for(store, ref, arrays=bool(arrays), seed=options.seed) for ref in refs]
    if register_as:
        from dataclasses import replace

        specs = [replace(specs[0], name=register_as)]
        check_new_name(store, register_as, specs[0], force=options.force)
    if arrays:
        check_new_name(store, specs[0].name, specs[0], force=options.force)
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


def resolve_embed_dataset(
    store: EmbeddingStore,
    dataset: str | DatasetSpec,
    models: Sequence[str],
    split_paths: Mapping[str, str],
    reporter: Reporter,
    dataset_options: DatasetOptions = DatasetOptions(),
) -> DatasetSpec:
    """Give embed's dataset resolved: a spec as given, or a name (a ``packaged:`` one written first, and the
    packaged models among ``models`` registered) resolved with the dataset options and ``--split`` paths."""
    if isinstance(dataset, DatasetSpec):
        if split_paths:
            raise UsageError("--split NAME=PATH names table files: give the dataset by name with them")
        return dataset
    from stitchcli.assets import resolve_given_dataset

    return resolve_given_dataset(store, dataset, dataset_options, models, reporter, split_paths=split_paths)


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
    from stitchcli.device import (
        check_device_name,
        check_precision,
        check_precision_name,
    )

    check_device_name(device)
    if precision is None:
        return
    if device == "auto":
        check_precision_name(precision)  # which device "auto" picks is known only once torch is imported
    else:
        check_precision(precision, device)


def _spec_for(store: EmbeddingStore, ref: ModelRef, *, arrays: bool, seed: int) -> ModelSpec:
    """Give the spec of one --model value (an imported-array name when importing)."""
    if arrays:
        return ModelSpec(name=ref.name, backend="array", source=ref.name)
    spec = resolve_model_spec(store, ref, seed=seed)
    if spec.backend == "array":
        raise UsageError(
            f"model {ref.name!r} holds imported arrays; import more with embed --model {ref.name} --from-array FILE"
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
    model: ModelRef | str,
    dataset: str | DatasetSpec,
    split: str,
    *,
    limit: int | None = None,
    seed: int = 0,
    dataset_options: DatasetOptions = DatasetOptions(),
    layer: str | None = None,
) -> CachedEmbeddings:
    """Give a model's cached embeddings of one split with arrays loaded.

    ``model``, ``dataset`` and ``dataset_options`` as for :func:`embed` (a name, or a ModelRef / resolved DatasetSpec); ``limit``
    and ``seed`` as given to embed; ``layer`` one intermediate layer's entry (``embed --layers``), None the
    final representation.

    Raises:
        NotCached: the entry is not in the cache yet (the message names the embed command that makes it).
        UsageError: some array jobs of the entry have not finished (the message names them).
    """
    ref = ModelRef.of(model)
    if isinstance(dataset, DatasetSpec):
        data = dataset
    else:
        from stitchcli.assets import resolve_given_dataset

        data = resolve_given_dataset(store, dataset, dataset_options)
    spec = resolve_model_spec(store, ref, seed=seed)
    key = entry_key(spec, data, split, limit=limit, seed=seed, layer=layer)
    entry = store.lookup(spec.storage_name, key)
    pending = None if entry is not None or layer is not None else store.read_plan(spec.storage_name, key, None)
    if pending is not None and pending.jobs > 1 and pending.missing_jobs:
        raise UsageError(_missing_jobs_message(f"{ref.name} on {data.name}/{split}", pending))
    if entry is None:
        command = embed_command(ref, data, split, limit=limit, seed=seed, layer=layer)
        what = "embeddings" if layer is None else f"embeddings of layer {layer!r}"
        raise NotCached(f"no cached {what} of {ref.name!r} on {data.name}/{split} with these options: run `{command}` first")
    return store.read(entry)


def embed_command(ref: ModelRef, data: DatasetSpec, split: str, *, limit: int | None, seed: int, layer: str | None = None) -> str:
    """Give the `stitchcli embed` command line that makes the cache entry of these arguments."""
    import shlex

    words = ["stitchcli", "embed", "--model", ref.name, "--dataset", data.name, "--split", split]
    if layer is not None:
        words += ["--layers", layer]
    options = {**ref.options, "input_column": ",".join(data.input_columns) or None, "label_column": data.label_column,
               "dataset_revision": data.revision}
    for key, value in options.items():
        if value is not None:
            words += [f"--{key.replace('_', '-')}", str(value)]
    if limit is not None:
        words += ["--limit", str(limit)]
    if seed:
        words += ["--seed", str(seed)]
    return shlex.join(words)


def model_refs(models: Sequence[ModelRef | str]) -> list[ModelRef]:
    """Give ``embed``'s models as refs, refusing none and a model listed twice."""
    refs = [ModelRef.of(model) for model in models]
    names = [ref.name for ref in refs]
    if not refs:
        raise UsageError("no model given: pass --model NAME (a timm name, openclip:ARCH/TAG, a hub id or a local folder)")
    if len(set(names)) != len(names):
        raise UsageError(f"--model lists a model twice: {', '.join(names)}")
    return refs
