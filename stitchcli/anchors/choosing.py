"""Choosing anchor rows from a training split, and reading a model's embeddings of them.

:func:`choose_anchors` gives the manifest of the rows a strategy chose; :func:`anchor_embeddings` gives a
model's cached embeddings of a manifest's rows, in the manifest's order, so every model's anchors are the
same samples (docs/METHOD.md §4).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stitchcli.anchors.manifest import AnchorManifest, check_anchor_name, default_anchor_name
from stitchcli.anchors.strategies import AnchorPool, get_anchor_strategy
from stitchcli.data.base import DatasetSpec
from stitchcli.errors import NotCached, UsageError
from stitchcli.models import MODEL_OPTIONS, ModelRef
from stitchcli.settings import DatasetOptions

if TYPE_CHECKING:
    from stitchcli.progress import Reporter
    from stitchcli.store import CachedEmbeddings, EmbeddingStore

DEFAULT_NUM = 1280
# Split names that hold evaluation data: substrings, and short words that must stand alone.
_EVALUATION_SPLIT = re.compile(r"test|valid|eval|(?:^|[^a-z])(?:val|dev)(?:[^a-z]|$)")


def is_evaluation_split(split: str) -> bool:
    """Tell whether a split name looks like evaluation data (test, validation, val, eval, dev)."""
    return _EVALUATION_SPLIT.search(split.lower()) is not None


def _given_options(model: ModelRef | None) -> dict[str, Any]:
    """Give the embed options set on a model, in embed's order (what a manifest records); none without a model."""
    if model is None:
        return {}
    return {key: model.options[key] for key in MODEL_OPTIONS if key in model.options}


def _cached_entry(
    store: EmbeddingStore, model: ModelRef, data: DatasetSpec, split: str, *, limit: int | None, embed_seed: int, purpose: str
) -> CachedEmbeddings:
    """Give a model's cached entry of a split with arrays loaded; NotCached naming the embed command if absent."""
    from stitchcli.embedding import embed_command, load_embeddings

    try:
        return load_embeddings(store, model, data, split, limit=limit, seed=embed_seed)
    except NotCached:
        subset = f" (the --limit {limit} subset)" if limit is not None else ""
        command = embed_command(model, data, split, limit=limit, seed=embed_seed)
        raise NotCached(f"{purpose} needs {model.name}'s cached embeddings of split {split!r}{subset} of {data.name}: run `{command}` first") from None


def choose_anchors(
    store: EmbeddingStore,
    dataset: str | DatasetSpec,
    *,
    split: str = "train",
    num: int = DEFAULT_NUM,
    strategy: str = "uniform",
    seed: int = 0,
    model: ModelRef | str | None = None,
    limit: int | None = None,
    embed_seed: int = 0,
    dataset_options: DatasetOptions = DatasetOptions(),
    name: str | None = None,
    reporter: Reporter | None = None,
) -> AnchorManifest:
    """Give the manifest of ``num`` anchors chosen from a training split (not saved: see
    :func:`~stitchcli.anchors.manifest.save_anchor_manifest`).

    Args:
        store: the cache (fps/kmeans read the model's embeddings from it).
        dataset: as for ``embed`` (alias, hub id, local path, ``packaged:NAME``; the three dataset options apply
            to it), or a spec resolved already.
        split: a training split; names like test/validation/eval/dev are refused.
        num: number of anchors; at most the rows of the split (or of the ``limit`` subset).
        strategy: a name from :func:`~stitchcli.anchors.strategies.list_anchor_strategies`.
        seed: seed of the choice.
        model: fps/kmeans only: the model whose cached embeddings of the split choose the rows, with the
            options it was embedded with (None for the strategies that read no embeddings).
        limit: draw from the seeded class-stratified subset ``embed --limit`` encodes.
        embed_seed: the ``--seed`` given to embed: it picks the ``limit`` subset and seeds
            ``--weights random``, so it locates the cache entry.
        dataset_options: the dataset options given to embed (with a resolved ``dataset``, the ones it was
            resolved with: the manifest records them).
        name: the name to save under (default :func:`~stitchcli.anchors.manifest.default_anchor_name`).
        reporter: where notes and progress go.

    Raises:
        UsageError: a bad option, an evaluation split, ``num`` above the rows available, or
            fps/kmeans without that model's cached embeddings.
    """
    from stitchcli import __version__
    from stitchcli.data import load_split
    from stitchcli.progress import Reporter

    reporter = reporter or Reporter()
    model = ModelRef.of(model) if model is not None else None
    chosen_strategy = get_anchor_strategy(strategy)
    if num < 1:
        raise UsageError(f"the number of anchors must be positive, not {num}")
    if seed < 0 or embed_seed < 0:
        raise UsageError(f"seeds must be 0 or more, not {min(seed, embed_seed)}")
    if limit is not None and limit <= 0:
        raise UsageError(f"--limit must be a positive number of rows, not {limit}")
    if is_evaluation_split(split):
        raise UsageError(
            f"anchors must come from the training split, and {split!r} looks like evaluation data: "
            "pass a training split with --split (default: train)"
        )
    if chosen_strategy.needs_embeddings and model is None:
        raise UsageError(f"--strategy {strategy} chooses anchors from a model's embeddings: pass --model M (embedded on this split first)")
    if not chosen_strategy.needs_embeddings and model is not None:
        raise UsageError(f"--strategy {strategy} reads no embeddings: drop --model and its options (they apply to fps and kmeans)")
    if name is not None:
        check_anchor_name(name)

    model_name = model.name if model is not None else None
    if isinstance(dataset, DatasetSpec):
        data = dataset
    else:
        from stitchcli.assets import resolve_given_dataset

        data = resolve_given_dataset(store, dataset, dataset_options, [model_name] if model_name else [], reporter)
    # A name that resolves again from any folder: local data by its absolute path.
    dataset_name = data.name if data.kind == "hub" else data.source
    entry: CachedEmbeddings | None = None
    if chosen_strategy.needs_embeddings:
        assert model is not None
        entry = _cached_entry(store, model, data, split, limit=limit, embed_seed=embed_seed, purpose=f"--strategy {strategy}")
        pool = AnchorPool(entry.ids, entry.labels, list(entry.metadata.get("class_names", [])), entry.embeddings)
        fingerprint = str(entry.metadata["key"]["dataset_fingerprint"])
    else:
        if data.kind == "hub":
            from stitchcli.hub import prefer_offline_when_unreachable

            prefer_offline_when_unreachable()
        rows = load_split(data, split, limit=limit, seed=embed_seed)
        pool = AnchorPool(rows.ids, rows.labels, list(rows.class_names))
        fingerprint = rows.fingerprint
    if chosen_strategy.needs_labels and (pool.labels < 0).any():
        raise UsageError(
            f"anchor strategy {strategy} draws anchors by class, and split {split!r} of {data.name} has no labels: "
            f"use uniform, fps or kmeans, or pass --label-column NAME naming its class column"
        )
    if num > len(pool):
        where = f"the --limit {limit} subset of split {split!r}" if limit is not None else f"split {split!r}"
        raise UsageError(f"{num} anchors asked for, but {where} of {data.name} holds {len(pool)} rows: ask for at most {len(pool)} anchors")

    if entry is not None:
        reporter.info(f"choosing {num} anchors by {strategy} among {len(pool)} rows of {model_name}'s embeddings ({entry.dim}-d)")
    started = time.perf_counter()
    selection = chosen_strategy.select(pool, num, np.random.default_rng(seed))
    positions = np.asarray(selection.positions, dtype=np.int64)
    if len(np.unique(positions)) != num:  # a strategy bug, not a user error
        raise AssertionError(f"strategy {strategy} returned {len(np.unique(positions))} distinct rows for num={num}")
    order = np.argsort(pool.ids[positions], kind="stable")
    positions = positions[order]
    for note in selection.notes:
        reporter.warn(note)
    if entry is not None:
        reporter.info(f"chose {num} anchors in {time.perf_counter() - started:.1f} s")
    return AnchorManifest(
        name=name or default_anchor_name(data, split, strategy, num, seed, model=model_name, limit=limit),
        dataset=dataset_name,
        dataset_id=data.dataset_id,
        dataset_fingerprint=fingerprint,
        split=split,
        strategy=strategy,
        seed=seed,
        num=num,
        ids=[int(i) for i in pool.ids[positions]],
        labels=[int(v) for v in pool.labels[positions]],
        class_names=pool.class_names,
        pool_rows=len(pool),
        limit=limit,
        limit_seed=embed_seed if limit is not None else None,
        model=model_name,
        model_options=_given_options(model),
        model_entry=str(entry.metadata["key_digest"]) if entry is not None else None,
        # the options as given (with a resolved spec: as it was resolved with), so the manifest resolves the same data again
        dataset_options=dataset_options.given(),
        params=selection.params,
        notes=selection.notes,
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        stitchcli_version=__version__,
        numpy_version=np.__version__,
    )


@dataclass
class AnchorEmbeddings:
    """A model's embeddings of the anchors, row i belonging to ``ids[i]`` (the manifest's order)."""

    embeddings: np.ndarray
    ids: np.ndarray
    labels: np.ndarray
    model: str
    path: Path


def select_anchor_rows(manifest: AnchorManifest, entry: CachedEmbeddings, *, model: str = "") -> AnchorEmbeddings:
    """Give the anchors' rows of a loaded cache entry; UsageError if the entry lacks some or holds other data.

    Args:
        manifest: the anchors.
        entry: a cache entry of the manifest's dataset and split, with arrays loaded.
        model: the model's name, for messages.
    """
    assert entry.embeddings is not None and entry.ids is not None and entry.labels is not None
    key = entry.metadata.get("key", {})
    who = model or str(entry.path)
    if key.get("dataset_id") != manifest.dataset_id or key.get("split") != manifest.split:
        raise UsageError(
            f"anchors {manifest.name!r} are rows of {manifest.dataset_id}/{manifest.split}, "
            f"but {who}'s entry holds {key.get('dataset_id')}/{key.get('split')}"
        )
    if key.get("dataset_fingerprint") != manifest.dataset_fingerprint:
        raise UsageError(
            f"the data of {manifest.dataset}/{manifest.split} changed since anchors {manifest.name!r} were chosen "
            f"(fingerprint {manifest.dataset_fingerprint} then, {key.get('dataset_fingerprint')} now): choose them again with `stitchcli anchor`"
        )
    wanted = manifest.id_array
    order = np.argsort(entry.ids, kind="stable")
    sorted_ids = entry.ids[order]
    slots = np.minimum(np.searchsorted(sorted_ids, wanted), len(sorted_ids) - 1)
    found = sorted_ids[slots] == wanted if len(sorted_ids) else np.zeros(len(wanted), dtype=bool)
    if not found.all():
        subset = f"the --limit {key.get('limit')} subset" if key.get("limit") is not None else "its rows"
        raise UsageError(
            f"{int((~found).sum())} of the {len(wanted)} anchors of {manifest.name!r} are not in {who}'s cached entry "
            f"({subset}, {entry.rows} rows): embed the split whole (without --limit), or with the --limit the anchors were drawn from"
        )
    positions = order[slots]
    labels = entry.labels[positions]
    if not np.array_equal(labels, manifest.label_array):
        raise UsageError(
            f"{who}'s labels of the anchor rows differ from those in anchors {manifest.name!r}: "
            "the label column or class names changed; choose the anchors again"
        )
    return AnchorEmbeddings(entry.embeddings[positions], wanted, labels, who, Path(entry.path))


def anchor_embeddings(
    store: EmbeddingStore,
    manifest: AnchorManifest,
    model: ModelRef | str,
    *,
    limit: int | None = None,
    embed_seed: int = 0,
) -> AnchorEmbeddings:
    """Give a model's cached embeddings of the manifest's anchors, in the manifest's order.

    Reads the entry of ``model`` (a name plus the options it was embedded with) of the manifest's dataset and
    split (the whole split unless ``limit``; ``embed_seed`` as given to embed). Every model gives the same ids
    and labels, so their anchor embeddings are the same samples.

    Raises:
        UsageError: the entry is not cached (the message names the embed command), lacks some
            anchor rows (e.g. made with another --limit), or holds changed data.
    """
    data = DatasetOptions.from_given(manifest.dataset_options).resolve(manifest.dataset)
    model = ModelRef.of(model)
    entry = _cached_entry(store, model, data, manifest.split, limit=limit, embed_seed=embed_seed, purpose=f"anchors {manifest.name!r}")
    return select_anchor_rows(manifest, entry, model=model.name)
