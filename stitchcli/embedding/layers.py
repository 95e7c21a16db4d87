"""``embed --layers``: the pooled representation of every layer (or the ones named), one cache entry per layer.

Each layer's entry has the key of the model's final representation plus the layer's name
(:class:`~stitchcli.store.EntryKey` ``layer``), so entries of final representations keep their keys and
``load_embeddings(..., layer=NAME)`` reads one layer. One forward pass gives every layer: the chosen layers are
encoded side by side into one resumable entry (the *bundle*, keyed by the selection, shard by shard as
``embed`` encodes), which is then cut into the layers' entries and removed. A run killed while encoding resumes
from its last shard; one killed while cutting finds the bundle finished and only cuts it.

Which layers a model has (their names) is learned when its encoder is first built and remembered in the
cache's memo, so that a later run whose layers are all cached builds no model.

    embed_layers(["lite0"], "packaged:mnist5k", ["test"], store=store, layers="all")
    load_layer_embeddings(store, "lite0", data, "test")     # {"stem": entry, "blocks.0": entry, ...}
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Sequence

import numpy as np

from stitchcli.data.base import DatasetSpec
from stitchcli.embedding.batching import MicroBatch
from stitchcli.embedding.encode import encode_split
from stitchcli.embedding.options import EmbedOptions, EmbedResult, parse_splits
from stitchcli.embedding.pipeline import _build, _check_device_options, _result, _spec_for, load_embeddings, model_refs, resolve_embed_dataset
from stitchcli.embedding.specs import entry_key, resolve_model_spec
from stitchcli.encoders.base import ModelSpec
from stitchcli.errors import NotCached, UsageError, out_of_space_as_work_error
from stitchcli.models import ModelRef
from stitchcli.progress import Reporter
from stitchcli.provenance import library_versions
from stitchcli.settings import DatasetOptions
from stitchcli.store import CachedEmbeddings, EmbeddingStore, EntryKey, canonical_json, file_lock, remove_interrupted_writes

ALL_LAYERS = "all"
LayerSelection = Sequence[str] | str
"""``"all"`` or the layer names (``["blocks.3", "blocks.6"]``, or ``"blocks.3,blocks.6"``)."""


def parse_layer_selection(value: LayerSelection | None) -> tuple[str, ...] | None:
    """Give the chosen layer names, None for every layer (``all``); UsageError for an empty choice."""
    if value is None:
        return None
    names = [part.strip() for part in value.split(",")] if isinstance(value, str) else [str(part).strip() for part in value]
    if names == [ALL_LAYERS]:
        return None
    if not names or not all(names):
        raise UsageError("--layers takes 'all' or comma-separated layer names such as blocks.3,blocks.6")
    if ALL_LAYERS in names:
        raise UsageError("--layers all means every layer: give it alone, or only layer names")
    if len(set(names)) != len(names):
        raise UsageError(f"--layers lists a layer twice: {','.join(names)}")
    return tuple(names)


def _names_memo(spec: ModelSpec) -> str:
    return canonical_json({"layers_of": spec.key(), "versions": library_versions()})


def cached_layer_names(store: EmbeddingStore, model: ModelRef | str | ModelSpec, *, seed: int = 0) -> list[str] | None:
    """Give every layer name of a model as learned when it was embedded with ``--layers``, None if never."""
    spec = model if isinstance(model, ModelSpec) else resolve_model_spec(store, model, seed=seed)
    found = store.memo_get(_names_memo(spec))
    return list(found["layers"]) if found and isinstance(found.get("layers"), list) else None


def _bundle_key(spec: ModelSpec, data: DatasetSpec, split: str, chosen: tuple[str, ...] | None, *, limit: int | None, seed: int) -> EntryKey:
    """Give the key of the entry the chosen layers are encoded into side by side, before it is cut."""
    return entry_key(spec, data, split, limit=limit, seed=seed, layer=f"layers={','.join(chosen or (ALL_LAYERS,))}")


def embed_layers(
    models: Sequence[ModelRef | str],
    dataset: str | DatasetSpec,
    splits: Sequence[str] | None = None,
    *,
    store: EmbeddingStore,
    layers: LayerSelection = ALL_LAYERS,
    options: EmbedOptions | None = None,
    dataset_options: DatasetOptions = DatasetOptions(),
    reporter: Reporter | None = None,
) -> list[EmbedResult]:
    """Give one result per (model, split, layer) after making sure each layer's entry is in the cache.

    Args:
        models: the models (timm and transformers; open_clip is refused).
        dataset, splits, dataset_options: as for :func:`~stitchcli.embedding.embed`.
        store: the cache.
        layers: ``"all"`` or the layer names to keep (a name the model lacks is a UsageError naming its layers).
        options: as for embed; array jobs, torchrun, ``--merge``, ``--force`` and ``--compile`` do not apply.
        reporter: where progress goes.
    """
    from stitchcli.data import load_split
    from stitchcli.distributed import torchrun_rank

    options = options or EmbedOptions()
    reporter = reporter or Reporter()
    chosen = parse_layer_selection(layers)
    refs = model_refs(models)
    names = [ref.name for ref in refs]
    if options.num_shards > 1 or options.merge or torchrun_rank() is not None:
        raise UsageError("--layers embeds in one process: drop --num-shards, --merge and torchrun")
    if options.compile:
        raise UsageError("--compile speeds up the final representation only: drop it with --layers")
    if options.limit is not None and options.limit <= 0:
        raise UsageError(f"--limit must be a positive number of rows, not {options.limit}")
    for ref in refs:
        _check_device_options(options.device, ref.options.get("precision"))
    split_names, split_paths = parse_splits(splits)
    data = resolve_embed_dataset(store, dataset, names, split_paths, reporter, dataset_options)
    specs = [_spec_for(store, ref, arrays=False, seed=options.seed) for ref in refs]
    from stitchcli.encoders.layers import check_layers_supported

    for spec in specs:
        check_layers_supported(spec.backend, spec.name)
    loaded: dict[str, Any] = {}

    def split_rows(split_name: str) -> Any:
        if split_name not in loaded:
            loaded[split_name] = load_split(data, split_name, limit=options.limit, seed=options.seed)
        return loaded[split_name]

    results: list[EmbedResult] = []
    for spec in specs:
        encoder = None
        micro = MicroBatch()
        for split_name in split_names:
            started = time.perf_counter()

            def layer_key(name: str) -> EntryKey:
                return entry_key(spec, data, split_name, limit=options.limit, seed=options.seed, layer=name)

            wanted = list(chosen) if chosen is not None else cached_layer_names(store, spec)
            hits = _lookup_all(store, spec, wanted, layer_key) if wanted is not None and not options.force else None
            if hits is not None:
                results += [_layer_result(spec, data, split_name, name, entry, time.perf_counter() - started, True) for name, entry in hits]
                continue
            bundle = _bundle_key(spec, data, split_name, chosen, limit=options.limit, seed=options.seed)
            with out_of_space_as_work_error(store.entry_path(spec.storage_name, bundle)), contextlib.ExitStack() as building:
                building.enter_context(file_lock(store.lock_path(spec.storage_name, bundle), on_wait=lambda: reporter.info(
                    f"{spec.name} {data.name}/{split_name}: waiting for another process embedding the same layers")))
                remove_interrupted_writes(store.entry_path(spec.storage_name, bundle))
                entry = None if options.force else store.lookup(spec.storage_name, bundle)
                if entry is None:
                    split = split_rows(split_name)
                    if encoder is None:
                        from stitchcli.encoders.layers import layer_encoder

                        encoder = layer_encoder(_build(spec, split.modality, options, reporter), chosen)
                        store.memo_put(_names_memo(spec), {"layers": [name for name, _ in encoder.all_layers]})
                        reporter.info(f"{spec.name}: {len(encoder.layers)} layer(s): {', '.join(name for name, _ in encoder.layers)}")
                    elif encoder.modality != split.modality:
                        raise UsageError(f"split {split_name!r} holds {split.modality} data but others hold {encoder.modality}")
                    hits = None if options.force else _lookup_all(store, spec, [name for name, _ in encoder.layers], layer_key)
                    if hits is not None:
                        results += [_layer_result(spec, data, split_name, name, e, time.perf_counter() - started, True) for name, e in hits]
                        continue
                    entry, _, _, _ = encode_split(store, spec, bundle, split, data, encoder, options, reporter, micro)
                    assert entry is not None  # one process: the entry is assembled here
                cut = cut_bundle(store, spec, store.read(entry), layer_key, force=options.force)
            results += [_layer_result(spec, data, split_name, name, e, time.perf_counter() - started, hit) for name, e, hit in cut]
    return results


def _lookup_all(store: EmbeddingStore, spec: ModelSpec, names: Sequence[str], layer_key: Any) -> list[tuple[str, CachedEmbeddings]] | None:
    """Give every named layer's cached entry, or None when one is missing."""
    found = []
    for name in names:
        entry = store.lookup(spec.storage_name, layer_key(name))
        if entry is None:
            return None
        found.append((name, entry))
    return found


def cut_bundle(
    store: EmbeddingStore, spec: ModelSpec, bundle: CachedEmbeddings, layer_key: Any, *, force: bool = False
) -> list[tuple[str, CachedEmbeddings, bool]]:
    """Write each layer of a finished bundle (arrays loaded) as its own entry, remove the bundle, and give
    (name, entry, whether it was cached already) per layer. Call it holding the bundle's lock."""
    assert bundle.embeddings is not None and bundle.labels is not None and bundle.ids is not None
    layers = bundle.metadata["preprocessing"]["layers"]
    widths = [int(layer["dim"]) for layer in layers]
    if sum(widths) != bundle.dim:
        raise ValueError(f"the layers' widths add up to {sum(widths)}, but the bundle {bundle.path} is {bundle.dim} wide")
    base = {key: value for key, value in bundle.metadata.items() if key not in ("key", "key_digest", "rows", "dim", "schema_version")}
    written = []
    start = 0
    for index, (layer, width) in enumerate(zip(layers, widths)):
        name = str(layer["name"])
        key = layer_key(name)
        entry = None if force else store.lookup(spec.storage_name, key)
        hit = entry is not None
        if entry is None:
            columns = np.ascontiguousarray(bundle.embeddings[:, start : start + width])
            entry = store.write_entry(spec.storage_name, key, embeddings=columns, labels=bundle.labels, ids=bundle.ids,
                                      metadata={**base, "layer": name, "layer_index": index})
        written.append((name, entry, hit))
        start += width
    bundle.path.unlink(missing_ok=True)
    return written


def _layer_result(spec: ModelSpec, data: DatasetSpec, split: str, layer: str, entry: CachedEmbeddings, seconds: float, hit: bool) -> EmbedResult:
    result = _result(spec.name, data, split, entry, seconds, hit)
    result.layer = layer
    return result


def load_layer_embeddings(
    store: EmbeddingStore,
    model: ModelRef | str,
    dataset: DatasetSpec,
    split: str,
    *,
    layers: LayerSelection = ALL_LAYERS,
    limit: int | None = None,
    seed: int = 0,
) -> dict[str, CachedEmbeddings]:
    """Give a model's cached layer entries of one split (arrays loaded), by layer name in depth order.

    Raises:
        NotCached: a layer is not cached, or (``"all"``) the model was never embedded with ``--layers``.
    """
    ref = ModelRef.of(model)
    chosen = parse_layer_selection(layers)
    names = list(chosen) if chosen is not None else cached_layer_names(store, ref, seed=seed)
    if names is None:
        raise NotCached(f"{ref.name!r} has no cached layers: run `stitchcli embed --model {ref.name} --dataset {dataset.name} --split {split} --layers all` first")
    if chosen is not None:
        every = cached_layer_names(store, ref, seed=seed)
        if every is not None:  # depth order, and a clear message for a name the model lacks
            unknown = [name for name in names if name not in every]
            if unknown:
                raise UsageError(f"model {ref.name!r} has no layer {', '.join(map(repr, unknown))}: its layers are {', '.join(every)} "
                                 "(the final representation, 'final', needs no --layers)")
            names = [name for name in every if name in set(names)]
    return {name: load_embeddings(store, ref, dataset, split, limit=limit, seed=seed, layer=name) for name in names}
