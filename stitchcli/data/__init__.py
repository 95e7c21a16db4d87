"""Dataset name -> rows (input, label, id): known aliases, any hub id, local folders and files.

``resolve_dataset`` turns what the user typed into a cheap :class:`DatasetSpec`;
``dataset_fingerprint`` gives the data half of a cache key; ``load_split`` reads one split's labels
and gives a picklable way to fetch its inputs. Names are tried in this order: a known alias (case
and ``-``/``_``/``:`` ignored), an existing path, a hub id ``ORG/NAME[:CONFIG]``. A local folder
named like an alias is reached as ``./name``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from stitchcli.data import hub, local
from stitchcli.data.aliases import ALIASES, canonical_alias, close_dataset_names, list_aliases
from stitchcli.data.base import (
    NO_LABELS,
    UNLABELLED,
    DatasetSpec,
    SplitData,
    printable,
    random_subset,
    stratified_subset,
)
from stitchcli.data.columns import ColumnInfo, encode_labels, infer_columns
from stitchcli.data.packaged import PACKAGED_DATASETS, PACKAGED_PREFIX
from stitchcli.data.sources import SplitSource, unknown_split
from stitchcli.errors import UsageError

__all__ = [
    "NO_LABELS",
    "UNLABELLED",
    "DatasetSpec",
    "SplitData",
    "dataset_fingerprint",
    "list_aliases",
    "load_split",
    "random_subset",
    "resolve_dataset",
    "split_label_column",
    "stratified_subset",
]

# kind -> (open every split, fingerprint one split): one entry per way of storing data.
_KINDS: dict[str, tuple[Callable[[DatasetSpec], SplitSource], Callable[[DatasetSpec, str], str]]] = {
    "hub": (hub.open_hub, hub.hub_fingerprint),
    "disk": (local.open_disk, local.disk_fingerprint),
    "imagefolder": (local.open_imagefolder, local.imagefolder_fingerprint),
    "table": (local.open_table, local.table_fingerprint),
}

_ACCEPTED_FORMS = (
    "use an alias ({aliases}), "
    + " or ".join(PACKAGED_PREFIX + short for short in PACKAGED_DATASETS)
    + " (offline, from the demo extra), a hub id ORG/NAME[:CONFIG], or a local path (save_to_disk folder, "
    "image folder split/class/file, CSV/JSON/JSONL/Parquet file or folder)"
)


def _parse_input_columns(input_column: str | None) -> tuple[str, ...]:
    if input_column is None:
        return ()
    columns = tuple(c.strip() for c in input_column.split(","))
    if not all(columns):
        raise UsageError(f"--input-column '{input_column}' has an empty name; give NAME or NAME1,NAME2")
    return columns


def _looks_like_path(name: str) -> bool:
    return (
        name.startswith((".", "/", "~", "\\"))
        or name.count("/") > 1
        or name.lower().endswith(local.TABLE_SUFFIXES)
    )


def resolve_dataset(
    name: str,
    *,
    input_column: str | None = None,
    label_column: str | None = None,
    split_paths: dict[str, str] | None = None,
    revision: str | None = None,
) -> DatasetSpec:
    """Give the spec ``name`` stands for; reads no rows (only checks that local paths exist).

    Args:
        name: an alias (``cifar100-coarse``), a hub id (``org/name`` or ``org/name:config``), or a
            local path; with ``split_paths``, a label for those files.
        input_column: the input column, or a comma list of text columns joined with a space;
            overrides an alias's columns.
        label_column: the label column, or ``none`` (:data:`NO_LABELS`) to read the data without labels;
            overrides an alias's.
        split_paths: split name -> table file (``--split NAME=PATH``).
        revision: the hub revision (branch, tag or commit); hub datasets only.

    Raises:
        UsageError: an unknown name, a missing path, a folder with no accepted layout, or a
            revision for local data.
    """
    inputs = _parse_input_columns(input_column)
    if split_paths:
        spec = local.resolve_split_paths(name, split_paths)
    elif not name.strip():
        raise UsageError("the dataset name is empty; " + _ACCEPTED_FORMS.format(aliases=", ".join(ALIASES)))
    elif (alias := canonical_alias(name)) is not None:
        entry = ALIASES[alias]
        spec = DatasetSpec(name, "hub", entry.hub_id, entry.config, entry.input_columns, entry.label_column)
    elif Path(name).expanduser().exists():
        spec = local.resolve_local(name, Path(name))
    elif (parsed := hub.parse_hub_name(name)) is not None and not _looks_like_path(name):
        spec = DatasetSpec(name, "hub", parsed[0], parsed[1])
    elif _looks_like_path(name):
        raise UsageError(f"dataset path {name} does not exist; check the path")
    else:
        close = close_dataset_names(name)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UsageError(
            f"unknown dataset '{name}'; {hint}" + _ACCEPTED_FORMS.format(aliases=", ".join(ALIASES))
        )
    if revision is not None and spec.kind != "hub":
        raise UsageError(f"--revision applies to hub datasets only, and '{name}' is local; drop it")
    return replace(
        spec,
        input_columns=inputs or spec.input_columns,
        label_column=label_column if label_column is not None else spec.label_column,
        revision=revision,
    )


def dataset_fingerprint(spec: DatasetSpec, split: str) -> str:
    """Give the data half of a cache key for one split, cheaply enough to run on every command.

    ``hub``: ``id@revision`` (``main`` when unpinned); ``disk``: hash of the split's arrow and state
    files; ``imagefolder``: hash of the split folder's file names and sizes (contents are not read);
    ``table``: SHA-256 of the split's file.

    Raises:
        UsageError: a local dataset has no such split.
    """
    return _KINDS[spec.kind][1](spec, split)


def _source(spec: DatasetSpec, split: str) -> SplitSource:
    """Give the source of a dataset's rows, after refusing a split it lacks (UsageError naming those it has)."""
    source = _KINDS[spec.kind][0](spec)
    if split not in source.splits:
        raise unknown_split(spec.name, split, source.splits, folder=Path(spec.source) if spec.kind == "imagefolder" else None)
    return source


def _where(spec: DatasetSpec, split: str) -> str:
    return f"dataset '{printable(spec.name)}' split '{printable(split)}'"


def split_label_column(spec: DatasetSpec, split: str) -> tuple[str | None, list[str]]:
    """Give (the column :func:`load_split` reads a split's labels from, None when it reads the split without
    labels; the names of the split's columns, as a message listing what to choose from shows them), reading no row."""
    source = _source(spec, split)
    columns = source.columns(split)
    _, label, _ = infer_columns(columns, spec.input_columns, spec.label_column, where=_where(spec, split))
    return label, [printable(column.name) for column in columns]


def load_split(spec: DatasetSpec, split: str, *, limit: int | None = None, seed: int = 0) -> SplitData:
    """Give one split's row ids, labels and class names, and a picklable fetcher of its inputs.

    Columns the spec leaves open are inferred (see :func:`stitchcli.data.columns.infer_columns`). A split
    with no label column to infer, or read with ``--label-column none``, has no labels: every label is
    :data:`UNLABELLED`, there are no class names and ``label_column`` is None (``SplitData.labelled``).
    Rows keep the split's natural order (image folders: class by class in sorted class folder
    order, files sorted by name); with ``limit``, a seeded class-stratified subset is kept (a seeded
    uniform one without labels) and ``ids`` are its original row indices, ascending.

    Args:
        spec: from :func:`resolve_dataset`.
        split: the split name (``train``, ``test``…).
        limit: keep at most this many rows (class proportions kept; a uniform draw without labels).
        seed: seed of the ``limit`` subset.

    Raises:
        UsageError: unknown split or column, some rows unlabelled (label -1), a bad limit.
        WorkError: a hub dataset could not be downloaded.
    """
    if limit is not None and limit <= 0:
        raise UsageError(f"--limit must be a positive number of rows, not {limit}")
    source = _source(spec, split)
    where = _where(spec, split)
    num_rows = source.num_rows(split)
    if num_rows == 0:
        raise UsageError(f"{where} has no rows: give a split that holds data")
    columns = source.columns(split)
    inputs, label, modality = infer_columns(columns, spec.input_columns, spec.label_column, where=where)
    if label is None:
        labels, class_names = np.full(num_rows, UNLABELLED, dtype=np.int64), []
        ids = random_subset(num_rows, limit, seed) if limit is not None else np.arange(num_rows, dtype=np.int64)
    else:
        labels, class_names = _labels(source, split, label, columns, where, spec.name)
        ids = stratified_subset(labels, limit, seed) if limit is not None else np.arange(len(labels), dtype=np.int64)
    fetch = source.fetcher(split, inputs, modality)
    return SplitData(
        dataset_id=spec.dataset_id,
        split=split,
        modality=modality,
        ids=ids,
        labels=labels[ids],
        class_names=class_names,
        fingerprint=dataset_fingerprint(spec, split),
        fetch=fetch,
        num_rows_in_split=num_rows,
        input_columns=inputs,
        label_column=label,
        row_keys=getattr(fetch, "row_keys", None),
    )


_LABEL_FAMILY = {"string": "class names", "class_label": "class ids with names", "integer": "numbers", "float": "numbers"}
"""Label kinds whose values name classes alike: integer and float labels are both numbers (1 and 1.0 are one class)."""


def _labels(
    source: SplitSource, split: str, label: str, columns: Sequence[ColumnInfo], where: str, spec_name: str
) -> tuple[np.ndarray, list[str]]:
    """Give a labelled split's class ids and class names; UsageError when some rows have none (-1)."""
    label_info = next(c for c in columns if c.name == label)
    values = source.column_values(split, label)

    def every_split_values() -> list[np.ndarray]:
        every = [values]
        for other in source.splits:
            if other == split:
                continue
            info = source.column_info(other, label)
            if info is None or info.kind not in _LABEL_FAMILY:  # no labels there (a test file with no answers, or an
                continue  # empty column): it names no class, and reading that split says what it lacks
            if _LABEL_FAMILY[info.kind] != _LABEL_FAMILY.get(label_info.kind):
                raise UsageError(
                    f"label column '{printable(label)}' holds {_LABEL_FAMILY.get(label_info.kind, label_info.kind)} in split "
                    f"'{printable(split)}' but {_LABEL_FAMILY[info.kind]} in split '{printable(other)}' "
                    f"of dataset '{printable(spec_name)}', so their classes cannot be matched; write the same kind of label in every split"
                )
            every.append(source.column_values(other, label))
        return every

    labels, class_names = encode_labels(label_info, values, every_split_values, where=where)
    unlabelled = int((labels < 0).sum())
    if unlabelled:
        others = [s for s in source.splits if s != split]
        raise UsageError(
            f"{where} has no labels for {unlabelled} of {len(labels)} rows (a negative label: -1 and below mark a row as unlabelled); "
            f"label those rows, {'use another split (' + ', '.join(others) + ') if its rows all have labels, ' if others else ''}"
            "pass another --label-column, "
            f"or --label-column {NO_LABELS} to read it without labels (embed, similarity)"
        )
    return labels, class_names
