"""Anchors: the training rows every model encodes as shared reference points, and the manifest naming them.

A manifest records which rows of which split of which data were chosen, how and with what seed, so
that every model's anchor embeddings are the same samples (docs/METHOD.md §4). Anchors come from a
training split only. ``ids`` are the split's original row ids (the ``ids`` tensor of every cache
entry), always in ascending order; ``labels[i]`` belongs to ``ids[i]``.

    from stitchcli.anchors import anchor_embeddings, choose_anchors, save_anchor_manifest
    from stitchcli.models import ModelRef

    manifest = choose_anchors(store, "./images", num=1280, strategy="uniform", seed=0)
    save_anchor_manifest(store, manifest)
    anchors = anchor_embeddings(store, manifest, ModelRef("resnet18")).embeddings

The same arguments give the same ids on any machine (see :mod:`~stitchcli.anchors.strategies`). fps and kmeans
depend on the cached embeddings, which differ across hardware: the manifest records the cache key digest of the
entry that chose them, and the manifest (not a rerun) is the thing to share.

Modules, one job each: :mod:`~stitchcli.anchors.strategies` (the registry of ways to choose rows),
:mod:`~stitchcli.anchors.manifest` (the manifest: its fields, names, saving, loading, checksum),
:mod:`~stitchcli.anchors.choosing` (choosing rows from a split; a model's embeddings of a manifest's rows).
"""

from __future__ import annotations

from stitchcli.anchors.choosing import (
    DEFAULT_NUM,
    AnchorEmbeddings,
    anchor_embeddings,
    choose_anchors,
    is_evaluation_split,
    select_anchor_rows,
)
from stitchcli.anchors.manifest import (
    ANCHORS_FOLDER,
    CHECKSUM_KEY,
    SCHEMA_VERSION,
    AnchorManifest,
    anchors_folder,
    check_anchor_name,
    default_anchor_name,
    list_anchor_manifests,
    load_anchor_manifest,
    save_anchor_manifest,
)
from stitchcli.anchors.strategies import (
    KMEANS_ITERATIONS,
    STRATEGIES,
    AnchorPool,
    AnchorStrategy,
    Selection,
    balanced_quotas,
    get_anchor_strategy,
    list_anchor_strategies,
)

__all__ = [
    "ANCHORS_FOLDER",
    "CHECKSUM_KEY",
    "DEFAULT_NUM",
    "KMEANS_ITERATIONS",
    "SCHEMA_VERSION",
    "STRATEGIES",
    "AnchorEmbeddings",
    "AnchorManifest",
    "AnchorPool",
    "AnchorStrategy",
    "Selection",
    "anchor_embeddings",
    "anchors_folder",
    "balanced_quotas",
    "check_anchor_name",
    "choose_anchors",
    "default_anchor_name",
    "get_anchor_strategy",
    "is_evaluation_split",
    "list_anchor_manifests",
    "list_anchor_strategies",
    "load_anchor_manifest",
    "save_anchor_manifest",
    "select_anchor_rows",
]
