"""Which columns hold the input and the label, and how labels become class ids."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Literal, Sequence

import numpy as np

from stitchcli.data.base import NO_LABELS, Modality, printable
from stitchcli.errors import UsageError

ColumnKind = Literal["image", "image_path", "class_label", "string", "integer", "float", "other"]

# Checked in this order, case-insensitively, when the user names no column.
TEXT_COLUMN_NAMES = (
    "text",
    "sentence",
    "content",
    "document",
    "review",
    "question",
    "body",
    "article",
    "abstract",
    "passage",
    "description",
)
LABEL_COLUMN_NAMES = ("label", "labels", "class", "category", "target")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

_LABEL_KINDS = ("class_label", "integer", "string", "float")
MAX_INTEGER_CLASSES = 1_000_000  # integer labels name classes 0..largest; more than this is not a label column


@dataclass(frozen=True)
class ColumnInfo:
    """What one column of a split holds.

    Attributes:
        name: the column name.
        kind: ``image`` (decoded images, encoded bytes or {"bytes","path"} records), ``image_path``
            (strings naming image files), ``class_label`` (integers with names), ``string``,
            ``integer``, ``float`` or ``other``.
        class_names: the names of a ``class_label`` column, in id order.
    """

    name: str
    kind: ColumnKind
    class_names: tuple[str, ...] = ()


def _missing_column(name: str, columns: Sequence[ColumnInfo], where: str) -> UsageError:
    available = ", ".join(printable(c.name) for c in columns) or "none"
    return UsageError(
        f"{where} has no column '{printable(name)}' (columns: {available}); "
        "pass --input-column/--label-column with one of these"
    )


def infer_columns(
    columns: Sequence[ColumnInfo],
    input_columns: tuple[str, ...],
    label_column: str | None,
    *,
    where: str,
) -> tuple[tuple[str, ...], str | None, Modality]:
    """Give (input columns, label column, modality), checking given names and inferring missing ones.

    The label column is None when the split is read without labels: ``label_column`` is
    :data:`~stitchcli.data.base.NO_LABELS`, or it is None and no column looks like labels (by name, or a
    ``ClassLabel`` feature).

    Args:
        columns: the split's columns.
        input_columns: the input columns the user named; empty to infer them.
        label_column: the label column the user named, ``none`` for no labels, or None to infer it.
        where: how messages name the split, e.g. ``dataset 'x' split 'train'``.
    """
    by_name = {c.name: c for c in columns}
    label = _pick_label(columns, by_name, label_column, where)
    if input_columns:
        chosen = []
        for name in input_columns:
            if name not in by_name:
                raise _missing_column(name, columns, where)
            chosen.append(by_name[name])
        return input_columns, label, _modality_of(chosen, where)
    candidates = [c for c in columns if c.name != label]
    images = [c for c in candidates if c.kind in ("image", "image_path")]
    if images:
        return (images[0].name,), label, "image"
    texts = [c for c in candidates if c.kind == "string"]
    by_lower = {c.name.lower(): c for c in texts}
    for name in TEXT_COLUMN_NAMES:
        if name in by_lower:
            return (by_lower[name].name,), label, "text"
    if len(texts) == 1:
        return (texts[0].name,), label, "text"
    available = ", ".join(f"{printable(c.name)} ({c.kind})" for c in columns)
    raise UsageError(
        f"cannot tell which column of {where} is the input (columns: {available}); "
        "pass --input-column NAME (a comma list joins text columns)"
    )


def _pick_label(
    columns: Sequence[ColumnInfo], by_name: dict[str, ColumnInfo], label_column: str | None, where: str
) -> str | None:
    if label_column == NO_LABELS:
        return None
    if label_column is not None:
        if label_column not in by_name:
            raise _missing_column(label_column, columns, where)
        info = by_name[label_column]
        if info.kind not in _LABEL_KINDS:
            raise UsageError(
                f"column '{printable(label_column)}' of {where} holds {info.kind} values, not class labels; "
                "pass --label-column with a column of class names or integers"
            )
        return label_column
    by_lower = {c.name.lower(): c for c in columns if c.kind in _LABEL_KINDS}
    for name in LABEL_COLUMN_NAMES:
        if name in by_lower:
            return by_lower[name].name
    class_labels = [c for c in columns if c.kind == "class_label"]
    if class_labels:
        return class_labels[0].name
    return None  # no labels: embed and similarity read the split as it is; what trains on labels refuses it


def _modality_of(chosen: Sequence[ColumnInfo], where: str) -> Modality:
    kinds = {c.kind for c in chosen}
    if kinds <= {"image", "image_path"}:
        if len(chosen) > 1:
            raise UsageError(
                f"several input columns are joined only for text, but {where} columns "
                f"{', '.join(printable(c.name) for c in chosen)} hold images; pass one --input-column"
            )
        return "image"
    if kinds == {"string"}:
        return "text"
    wrong = next(c for c in chosen if c.kind != "string")
    raise UsageError(
        f"input column '{printable(wrong.name)}' of {where} holds {wrong.kind} values; "
        "pass --input-column with a text or image column"
    )


def encode_labels(
    info: ColumnInfo,
    values: np.ndarray,
    every_split_values: Callable[[], Iterable[np.ndarray]],
    *,
    where: str,
) -> tuple[np.ndarray, list[str]]:
    """Give (int64 class ids, class names) for a split's label values.

    Class names come from a ``class_label`` column's feature; string labels become ids in sorted
    order of the unique strings of every split together, and integer labels keep their value with
    names ``"0"``, ``"1"``, … up to the largest label of every split. Taking every split keeps ids
    and the number of classes the same in train and test even when a split lacks a class.
    Negative ids (``-1``: unlabelled, as in imdb's ``unsupervised`` split) are returned as they are;
    the caller reports them.

    Args:
        info: the label column.
        values: the split's label values.
        every_split_values: gives the label values of every split (read only when needed).
        where: how messages name the split.
    """
    if info.kind == "class_label":
        return _as_int_labels(values, info.name, where), list(info.class_names)
    if info.kind == "string":
        _reject_missing(values, info.name, where)
        seen = {str(v) for split_values in every_split_values() for v in split_values if v is not None}
        vocabulary = sorted(seen | {str(v) for v in values})
        index = {name: i for i, name in enumerate(vocabulary)}
        return np.array([index[str(v)] for v in values], dtype=np.int64), vocabulary
    ids = _as_int_labels(values, info.name, where)
    largest = int(ids.max(initial=-1))
    for split_values in every_split_values():
        largest = max(largest, int(_as_int_labels(split_values, info.name, where).max(initial=-1)))
    if largest >= MAX_INTEGER_CLASSES:  # ids 0..largest would all be classes: an id or count column, not labels
        raise UsageError(
            f"label column '{printable(info.name)}' of {where} holds integers up to {largest}, more classes than the "
            f"{MAX_INTEGER_CLASSES} integer labels may name; pass --label-column with class ids 0..K-1 or class names"
        )
    return ids, [str(i) for i in range(largest + 1)]


def alike_class_names(names: Sequence[str]) -> list[list[str]]:
    """Give the groups of class names that differ only in case or surrounding spaces (``cat``, ``Cat ``): most
    likely one class typed several ways, which labels keep apart as they are written."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(str(name).strip().casefold(), []).append(str(name))
    return [group for group in groups.values() if len(group) > 1]


def _empty_labels(column: str, where: str) -> UsageError:
    return UsageError(
        f"label column '{printable(column)}' of {where} has empty values; fill them in or pass another --label-column"
    )


def _reject_missing(values: Iterable[object], column: str, where: str) -> None:
    if any(v is None or (isinstance(v, float) and np.isnan(v)) for v in values):
        raise _empty_labels(column, where)


def _as_int_labels(values: np.ndarray, column: str, where: str) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype == object:
        _reject_missing(array, column, where)
        try:
            array = array.astype(np.float64)
        except (TypeError, ValueError):
            raise UsageError(
                f"label column '{printable(column)}' of {where} mixes numbers and other values; pass another --label-column"
            ) from None
    if array.dtype.kind == "u" and array.size and int(array.max()) >= 2**63:
        array = array.astype(np.float64)  # past int64: refused as huge below
    if array.dtype.kind == "f":
        if np.isnan(array).any():
            raise _empty_labels(column, where)
        if not np.isfinite(array).all() or (array.size and float(np.abs(array).max()) >= 2**53):
            raise UsageError(
                f"label column '{printable(column)}' of {where} holds infinite or huge numbers, not classes; "
                "pass --label-column with a column of class names or integers"
            )
        if not np.all(array == np.round(array)):
            raise UsageError(
                f"label column '{printable(column)}' of {where} holds fractional numbers, not classes; "
                "pass --label-column with a column of class names or integers"
            )
    return array.astype(np.int64)
