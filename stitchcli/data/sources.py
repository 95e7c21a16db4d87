"""How rows are read: Hugging Face datasets, table files and image folders behind one interface.

Each source answers the same questions (which splits, which columns, a column's values, a picklable
fetcher of inputs), so column inference and label encoding are written once in ``stitchcli.data``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol, Sequence

import numpy as np

from stitchcli.data.base import Modality, first_line, printable
from stitchcli.data.columns import IMAGE_EXTENSIONS, ColumnInfo
from stitchcli.data.images import image_errors, to_rgb_image
from stitchcli.data.tables import class_label_names, file_class_label_names, read_table, table_column_names
from stitchcli.errors import UsageError

if TYPE_CHECKING:
    import datasets
    import pyarrow as pa

Fetch = Callable[[Sequence[int]], list[Any]]


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

    def column_info(self, split: str, name: str) -> ColumnInfo | None:
        """Give what one column of a split holds, None when the split has no such column; reading no more of
        the split than that column where the format allows (the other splits' labels, read with a split's)."""
        ...

    def fetcher(self, split: str, input_columns: tuple[str, ...], modality: Modality) -> Fetch:
        """Give a picklable callable: row ids -> inputs (RGB PIL images or strings)."""
        ...


# --- decoding inputs -------------------------------------------------------------------------------


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
        except image_errors() as exc:
            if self.modality != "image":
                raise
            shown = ", ".join(map(str, rows[:5])) + ("…" if len(rows) > 5 else "")
            raise UsageError(f"cannot decode the images of rows {shown}: {first_line(exc)}; fix or remove them") from None
        return _decode_rows([batch[c] for c in self.input_columns], self.modality)


class HFSplitSource:
    """The splits of a ``datasets.DatasetDict`` (or of one ``Dataset`` under one split name)."""

    def __init__(self, splits: dict[str, "datasets.Dataset"]):
        self._datasets = splits
        self.splits = list(splits)

    def columns(self, split: str) -> list[ColumnInfo]:
        features = self._datasets[split].features
        return [_hf_column_info(name, feature) for name, feature in features.items()]

    def column_info(self, split: str, name: str) -> ColumnInfo | None:
        return _named(self.columns(split), name)

    def num_rows(self, split: str) -> int:
        return len(self._datasets[split])

    def column_values(self, split: str, name: str) -> np.ndarray:
        # Arrow format skips decoding (no image is opened to read the labels) and honours any
        # indices mapping the dataset carries.
        table = self._datasets[split].select_columns([name]).with_format("arrow")[:]
        return table.column(0).to_numpy(zero_copy_only=False)

    def fetcher(self, split: str, input_columns: tuple[str, ...], modality: Modality) -> Fetch:
        return HFDatasetFetcher(self._datasets[split], input_columns, modality)


def _named(columns: Sequence[ColumnInfo], name: str) -> ColumnInfo | None:
    return next((c for c in columns if c.name == name), None)


# --- table files (CSV/TSV/JSON/JSONL/Parquet) ---------------------------------------------------------


def arrow_column_info(name: str, column: "pa.ChunkedArray", class_names: tuple[str, ...] | None = None) -> ColumnInfo:
    """Give what a table column holds; ``class_names``: the names its ``ClassLabel`` feature gives its integers."""
    import pyarrow as pa

    t = column.type
    if class_names is not None and pa.types.is_integer(t):
        return ColumnInfo(name, "class_label", class_names)
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

    def _columns(self, row_ids: Sequence[int]) -> list[list[Any]]:
        import pyarrow as pa

        if self._table is None:
            self._table = read_table(self.path, self.input_columns)
        rows = self._table.take(pa.array([int(i) for i in row_ids], type=pa.int64()))
        return [rows.column(c).to_pylist() for c in self.input_columns]

    def __call__(self, row_ids: Sequence[int]) -> list[Any]:
        return _decode_rows(self._columns(row_ids), self.modality, base_dir=str(Path(self.path).parent))

    def row_keys(self, row_ids: Sequence[int]) -> list[str]:
        """Give a string per row that changes when its input cells change (a digest for encoded images).

        Image paths are keys as written: the table's fingerprint does not cover the files they name either.
        """
        return ["\x1f".join(map(_cell_key, cells)) for cells in zip(*self._columns(row_ids))]


def _cell_key(value: Any) -> str:
    if isinstance(value, str):
        return "s" + value  # no repr: a text's key is as long as the text, so copy it once only
    if isinstance(value, (bytes, bytearray)):
        return "sha256:" + hashlib.sha256(value).hexdigest()
    if isinstance(value, dict):  # a {"bytes", "path"} image record
        return f"{_cell_key(value.get('bytes'))}|{value.get('path')!r}"
    return repr(value)


class TableSource:
    """Splits stored as one table file each."""

    def __init__(self, split_paths: dict[str, str]):
        self._paths = split_paths
        self.splits = list(split_paths)
        self._tables: dict[str, pa.Table] = {}
        self._columns: dict[tuple[str, str], pa.ChunkedArray | None] = {}  # one column of a split not read whole

    def _table(self, split: str) -> "pa.Table":
        if split not in self._tables:
            self._tables[split] = read_table(self._paths[split])
        return self._tables[split]

    def columns(self, split: str) -> list[ColumnInfo]:
        table = self._table(split)
        class_names = class_label_names(table.schema)
        return [arrow_column_info(name, table.column(name), class_names.get(name)) for name in table.column_names]

    def num_rows(self, split: str) -> int:
        return self._table(split).num_rows

    def column_values(self, split: str, name: str) -> np.ndarray:
        if split in self._tables:
            column = self._tables[split].column(name)
        else:  # another split, read for its labels only
            column = self._column(split, name)
            if column is None:
                column = read_table(self._paths[split], [name]).column(0)  # which says the column is missing
        return column.to_numpy(zero_copy_only=False)

    def column_info(self, split: str, name: str) -> ColumnInfo | None:
        if split in self._tables:
            return _named(self.columns(split), name)
        column = self._column(split, name)
        return None if column is None else arrow_column_info(name, column, file_class_label_names(self._paths[split]).get(name))

    def _column(self, split: str, name: str) -> "pa.ChunkedArray | None":
        """Give one column of a split that is not read whole, None if it has none: Parquet, CSV and TSV read that
        column alone (a Parquet split's images are not read for its labels); JSON is parsed whole, once."""
        if (split, name) not in self._columns:
            path = self._paths[split]
            names = table_column_names(path)
            if names is None:
                table = read_table(path)
                self._columns[split, name] = table.column(name) if name in table.column_names else None
            else:
                self._columns[split, name] = read_table(path, [name]).column(0) if name in names else None
        return self._columns[split, name]

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


def _holds_image(folder: Path, *, below: bool = False) -> bool:
    """Tell whether ``folder`` holds an image file, directly or (``below``) in any visible subfolder.

    Stops at the first image: detection must stay cheap on large folders."""
    return any(True for _ in _walk_images(folder, below=below, strict=False))


def _walk_images(folder: Path, *, below: bool, strict: bool = True) -> Iterator[str]:
    """Yield the image files directly in ``folder`` or (``below``) also in its visible subfolders (symbolic links
    followed, each real folder once), as paths relative to it. ``strict``: an unreadable folder, or an image name
    that is a link to nothing, is a UsageError (not skipped: it is a row the user meant)."""
    seen: set[str] = set()

    def walk(current: Path, relative: str) -> Iterator[str]:
        real = os.path.realpath(current)
        if real in seen:  # a link back up the tree
            return
        seen.add(real)
        entries = _entries(current, strict=strict)
        for entry in entries:
            if not _is_image(entry.name):
                continue
            if _is_kind(entry, "file"):
                yield relative + entry.name
            elif strict and entry.is_symlink() and not os.path.exists(entry.path):
                raise UsageError(
                    f"image file {printable(entry.path)} is a symbolic link to {printable(os.readlink(entry.path))}, "
                    "which does not exist: fix the link or remove it"
                )
        if below:
            for entry in entries:
                if _is_read_subfolder(entry.name) and _is_kind(entry, "dir"):
                    yield from walk(Path(entry.path), relative + entry.name + "/")

    return walk(folder, "")


def _is_read_subfolder(name: str) -> bool:
    return not name.startswith(".") and name != "__MACOSX"


def images_below_class_folders(split_folder: Path, names: Sequence[str], links: Sequence[str]) -> list[str]:
    """Give the images below the class folders of ``split_folder`` (not directly in one) that its rows hold, as
    "path<NUL>size", from what :func:`~stitchcli.fingerprint.tree_fingerprint` of it found: its file ``names``,
    and its ``links`` to folders, which it does not follow but the rows do (walked here)."""
    found = []
    for name in names:
        *folders, file = name.split("/")
        if len(folders) > 1 and _is_image(file) and all(_is_read_subfolder(f) for f in folders[1:]):
            found.append(name)
    for link in links:
        if "/" in link and all(_is_read_subfolder(f) for f in link.split("/")[1:]):  # a link below a class folder
            for relative in _walk_images(split_folder / link, below=True, strict=False):
                path = split_folder / link / relative
                found.append(f"{link}/{relative}\0{path.stat().st_size if path.exists() else -1}")
    return found


def image_files(folder: Path, *, below: bool = False) -> list[str]:
    """Give the paths of the image files directly in ``folder`` or (``below``) also in its visible subfolders, sorted
    by their path relative to it, folder by folder (a flat folder's files by name)."""
    return [str(folder / relative) for relative in sorted(_walk_images(folder, below=below), key=lambda r: r.split("/"))]


def image_folder_splits(root: Path) -> list[str]:
    """Give the split folders of ``root`` that hold class folders of images, or images (unlabelled), sorted by name.

    Folders that cannot be read are not splits (detection must not fail on, say, /proc).
    """
    return [
        split.name
        for split in _visible_dirs(root, strict=False)
        if _holds_image(split) or any(_holds_image(class_dir, below=True) for class_dir in _visible_dirs(split, strict=False))
    ]


class ImagePathFetcher:
    """Fetch images from a list of file paths (pickles as the list)."""

    def __init__(self, paths: Sequence[str]):
        self.paths = list(paths)

    def __call__(self, row_ids: Sequence[int]) -> list[Any]:
        return [to_rgb_image(self.paths[int(i)]) for i in row_ids]

    def row_keys(self, row_ids: Sequence[int]) -> list[str]:
        """Give each row's file path and size (what the folder's fingerprint covers); a missing file's size is -1."""
        keys = []
        for i in row_ids:
            path = self.paths[int(i)]
            try:
                size = os.stat(path).st_size
            except OSError:
                size = -1
            keys.append(f"{path}\0{size}")
        return keys


class ImageFolderSource:
    """An image folder ``root/<split>/<class>/<image>``, or ``root/<split>/<image>`` for a split without labels.

    A class folder's images may lie in subfolders of it too (``train/cat/indoor/001.png`` is a cat), as
    torchvision's ``ImageFolder`` reads them; hidden folders and ``__MACOSX`` are skipped.

    Class ids follow the sorted class folder names of every split together (so a split lacking a
    class keeps the same ids); rows go class by class, files sorted by name within a class. A split folder
    with no class folder of images has no label column: its rows are its own images, sorted by name.
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
            if self._has_classes(split):
                loose = image_files(self.root / split)
                if loose:  # they belong to no class: leaving them out would drop rows unseen
                    raise UsageError(
                        f"split folder {printable(self.root / split)} holds {len(loose)} image(s) beside its class folders "
                        f"(first: {printable(Path(loose[0]).name)}): move them into a class folder, or remove them"
                    )
                for class_id, name in enumerate(self.class_names):
                    class_dir = self.root / split / name
                    if not class_dir.is_dir():
                        continue
                    files = image_files(class_dir, below=True)
                    paths.extend(files)
                    labels.extend([class_id] * len(files))
            else:  # the split folder's own images, without labels
                paths = image_files(self.root / split)
            self._listing[split] = (paths, np.asarray(labels, dtype=np.int64))
        return self._listing[split]

    def _has_classes(self, split: str) -> bool:
        return any(_holds_image(class_dir, below=True) for class_dir in _visible_dirs(self.root / split))

    def columns(self, split: str) -> list[ColumnInfo]:
        if not self._has_classes(split):
            return [ColumnInfo("image", "image_path")]
        return [ColumnInfo("image", "image_path"), ColumnInfo("label", "class_label", tuple(self.class_names))]

    def column_info(self, split: str, name: str) -> ColumnInfo | None:
        return _named(self.columns(split), name)

    def num_rows(self, split: str) -> int:
        return len(self._list(split)[0])

    def column_values(self, split: str, name: str) -> np.ndarray:
        paths, labels = self._list(split)
        return labels if name == "label" else np.asarray(paths, dtype=object)

    def fetcher(self, split: str, input_columns: tuple[str, ...], modality: Modality) -> Fetch:
        return ImagePathFetcher(self._list(split)[0])


def unknown_split(dataset: str, split: str, available: Sequence[str], *, folder: Path | None = None) -> UsageError:
    """Give the error for a split the dataset lacks, naming the splits it has; for an image ``folder`` whose
    split folder is there but holds no image (empty class folders), that instead."""
    if folder is not None and _is_read_subfolder(split) and (folder / split).is_dir():
        return UsageError(f"dataset '{printable(dataset)}' split folder '{printable(split)}' holds no image ({', '.join(IMAGE_EXTENSIONS)}), "
                          "in class folders or on its own: put the split's images there, or choose another split")
    hint = ""
    if folder is not None and available and all((folder / name).is_dir() and _holds_image(folder / name) for name in available):
        # train/001.png is a split without labels, and so is cat/001.png: class folders with no split level above
        hint = (f" (if {', '.join(map(printable, available))} are classes, put them in split folders: "
                f"{printable(split)}/{printable(available[0])}/…)")
    return UsageError(
        f"dataset '{printable(dataset)}' has no split '{printable(split)}'; available splits: {', '.join(map(printable, available)) or 'none'}{hint}"
    )
