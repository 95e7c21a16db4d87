"""The data a sweep reads: every model's cached embeddings (built when missing) and its embeddings of the anchors.

The dataset is resolved once (:func:`resolve_sweep_dataset`) and the resolved spec is passed down, so a
``packaged:`` dataset is written and the names are looked up one time per command.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np

from stitchcli.anchors import (
    DEFAULT_NUM,
    STRATEGIES,
    AnchorManifest,
    default_anchor_name,
    load_anchor_manifest,
    save_anchor_manifest,
    select_anchor_rows,
)
from stitchcli.data.base import DatasetSpec, printable
from stitchcli.data.columns import alike_class_names
from stitchcli.embedding import EmbedOptions
from stitchcli.errors import NotCached, StitchError, UsageError
from stitchcli.models import ModelRef
from stitchcli.progress import Reporter
from stitchcli.settings import StitchSettings, by_name
from stitchcli.store import CachedEmbeddings, EmbeddingStore


@dataclass
class ModelView:
    """One model's cached training and evaluation embeddings and its embeddings of the anchors."""

    ref: ModelRef
    train: CachedEmbeddings
    evaluation: CachedEmbeddings | None
    anchors: np.ndarray

    @property
    def name(self) -> str:
        """The model's name."""
        return self.ref.name

    @property
    def dim(self) -> int:
        """The latent size."""
        return self.train.dim

    def summary(self) -> dict[str, Any]:
        """Give the JSON-ready facts about the model's data in this sweep."""
        return {
            "name": self.name,
            "options": dict(self.ref.options),
            "dim": self.dim,
            "train_rows": self.train.rows,
            "eval_rows": self.evaluation.rows if self.evaluation is not None else None,
            "train_entry": str(self.train.path),
            "eval_entry": str(self.evaluation.path) if self.evaluation is not None else None,
        }


@dataclass
class SweepData:
    """The anchors and every model's view, checked to describe the same rows and classes."""

    dataset: DatasetSpec
    manifest: AnchorManifest
    models: dict[str, ModelView]
    dataset_fingerprint: str
    class_names: list[str]
    train_labels: np.ndarray
    eval_labels: np.ndarray | None

    @property
    def dataset_id(self) -> str:
        """The dataset's identity in cache keys."""
        return self.dataset.dataset_id

    @property
    def num_classes(self) -> int:
        """The number of classes of the dataset."""
        return len(self.class_names)


def resolve_sweep_dataset(store: EmbeddingStore, settings: StitchSettings, models: Sequence[str], reporter: Reporter) -> DatasetSpec:
    """Give the settings' dataset resolved once: a ``packaged:`` dataset is written first (and the packaged models
    among ``models`` registered), then the name and the dataset options are resolved (no rows are read)."""
    from stitchcli.assets import resolve_given_dataset

    return resolve_given_dataset(store, settings.dataset, settings.data, models, reporter)


def ensure_embeddings(
    store: EmbeddingStore, ref: ModelRef, data: DatasetSpec, split: str, settings: StitchSettings, reporter: Reporter
) -> CachedEmbeddings:
    """Give a model's cached embeddings of one split (arrays loaded), embedding them first if missing."""
    from stitchcli.embedding import embed, load_embeddings

    try:
        return load_embeddings(store, ref, data, split, limit=settings.limit, seed=settings.embed_seed)
    except NotCached:
        pass
    reporter.info(f"{ref.name} has no cached embeddings of {settings.dataset}/{split}: embedding them now")
    options = EmbedOptions(batch_size=settings.embed_batch_size, device=settings.device, limit=settings.limit, seed=settings.embed_seed,
                           trust_remote_code=settings.trust_remote_code)
    embed([ref], data, [split], store=store, options=options, reporter=reporter)
    return load_embeddings(store, ref, data, split, limit=settings.limit, seed=settings.embed_seed)


def ensure_anchors(
    store: EmbeddingStore, settings: StitchSettings, data: DatasetSpec, train: CachedEmbeddings, reporter: Reporter, refs: Sequence[ModelRef] = ()
) -> AnchorManifest:
    """Give the sweep's default anchor manifest (``settings.anchors`` is None: named anchors are loaded by prepare).

    The default draw is saved under :func:`~stitchcli.anchors.default_anchor_name` and reused while it
    still describes the same choice of the same data; otherwise it is drawn again and replaced.
    """
    from stitchcli.anchors import choose_anchors

    num = settings.num_anchors
    if num is not None and num > train.rows:
        raise UsageError(
            f"--num-anchors {num} is more than the {train.rows} rows of the training split {settings.train_split!r}: "
            f"ask for at most {train.rows}"
        )
    if num is None:
        num = min(DEFAULT_NUM, train.rows)
        if num < DEFAULT_NUM:
            reporter.info(f"using all {num} training rows as anchors (fewer than the default {DEFAULT_NUM})")
    chooser: ModelRef | None = None
    if STRATEGIES[settings.anchor_strategy].needs_embeddings:
        chooser = {ref.name: ref for ref in refs}.get(str(settings.anchor_model))
        if chooser is None:
            raise UsageError(f"--anchor-model {settings.anchor_model} is not one of the models: name one of {', '.join(r.name for r in refs)}")
    else:
        settings = replace(settings, anchor_model=None)
    name = default_anchor_name(data, settings.train_split, settings.anchor_strategy, num, settings.anchor_seed,
                               model=settings.anchor_model, limit=settings.limit)
    if settings.limit is not None and settings.embed_seed:
        name += f"-e{settings.embed_seed}"
    wanted = {
        "dataset_id": data.dataset_id,
        "dataset_fingerprint": train.metadata["key"].get("dataset_fingerprint"),
        "split": settings.train_split,
        "strategy": settings.anchor_strategy,
        "seed": settings.anchor_seed,
        "num": num,
        "limit": settings.limit,
        "limit_seed": settings.embed_seed if settings.limit is not None else None,
        "dataset_options": settings.data.given(),
        "model": settings.anchor_model,
        "model_options": dict(chooser.options) if chooser is not None else {},
    }
    try:
        saved: AnchorManifest | None = load_anchor_manifest(store, name)
    except UsageError:
        saved = None
    if saved is not None and all(getattr(saved, key) == value for key, value in wanted.items()):
        return saved
    manifest = choose_anchors(
        store, data, split=settings.train_split, num=num, strategy=settings.anchor_strategy, seed=settings.anchor_seed,
        model=chooser, limit=settings.limit, embed_seed=settings.embed_seed, name=name, reporter=reporter, dataset_options=settings.data,
    )
    path = save_anchor_manifest(store, manifest, force=True)
    reporter.info(f"saved anchors {manifest.name!r} ({manifest.num} rows of {settings.train_split}): {path}")
    return manifest


def prepare(
    store: EmbeddingStore,
    refs: Sequence[ModelRef],
    settings: StitchSettings,
    data: DatasetSpec,
    *,
    reporter: Reporter | None = None,
    evaluation: bool = True,
    manifest: AnchorManifest | None = None,
    heads: bool = True,
) -> SweepData:
    """Give the sweep's data: every model's embeddings (built if missing) and anchor embeddings.

    Args:
        store: the cache.
        refs: the models.
        settings: the sweep's settings.
        data: the settings' dataset, resolved (:func:`resolve_sweep_dataset`).
        reporter: where progress goes.
        evaluation: also the evaluation split (fit-head needs only the training split).
        manifest: anchors to use (default: ``settings.anchors``, else the default draw).
        heads: False when no head is trained on the data (``similarity``): the evaluated split may then be
            the training split (:meth:`StitchSettings.check`).

    Raises:
        UsageError: a model named twice, anchors of another dataset or split or not in a model's cache,
            a split that does not exist, models whose rows or classes disagree.
    """
    reporter = reporter or Reporter()
    settings.check(heads=heads)
    names = [ref.name for ref in refs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UsageError(f"model {', '.join(repeated)} is listed twice: name each model once")
    if manifest is None and settings.anchors is not None:
        manifest = load_anchor_manifest(store, settings.anchors)
    if manifest is not None:
        _check_manifest_before_work(manifest, settings, data)
        if manifest.limit is not None and settings.limit is None:  # valid (the subset's rows are in the split), maybe not meant
            reporter.warn(f"anchors {manifest.name!r} were drawn from the --limit {manifest.limit} subset, and without --limit "
                          f"the whole split is embedded: pass --limit {manifest.limit} to work on that subset")
    if settings.anchor_model is not None and STRATEGIES[settings.anchor_strategy].needs_embeddings and settings.anchor_model not in names:
        raise UsageError(f"--anchor-model {settings.anchor_model} is not one of the models: name one of {', '.join(names)}")
    if heads:  # before any embedding: a head is trained on the training split's labels and scored on the evaluated split's
        for split in [settings.train_split] + ([settings.split] if evaluation else []):
            require_labels(store, refs[0], data, split, settings)
    train = {ref.name: ensure_embeddings(store, ref, data, settings.train_split, settings, reporter) for ref in refs}
    evals = {ref.name: ensure_embeddings(store, ref, data, settings.split, settings, reporter) for ref in refs} if evaluation else {}
    first = train[names[0]]
    if manifest is None:
        manifest = ensure_anchors(store, settings, data, first, reporter, refs)
    views: dict[str, ModelView] = {}
    for ref in refs:
        anchors = select_anchor_rows(manifest, train[ref.name], model=ref.name)
        views[ref.name] = ModelView(ref, train[ref.name], evals.get(ref.name), np.asarray(anchors.embeddings, dtype=np.float32))
    class_names = list(first.metadata.get("class_names") or [])
    if not class_names:
        class_names = [str(i) for i in range(int(first.labels.max()) + 1)] if first.rows else []
    for view in views.values():
        _check_same_rows(views[names[0]], view, "train", settings.train_split)
        if view.evaluation is not None:
            _check_same_rows(views[names[0]], view, "evaluation", settings.split)
        other = list(view.train.metadata.get("class_names") or [])
        if other and other != class_names:
            raise UsageError(f"{view.name} and {names[0]} disagree on the class names of {settings.dataset}: embed both with the same label column")
    if heads and (alike := alike_class_names(class_names)):
        shown = "; ".join(", ".join(repr(name) for name in group) for group in alike[:3]) + (f" and {len(alike) - 3} more" if len(alike) > 3 else "")
        reporter.warn(f"class names that differ only in case or surrounding spaces are different classes: {shown}; "
                      "write each class one way in the label column if they are one")
    eval_view = views[names[0]].evaluation
    unseen = sorted(set(eval_view.labels.tolist()) - set(first.labels.tolist())) if eval_view is not None and heads else []
    if unseen:  # a --limit subset can lack a rare class: warn rather than refuse
        shown = ", ".join(repr(class_names[i]) if i < len(class_names) else str(i) for i in unseen)  # quoted: 'dog ' shows its space
        reporter.warn(f"class(es) {shown} of split {settings.split!r} never occur in {settings.train_split!r}: no head learns them, so their rows count as errors")
    return SweepData(
        dataset=data,
        manifest=manifest,
        models=views,
        dataset_fingerprint=str(first.metadata["key"].get("dataset_fingerprint")),
        class_names=class_names,
        train_labels=np.asarray(first.labels, dtype=np.int64),
        eval_labels=np.asarray(eval_view.labels, dtype=np.int64) if eval_view is not None else None,
    )


def require_labels(store: EmbeddingStore, ref: ModelRef, data: DatasetSpec, split: str, settings: StitchSettings) -> None:
    """Refuse (UsageError, one line) a split read without labels, before a class head is trained on it or scored on it.

    Reads as little as it can: the option given (``--label-column NAME`` or ``none``), else the model's cache
    entry when there is one, else the split's columns (no row).
    """
    from stitchcli.data import split_label_column
    from stitchcli.data.base import NO_LABELS
    from stitchcli.embedding import entry_key, resolve_model_spec

    if data.label_column is not None and data.label_column != NO_LABELS:
        return  # a named column: reading the split checks it holds labels
    if data.label_column == NO_LABELS:
        why = f"it is read with --label-column {NO_LABELS}"
    else:
        spec = resolve_model_spec(store, ref, seed=settings.embed_seed)
        entry = store.lookup(spec.storage_name, entry_key(spec, data, split, limit=settings.limit, seed=settings.embed_seed))
        if entry is not None and entry.metadata.get("label_column") is not None:
            return
        columns: list[str] = []
        if entry is None:
            if data.kind == "hub":
                from stitchcli.hub import prefer_offline_when_unreachable

                prefer_offline_when_unreachable()
            label, columns = split_label_column(data, split)
            if label is not None:
                return
        else:  # read without labels when it was embedded: the columns to choose from, where they can be read
            with contextlib.suppress(StitchError):
                columns = split_label_column(data, split)[1]
        why = "no column of it is recognised as labels" + (f"; its columns: {', '.join(columns)}" if columns else "")
    raise UsageError(
        f"dataset '{printable(settings.dataset)}' split '{printable(split)}' has no labels ({why}), and fit-head, stitch and eval train and score "
        "class heads on labels: pass --label-column NAME naming its class column (embed and similarity need no labels)"
    )


def _check_manifest_before_work(manifest: AnchorManifest, settings: StitchSettings, data: DatasetSpec) -> None:
    """Refuse anchors of another dataset, split or subset before any model work (UsageError)."""
    if manifest.dataset_id != data.dataset_id:
        raise UsageError(f"anchors {manifest.name!r} are rows of {manifest.dataset_id}, not of the requested dataset {data.dataset_id}: choose anchors of this dataset")
    if manifest.split != settings.train_split:
        raise UsageError(
            f"anchors {manifest.name!r} are rows of split {manifest.split!r}, but heads train on {settings.train_split!r}: "
            f"pass --train-split {manifest.split} or anchors of {settings.train_split!r}"
        )
    if settings.num_anchors is not None and settings.num_anchors != manifest.num:
        raise UsageError(f"anchors {manifest.name!r} hold {manifest.num} anchors, not the --num-anchors {settings.num_anchors} requested: drop one of the two")
    # a draw asked for (not the defaults) that the saved anchors did not come from: said, not silently ignored
    for name, asked, saved in (("anchor_strategy", settings.anchor_strategy, manifest.strategy), ("anchor_seed", settings.anchor_seed, manifest.seed)):
        declared = by_name(name)
        if asked != declared.default and asked != saved:
            raise UsageError(f"anchors {manifest.name!r} were drawn with {declared.flag} {saved}, not the {declared.flag} {asked} "
                             "requested: drop one of the two")
    if settings.limit is not None and manifest.limit != settings.limit:
        drawn = f"the --limit {manifest.limit} subset" if manifest.limit is not None else "the whole split"
        raise UsageError(
            f"anchors {manifest.name!r} were drawn from {drawn}, and --limit {settings.limit} embeds another subset "
            f"that lacks some of them: pass --limit {manifest.limit} or choose anchors with --limit {settings.limit}"
            if manifest.limit is not None else
            f"anchors {manifest.name!r} were drawn from the whole split, and --limit {settings.limit} embeds a subset "
            f"that lacks some of them: drop --limit, or choose anchors with `stitchcli anchor --limit {settings.limit}`"
        )


def _check_same_rows(reference: ModelView, view: ModelView, part: str, split: str) -> None:
    a = getattr(reference, part)
    b = getattr(view, part)
    if not (np.array_equal(a.ids, b.ids) and np.array_equal(a.labels, b.labels)):
        raise UsageError(
            f"{view.name} and {reference.name} hold different rows of split {split!r} ({b.rows} and {a.rows} rows): "
            "embed both with the same --limit and --seed"
        )
