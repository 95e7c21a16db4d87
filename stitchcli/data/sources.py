"""How rows are read: Hugging Face datasets, table files and image folders behind one interface.

Each source answers the same questions (which splits, which columns, a column's values, a picklable
fetcher of inputs), so column inference and label encoding are written once in ``stitchcli.data``.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

import numpy as np

from stitchcli.data.base import Modality, printable
from stitchcli.data.columns import IMAGE_EXTENSIONS, ColumnInfo
from stitchcli.errors import UsageError

if TYPE_CHECKING:
    import datasets
    import pyarrow as pa
    from PIL import Image

Fetch = Callable[[Sequence[int]], list[Any]]

TABLE_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet")


class SplitSource(Protocol):
    """The rows of every split of one dataset."""

    splits: list[str]

    def columns(self, split: str) -> list[ColumnInfo]:
        """Give the split's columns."""
        ...

    def num_rows(self, split: str) -> int:
        """Give the split's row count."""
        ...

    def column_values(self, split: str, name: str) -> np.ndarray:
        """Give one column's values in row order (object array for strings)."""
        ...

    def fetcher(self, split: str, input_columns: tuple[str, ...], modality: Modality) -> Fetch:
        """Give a picklable callable: row ids -> inputs (RGB PIL images or strings)."""
        ...


# --- decoding inputs -------------------------------------------------------------------------------


def to_rgb_image(value: Any, base_dir: str | None = None) -> "Image.Image":
    """Give an RGB PIL image from a PIL image, array, encoded bytes, a path or a {"bytes","path"} record.

    Relative paths are taken relative to ``base_dir`` (the folder of the table file that names them).
    """
    from PIL import Image

    if isinstance(value, Image.Image):
        return _converted(value, "an image value")
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _open_image(io.BytesIO(bytes(value)), "an encoded image value in the dataset")
    if isinstance(value, (str, os.PathLike)):
        path = Path(value)
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        if not path.is_file():
            raise UsageError(f"image file {printable(path)} does not exist (or is not a file); fix the path in the dataset")
        return _open_image(path, f"image file {printable(path)}")
    if isinstance(value, np.ndarray):
        array = value
        if array.dtype.kind not in "biuf" or array.ndim not in (2, 3) or array.size == 0:
            raise UsageError(f"cannot read an image from an array of shape {array.shape} ({array.dtype}); pass an image --input-column")
        if array.dtype != np.uint8:
            floats = array.dtype.kind == "f"
            array = np.nan_to_num(np.asarray(array, dtype=np.float64))
            if floats and float(array.max()) <= 1.0:
                array = array * 255.0  # float images in [0, 1]
            array = np.clip(array, 0, 255).astype(np.uint8)
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        try:
            image = Image.fromarray(array)
        except (TypeError, ValueError):
            raise UsageError(f"cannot read an image from an array of shape {value.shape}; pass an image --input-column") from None
        return _converted(image, "an image array in the dataset")
    raise UsageError(f"cannot read an image from a {type(value).__name__} value; pass an image --input-column")


# What Pillow raises for a file that is not a readable image: UnidentifiedImageError and truncated data are
# OSErrors, an image that claims billions of pixels a DecompressionBombError, a mode it cannot convert a ValueError.
def _image_errors() -> tuple[type[BaseException], ...]:
    from PIL import Image

    return (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def _converted(image: "Image.Image", what: str) -> "Image.Image":
    """Give ``image`` in RGB; UsageError naming ``what`` when Pillow cannot convert it."""
    if image.mode == "RGB":
        return image
    try:
        return image.convert("RGB")
    except _image_errors() as exc:
        raise UsageError(f"cannot convert {what} (mode {image.mode}) to RGB: {_first_line(exc)}; fix or remove it") from None


def _open_image(source: Any, what: str) -> "Image.Image":
    """Give the RGB image decoded from a path or file object; UsageError naming ``what`` when it is not one."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(source) as image:
            return image.convert("RGB")  # a copy: it outlives the file (convert decodes the whole image)
    except UnidentifiedImageError:
        empty = (isinstance(source, Path) and source.stat().st_size == 0) or (
            isinstance(source, io.BytesIO) and not source.getbuffer().nbytes
        )
        reason = "it is empty" if empty else "not an image format Pillow reads"
        raise UsageError(f"cannot decode {what}: {reason}; fix or remove it") from None
    except _image_errors() as exc:
        raise UsageError(f"cannot decode {what}: {_first_line(exc)}; fix or remove it") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def join_text(parts: Sequence[Any]) -> str:
    """Give the input columns of one row joined with a space (empty values left out)."""
    return " ".join(str(p) for p in parts if p is not None and p != "")


def _decode_rows(columns: list[list[Any]], modality: Modality, base_dir: str | None = None) -> list[Any]:
    if modality == "image":
        return [to_rgb_image(v, base_dir) for v in columns[0]]
    return [join_text(parts) for parts in zip(*columns)]


# --- Hugging Face datasets (hub and save_to_disk) ---------------------------------------------------


def _hf_column_info(name: str, feature: Any) -> ColumnInfo:
    import datasets

    if isinstance(feature, datasets.Image):
        return ColumnInfo(name, "image")
    if isinstance(feature, datasets.ClassLabel):
        return ColumnInfo(name, "class_label", tuple(feature.names))
    if isinstance(feature, datasets.Value):
        dtype = feature.dtype
        if dtype in ("string", "large_string"):
            return ColumnInfo(name, "string")
        if dtype in ("binary", "large_binary"):
            return ColumnInfo(name, "image")  # encoded image bytes
        if dtype.startswith(("int", "uint", "bool")):
            return ColumnInfo(name, "integer")
        if dtype.startswith("float"):
            return ColumnInfo(name, "float")
    return ColumnInfo(name, "other")


class HFDatasetFetcher:
    """Fetch inputs from a ``datasets.Dataset``.

    The dataset is memory-mapped from its arrow files and pickles as a reference to them, so
    DataLoader workers receive it cheaply.
    """

    def __init__(self, dataset: "datasets.Dataset", input_columns: tuple[str, ...], modality: Modality):
        self.dataset = dataset.select_columns(list(input_columns))
        self.input_columns = input_columns
        self.modality = modality

    def __call__(self, row_ids: Sequence[int]) -> list[Any]:
        rows = [int(i) for i in row_ids]
        try:
            batch = self.dataset[rows]  # datasets decodes Image features here
        except _image_errors() as exc:
            if self.modality != "image":
                raise
            shown = ", ".join(map(str, rows[:5])) + ("…" if len(rows) > 5 else "")
            raise UsageError(f"cannot decode the images of rows {shown}: {_first_line(exc)}; fix or remove them") from None
        return _decode_rows([batch[c] for c in self.input_columns], self.modality)


class HFSplitSource:
    """The splits of a ``datasets.DatasetDict`` (or of one ``Dataset`` under one split name)."""

    def __init__(self, splits: dict[str, "datasets.Dataset"]):
        self._datasets = splits
        self.splits = list(splits)

    def columns(self, split: str) -> list[ColumnInfo]:
        features = self._datasets[split].features
        return [_hf_column_info(name, feature) for name, feature in features.items()]

    def num_rows(self, split: str) -> int:
        return len(self._datasets[split])

    def column_values(self, split: str, name: str) -> np.ndarray:
        # Arrow format skips decoding (no image is opened to read the labels) and honours any
        # indices mapping the dataset carries.
        table = self._datasets[split].select_columns([name]).with_format("arrow")[:]
        return table.column(0).to_numpy(zero_copy_only=False)

    def fetcher(self, split: str, input_columns: tuple[str, ...], modality: Modality) -> Fetch:
        return HFDatasetFetcher(self._datasets[split], input_columns, modality)


# --- table files (CSV/TSV/JSON/JSONL/Parquet) ---------------------------------------------------------


def read_table(path: str | os.PathLike[str], columns: Sequence[str] | None = None) -> "pa.Table":
    """Give the table in a CSV, TSV, JSON (records or lines), JSONL or Parquet file.

    Args:
        path: the file; its suffix says the format.
        columns: read only these columns (all when None).
    """
    import pyarrow as pa

    p = Path(path)
    suffix = p.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(p, columns=list(columns) if columns is not None else None)
        elif suffix in (".csv", ".tsv"):
            import pyarrow.csv as pcsv

            table = pcsv.read_csv(
                p,
                parse_options=pcsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ","),
                # empty cells are missing values: an empty label is reported, an empty text skipped
                convert_options=pcsv.ConvertOptions(
                    strings_can_be_null=True,
                    include_columns=list(columns) if columns is not None else None,
                ),
            )
        elif suffix in (".json", ".jsonl"):
            table = _read_json(p)
            if columns is not None:
                table = table.select(list(columns))
        else:
            raise UsageError(f"{p} is not a table file; use one of {', '.join(TABLE_SUFFIXES)}")
    except PermissionError:
        raise UsageError(f"cannot read table file {p}: permission denied; make it readable or choose another dataset") from None
    except (pa.ArrowException, OSError, ValueError, KeyError, TypeError, OverflowError, RecursionError) as exc:
        raise UsageError(f"cannot read table file {p}: {_first_line(exc)}") from exc
    names = table.column_names
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"table file {p} has {len(twice)} column name(s) more than once ({', '.join(map(repr, twice))}): give each column its own name")
    return table


def _read_json(path: Path) -> "pa.Table":
    import pyarrow as pa

    text = path.read_text(encoding="utf-8")
    records: Any
    try:
        records = json.loads(text)
    except json.JSONDecodeError:
        # .json files are often JSON lines (what datasets' to_json writes)
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    if isinstance(records, dict):
        if all(isinstance(v, list) for v in records.values()):
            return pa.table(records)  # {"column": [values...]}
        records = [records]
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ValueError("expected a list of records, one JSON object per row")
    return pa.Table.from_pylist(records)


def _arrow_column_info(name: str, column: "pa.ChunkedArray") -> ColumnInfo:
    import pyarrow as pa

    t = column.type
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return ColumnInfo(name, "image")
    if pa.types.is_struct(t) and any(t.field(i).name in ("bytes", "path") for i in range(t.num_fields)):
        return ColumnInfo(name, "image")  # the {"bytes", "path"} records of Hugging Face parquet files
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        sample = [v for v in column.slice(0, 50).to_pylist() if v is not None][:20]
        if sample and all(str(v).lower().endswith(IMAGE_EXTENSIONS) for v in sample):
            return ColumnInfo(name, "image_path")
        return ColumnInfo(name, "string")
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        return ColumnInfo(name, "integer")
    if pa.types.is_floating(t):
        return ColumnInfo(name, "float")
    return ColumnInfo(name, "other")


class TableFetcher:
    """Fetch inputs from a table file, reading it once per process on first use.

    Pickles as the file path and column names only: each DataLoader worker reads the file itself
    (a forked worker inherits the table already read).
    """

    def __init__(
        self,
        path: str,
        input_columns: tuple[str, ...],
        modality: Modality,
        table: "pa.Table | None" = None,
    ):
        self.path = path
        self.input_columns = input_columns
        self.modality = modality
        self._table = table.select(list(input_columns)) if table is not None else None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_table"] = None
        return state

    def __call__(self, row_ids: Sequence[int]) -> list[Any]:
        import pyarrow as pa

        if self._table is None:
            self._table = read_table(self.path, self.input_columns)
        rows = self._table.take(pa.array([int(i) for i in row_ids], type=pa.int64()))
        columns = [rows.column(c).to_pylist() for c in self.input_columns]
        return _decode_rows(columns, self.modality, base_dir=str(Path(self.path).parent))


class TableSource:
    """Splits stored as one table file each."""

    def __init__(self, split_paths: dict[str, str]):
        self._paths = split_paths
        self.splits = list(split_paths)
        self._tables: dict[str, pa.Table] = {}

    def _table(self, split: str) -> "pa.Table":
        if split not in self._tables:
            self._tables[split] = read_table(self._paths[split])
        return self._tables[split]

    def columns(self, split: str) -> list[ColumnInfo]:
        table = self._table(split)
        return [_arrow_column_info(name, table.column(name)) for name in table.column_names]

    def num_rows(self, split: str) -> int:
        return self._table(split).num_rows

    def column_values(self, split: str, name: str) -> np.ndarray:
        if split in self._tables:
            column = self._tables[split].column(name)
        else:
            # another split, read for its labels only (Parquet reads just that column)
            column = read_table(self._paths[split], [name]).column(0)
        return column.to_numpy(zero_copy_only=False)

    def fetcher(self, split: str, input_columns: tuple[str, ...], modality: Modality) -> Fetch:
        return TableFetcher(self._paths[split], input_columns, modality, table=self._tables.get(split))


# --- image folders (split/class/file) -----------------------------------------------------------------


def _entries(folder: Path, *, strict: bool = True) -> list[os.DirEntry[str]]:
    """Give a folder's entries; an unreadable folder is a UsageError (``strict``) or has none."""
    try:
        with os.scandir(folder) as found:
            return list(found)
    except OSError as exc:
        if not strict:
            return []
        reason = "permission denied" if isinstance(exc, PermissionError) else (exc.strerror or type(exc).__name__)
        raise UsageError(f"cannot read the dataset folder {folder}: {reason}; make it readable or choose another dataset") from None


def _is_kind(entry: os.DirEntry[str], kind: str) -> bool:
    try:
        return entry.is_dir() if kind == "dir" else entry.is_file()
    except OSError:  # an entry that vanished or cannot be looked at is not data
        return False


def _visible_dirs(folder: Path, *, strict: bool = True) -> list[Path]:
    return sorted(
        (Path(e.path) for e in _entries(folder, strict=strict) if not e.name.startswith(".") and _is_kind(e, "dir")),
        key=lambda p: p.name,
    )


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _holds_image(folder: Path) -> bool:
    # stops at the first image: detection must stay cheap on large folders
    return any(_is_image(e.name) and _is_kind(e, "file") for e in _entries(folder, strict=False))


def image_folder_splits(root: Path) -> list[str]:
    """Give the split folders of ``root`` that hold class folders of images, sorted by name.

    Folders that cannot be read are not splits (detection must not fail on, say, /proc).
    """
    return [
        split.name
        for split in _visible_dirs(root, strict=False)
        if any(_holds_image(class_dir) for class_dir in _visible_dirs(split, strict=False))
    ]


class ImagePathFetcher:
    """Fetch images from a list of file paths (pickles as the list)."""

    def __init__(self, paths: Sequence[str]):
        self.paths = list(paths)

    def __call__(self, row_ids: Sequence[int]) -> list[Any]:
        return [to_rgb_image(self.paths[int(i)]) for i in row_ids]


class ImageFolderSource:
    """An image folder ``root/<split>/<class>/<image>``.

    Class ids follow the sorted class folder names of every split together (so a split lacking a
    class keeps the same ids); rows go class by class, files sorted by name within a class.
    """

    def __init__(self, root: Path):
        self.root = root
        self.splits = image_folder_splits(root)
        self.class_names = sorted({c.name for s in self.splits for c in _visible_dirs(root / s)})
        self._listing: dict[str, tuple[list[str], np.ndarray]] = {}

    def _list(self, split: str) -> tuple[list[str], np.ndarray]:
        if split not in self._listing:
            paths: list[str] = []
            labels: list[int] = []
            for class_id, name in enumerate(self.class_names):
                class_dir = self.root / split / name
                if not class_dir.is_dir():
                    continue
                files = sorted(e.name for e in _entries(class_dir) if _is_image(e.name) and _is_kind(e, "file"))
                paths.extend(str(class_dir / f) for f in files)
                labels.extend([class_id] * len(files))
            self._listing[split] = (paths, np.asarray(labels, dtype=np.int64))
        return self._listing[split]

    def columns(self, split: str) -> list[ColumnInfo]:
        return [ColumnInfo("image", "image_path"), ColumnInfo("label", "class_label", tuple(self.class_names))]

    def num_rows(self, split: str) -> int:
        return len(self._list(split)[0])

    def column_values(self, split: str, name: str) -> np.ndarray:
        paths, labels = self._list(split)
        return labels if name == "label" else np.asarray(paths, dtype=object)

    def fetcher(self, split: str, input_columns: tuple[str, ...], modality: Modality) -> Fetch:
        return ImagePathFetcher(self._list(split)[0])


def unknown_split(dataset: str, split: str, available: Sequence[str]) -> UsageError:
    """Give the error for a split the dataset lacks, naming the splits it has."""
    return UsageError(
        f"dataset '{printable(dataset)}' has no split '{printable(split)}'; available splits: {', '.join(map(printable, available)) or 'none'}"
    )
