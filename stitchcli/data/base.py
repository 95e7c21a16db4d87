"""Records that describe a dataset and the rows of one split, shared by every dataset source."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Literal, Sequence

import numpy as np

Modality = Literal["image", "text"]

NO_LABELS = "none"
"""The ``--label-column`` value that reads a dataset without labels (``embed`` and ``similarity`` need none)."""
UNLABELLED = -1
"""The label every row of a split read without labels holds (with no class names): never a class id."""


@dataclass(frozen=True)
class DatasetSpec:
    """Which data a name stands for; cheap to build (no data is read) and part of the cache key.

    Attributes:
        name: the name as the user typed it (an alias, a hub id, or a path).
        kind: ``hub`` (datasets.load_dataset), ``disk`` (a save_to_disk folder), ``imagefolder``
            (split/class/file) or ``table`` (CSV/JSON/JSONL/Parquet files).
        source: the canonical hub id, or an absolute path.
        config: the hub configuration name, if any.
        input_columns: the input column(s); several text columns are joined with a space
            (dbpedia_14: title + content). Empty when still to be inferred from the features.
        label_column: the label column, None when still to be inferred (a split with no column to infer is read
            without labels), or :data:`NO_LABELS` to read every split without labels.
        revision: the hub revision the user asked for, if any.
        split_paths: for ``table`` data, split name -> absolute file path.
    """

    name: str
    kind: Literal["hub", "disk", "imagefolder", "table"]
    source: str
    config: str | None = None
    input_columns: tuple[str, ...] = ()
    label_column: str | None = None
    revision: str | None = None
    split_paths: tuple[tuple[str, str], ...] = ()

    @property
    def dataset_id(self) -> str:
        """The identity used in cache keys and file names: hub id (with config) or path."""
        return self.source if self.config is None else f"{self.source}:{self.config}"

    def to_dict(self) -> dict[str, Any]:
        """Give a JSON-ready description."""
        d = asdict(self)
        d["input_columns"] = list(self.input_columns)
        d["split_paths"] = dict(self.split_paths)
        return d


@dataclass
class SplitData:
    """The rows of one split (possibly a --limit subset), with labels and a way to fetch inputs.

    A split read without labels (no label column, or ``--label-column none``) has ``label_column`` None, no
    class names, and every label :data:`UNLABELLED`. ``ids`` are the row indices in the original split, ascending; ``labels[i]`` belongs to ``ids[i]``.
    ``get_inputs(positions)`` returns the inputs at positions into ``ids`` (not row ids): PIL images
    in RGB for image data, strings for text data. It must be picklable (DataLoader workers call it).
    ``row_keys(row ids)``, when the source can name its rows cheaply (table files, image folders), gives
    one string per row that changes when the row's input does: finished shards are reused by rows, not
    only by whole datasets (see :mod:`stitchcli.shard_reuse`).
    """

    dataset_id: str
    split: str
    modality: Modality
    ids: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    fingerprint: str
    fetch: Callable[[Sequence[int]], list[Any]] = field(repr=False)
    num_rows_in_split: int = 0
    input_columns: tuple[str, ...] = ()
    label_column: str | None = None
    row_keys: Callable[[Sequence[int]], list[str]] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def labelled(self) -> bool:
        """Whether the rows have labels (False: read without a label column, every label :data:`UNLABELLED`)."""
        return self.label_column is not None

    def get_inputs(self, positions: Sequence[int]) -> list[Any]:
        """Give the inputs at these positions (indices into ``ids``)."""
        return self.fetch([int(self.ids[p]) for p in positions])


def printable(text: object) -> str:
    """Give ``text`` with its control characters escaped (a newline as \\n), so an error message naming a
    column, split or file stays on one line whatever the data calls it."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def first_line(exc: BaseException) -> str:
    """Give the first line of an exception's message (its type name when the message is empty)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def stratified_subset(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Give ascending row indices of a seeded, class-stratified subset of ``limit`` rows.

    Each class gets its share of ``limit`` by largest remainder, so class proportions are kept; the
    choice depends only on the labels, the limit and the seed, hence is the same for every model.
    """
    n = int(labels.shape[0])
    if limit >= n:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * (limit / n)
    quota = np.floor(exact).astype(np.int64)
    remainder = limit - int(quota.sum())
    if remainder > 0:
        order = np.argsort(-(exact - quota), kind="stable")
        quota[order[:remainder]] += 1
    chosen = []
    for cls, q in zip(classes, quota):
        members = np.flatnonzero(labels == cls)
        chosen.append(rng.permutation(members)[:q])
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def random_subset(num_rows: int, limit: int, seed: int) -> np.ndarray:
    """Give ascending row indices of a seeded uniform subset of ``limit`` of ``num_rows`` rows (all when fewer).

    What ``--limit`` keeps of a split without labels (there are no classes to stratify by); the choice depends
    only on the row count, the limit and the seed, hence is the same for every model.
    """
    if limit >= num_rows:
        return np.arange(num_rows, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).permutation(num_rows)[:limit]).astype(np.int64)
