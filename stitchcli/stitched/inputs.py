"""What a stitched model predicts on: image files and folders, text files (one input per line), table files, a
dataset split, or values handed over in Python, as rows (:class:`~stitchcli.data.base.SplitData`) that the
embedding loop reads as it reads a dataset split."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from stitchcli.data.base import DatasetSpec, SplitData, printable
from stitchcli.data.columns import IMAGE_EXTENSIONS
from stitchcli.data.tables import TABLE_SUFFIXES
from stitchcli.errors import UsageError


@dataclass
class Inputs:
    """Rows to predict on, with the name each one is shown under and, when known, its true class name.

    Attributes:
        split: the rows, as the embedding loop reads them.
        data: the dataset they are described as (a dataset's spec, or a stand-in for loose inputs).
        names: what the output calls each row (a path, ``FILE:LINE``, ``dataset/split#id``).
        labels: the true class name of each row, or None for unlabelled inputs.
    """

    split: SplitData
    data: DatasetSpec
    names: list[str]
    labels: list[str] | None = None


class ImageFiles:
    """Fetch images by position from a list of files (picklable: DataLoader workers call it)."""

    def __init__(self, paths: Sequence[str]):
        self.paths = list(paths)

    def __call__(self, row_ids: Sequence[int]) -> list[Any]:
        from stitchcli.data.images import to_rgb_image

        return [to_rgb_image(self.paths[int(i)]) for i in row_ids]


class Values:
    """Fetch given values by position: texts, or images as PIL images, arrays or encoded bytes."""

    def __init__(self, values: Sequence[Any], modality: str):
        self.values = list(values)
        self.modality = modality

    def __call__(self, row_ids: Sequence[int]) -> list[Any]:
        if self.modality == "text":
            return [str(self.values[int(i)]) for i in row_ids]
        from stitchcli.data.images import to_rgb_image

        return [to_rgb_image(self.values[int(i)]) for i in row_ids]


def _rows(fetch: Any, count: int, modality: str, what: str, digest: str, *, input_columns: tuple[str, ...] = ()) -> tuple[SplitData, DatasetSpec]:
    data = DatasetSpec(name=what, kind="table", source=f"<{what}>")
    split = SplitData(
        dataset_id=data.dataset_id, split="inputs", modality=modality,  # type: ignore[arg-type]
        ids=np.arange(count, dtype=np.int64), labels=np.full(count, -1, dtype=np.int64), class_names=[],
        fingerprint=digest, fetch=fetch, num_rows_in_split=count, input_columns=input_columns,
    )
    return split, data


def _digest(parts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8", "surrogateescape") + b"\0")
    return h.hexdigest()[:16]


def image_files_under(path: Path) -> list[Path]:
    """Give the image files in a folder and its subfolders (sorted), or the file itself; as an image folder dataset
    lists them: hidden files and folders (``.ipynb_checkpoints``) and ``__MACOSX`` skipped, links to folders followed
    once, an image name that is a link to nothing refused."""
    from stitchcli.data.sources import image_files

    if path.is_file():
        return [path]
    return [Path(file) for file in image_files(path, below=True)]


def inputs_from_paths(paths: Sequence[str | os.PathLike[str]], modality: str, *, input_column: str | None = None,
                      stitched_column: str | None = None) -> Inputs:
    """Give the rows the command line's INPUTS name.

    Image models: image files and folders of them (searched recursively, sorted), or table files whose
    ``input_column`` holds images (paths or bytes). Text models: text files, one input per non-empty line, or
    table files with ``input_column``. A table's input column, when not given, is ``stitched_column`` (the
    column(s) the model was stitched on, ``--input-column`` as the card gives it) when the table has it, else
    inferred as ``embed`` infers it. ``-`` is standard input: one text per line for a text model, one image
    file or folder per line for an image model (``find . -name '*.png' | stitchcli predict MODEL -``).

    Raises:
        UsageError: a path that does not exist, a folder for a text model, a table whose input column cannot be
            inferred (without ``--input-column``), a column the table lacks, no input at all.
    """
    if not paths:
        raise UsageError("no input given: name image files, folders, a text file (one input per line) or a table, or pass --dataset D --split S")
    tables = [Path(p) for p in paths if str(p).lower().endswith(TABLE_SUFFIXES)]
    if tables:
        if len(paths) > 1:
            raise UsageError("a table file is predicted on alone: give one table file, or image or text files without it")
        return _table_inputs(tables[0], modality, input_column, stitched_column)
    if input_column is not None:
        raise UsageError(f"--input-column names a column of a table file ({', '.join(TABLE_SUFFIXES)}): none was given")
    stdin = [str(p) for p in paths].count(STDIN)
    if stdin > 1:
        raise UsageError("- (standard input) is given twice: name it once")
    if modality == "image" and stdin:
        listed = [line.strip() for line in _stdin_lines() if line.strip()]
        paths = [q for p in paths for q in (listed if str(p) == STDIN else [p])]
        if not paths:
            raise UsageError("standard input (-) names no image file or folder: give one path per line")
    for path in paths:
        if str(path) != STDIN and not Path(path).expanduser().exists():
            raise UsageError(f"input {printable(path)} does not exist: check the path")
    if modality == "image":
        found: list[tuple[str, str]] = []
        for path in paths:
            root = Path(path).expanduser()
            for file in image_files_under(root):
                found.append((str(file), str(file)))
        if not found:
            raise UsageError(f"no image file ({', '.join(IMAGE_EXTENSIONS)}) in {', '.join(printable(p) for p in paths)}: give images")
        names = [name for name, _ in found]
        split, data = _rows(ImageFiles([file for _, file in found]), len(found), "image", "predict", _digest(names))
        return Inputs(split, data, names)
    texts: list[str] = []
    names = []
    for path in paths:
        file = Path(path).expanduser()
        if str(path) == STDIN:
            lines, path = _stdin_lines(), "stdin"
        elif file.is_dir():
            raise UsageError(f"{printable(path)} is a folder; a text model reads text files (one input per line) or a table with --input-column")
        else:
            try:
                lines = file.read_text(encoding="utf-8-sig").splitlines()  # Notepad's "UTF-8 with BOM": no U+FEFF in the text
            except UnicodeDecodeError as exc:
                raise UsageError(f"{printable(path)} is not UTF-8 text ({exc.reason} at byte {exc.start}): give a UTF-8 text file") from None
        for number, line in enumerate(lines, start=1):
            if line.strip():
                texts.append(line)
                names.append(f"{path}:{number}")
    if not texts:
        given = ["standard input (-)" if str(p) == STDIN else printable(p) for p in paths]
        raise UsageError(f"{', '.join(given)} {'holds' if len(given) == 1 else 'hold'} no non-empty line: give one input per line")
    split, data = _rows(Values(texts, "text"), len(texts), "text", "predict", _digest(texts))
    return Inputs(split, data, names)


STDIN = "-"
"""The INPUTS name of standard input."""


def _stdin_lines() -> list[str]:
    """Give the lines of standard input (UTF-8, a byte-order mark dropped); UsageError for other bytes."""
    import sys

    data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode("utf-8")
    try:
        return data.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise UsageError(f"standard input is not UTF-8 text ({exc.reason} at byte {exc.start}): give UTF-8 text") from None


def _table_inputs(path: Path, modality: str, input_column: str | None, stitched_column: str | None = None) -> Inputs:
    from stitchcli.data.sources import TableFetcher
    from stitchcli.data.tables import read_table

    if not path.expanduser().is_file():
        raise UsageError(f"input {printable(path)} does not exist: check the path")
    table = read_table(path.expanduser())
    if input_column is None and stitched_column is not None and all(name.strip() in table.column_names for name in stitched_column.split(",")):
        input_column = stitched_column  # the column the model read, not whichever column inference would pick
    if input_column is None:
        columns = _inferred_inputs(table, path, modality)
    else:  # text columns given as a comma list are joined, as embed joins them
        columns = tuple(name.strip() for name in input_column.split(","))
        missing = [name for name in columns if name not in table.column_names]
        if missing:
            raise UsageError(f"{printable(path)} has no column {', '.join(map(repr, missing))}: use one of {', '.join(table.column_names)}")
        if len(columns) > 1 and modality != "text":
            raise UsageError(f"--input-column {input_column}: several columns are joined as text, and the model reads {modality}: name one column")
    count = table.num_rows
    if count == 0:
        raise UsageError(f"{printable(path)} has no rows: give a table that holds inputs")
    fetch = TableFetcher(str(path.expanduser().resolve()), columns, modality, table)  # type: ignore[arg-type]
    names = [f"{path}#{row}" for row in range(count)]
    split, data = _rows(fetch, count, modality, "predict", _digest([str(path.resolve()), str(path.stat().st_size), str(path.stat().st_mtime_ns)]),
                        input_columns=columns)
    return Inputs(split, data, names)


def _inferred_inputs(table: Any, path: Path, modality: str) -> tuple[str, ...]:
    """Give the input column(s) of a table as ``embed`` infers them (a ``text`` column, an image column…), or a
    UsageError asking for --input-column when they cannot be told or hold the other modality."""
    from stitchcli.data.columns import infer_columns
    from stitchcli.data.sources import arrow_column_info

    columns = [arrow_column_info(name, table.column(name)) for name in table.column_names]
    inputs, _, found = infer_columns(columns, (), None, where=printable(path))  # a UsageError names --input-column
    if found != modality:
        raise UsageError(f"{printable(path)} holds {found} inputs in {', '.join(inputs)}, and the model reads {modality}: "
                         "name the column that holds the inputs with --input-column")
    return inputs


def inputs_from_values(values: Sequence[Any] | Any, modality: str) -> Inputs:
    """Give the rows of values handed over in Python: for an image model paths (files or folders), PIL images,
    arrays or encoded bytes; for a text model strings (the texts themselves).

    One value (a string, a path, bytes, a PIL image, one (H, W) or (H, W, C) image array, C being 1 to 4) is one
    input; any other collection (a list, a tuple, a pandas Series, a NumPy array of texts, an (N, H, W, C) stack of
    images or an (N, H, W) stack of grey ones, a generator) is one input per item. No value gives no rows.

    Raises:
        UsageError: a table (give one column), a text that is missing (None, NaN) or not text, an image value of a
            kind no image is read from, a path that does not exist, a folder without images.
    """
    items = _value_list(values, modality)
    if modality == "text":
        texts = [_text_value(value, position) for position, value in enumerate(items)]
        split, data = _rows(Values(texts, "text"), len(texts), "text", "predict", _digest(texts))
        return Inputs(split, data, [text[:60] for text in texts])
    expanded: list[Any] = []
    names: list[str] = []
    for position, value in enumerate(items):
        if isinstance(value, (str, os.PathLike)):
            path = Path(value).expanduser()
            if not path.exists():
                raise UsageError(f"input {printable(value)} does not exist: check the path")
            found = image_files_under(path)
            if not found:
                raise UsageError(f"no image file ({', '.join(IMAGE_EXTENSIONS)}) in {printable(value)}: give images")
            for file in found:
                expanded.append(str(file))
                names.append(str(file))
        else:
            _check_image_value(value, position)
            expanded.append(value)
            names.append(f"#{position}")
    split, data = _rows(Values(expanded, "image"), len(expanded), "image", "predict", _digest(names))
    return Inputs(split, data, names)


_ONE_VALUE = (str, bytes, bytearray, memoryview, os.PathLike, dict)
"""Values that are one input each, though some of them are sequences (a string of characters, bytes of ints)."""


def _value_list(values: Any, modality: str) -> list[Any]:
    """Give the inputs ``values`` holds, one per item (see :func:`inputs_from_values`)."""
    if isinstance(values, _ONE_VALUE) or _is_pil_image(values):
        return [values]
    if hasattr(values, "columns") and hasattr(values, "iloc"):  # a DataFrame iterates over its column names
        raise UsageError("a table was given: give one column of it (df['text']), or a list of inputs")
    if isinstance(values, np.ndarray):
        if modality == "image" and _is_one_image_array(values):  # (H, W) or (H, W, C); a stack is (N, H, W[, C])
            return [values]
        if modality == "image" and values.ndim == 3 and values.shape[0] in (3, 4):
            # torch's layout of one RGB(A) image, or 3 or 4 grey ones: taking either guess could be silently wrong
            raise UsageError(
                f"an array of shape {values.shape} is either one ({values.shape[0]}, H, W) image or {values.shape[0]} grey "
                "(H, W) images: give one image as (H, W, C) (array.transpose(1, 2, 0)), or grey images as a list"
            )
        if modality == "text" and values.ndim != 1:
            raise UsageError(f"an array of shape {values.shape} was given: give texts as a list or a 1-d array, one text per item")
        return list(values)
    try:
        return list(values)
    except TypeError:  # not a collection: one value (and refused below when it is no input)
        return [values]


def _is_one_image_array(array: np.ndarray) -> bool:
    """Tell whether an array is one image: (H, W), or (H, W, C) with 1 to 4 channels (grey, grey + alpha, RGB, RGBA).

    Any other 3-d array is an (N, H, W) stack of grey images (MNIST's layout): taken as one (H, W, C) image it had
    N rows of C = W channels, which no image has, and was refused only once the encoder had loaded.
    """
    return array.ndim == 2 or (array.ndim == 3 and 1 <= array.shape[2] <= 4)


def _is_pil_image(value: Any) -> bool:
    import sys

    image = sys.modules.get("PIL.Image")  # a PIL image exists only once PIL was imported
    return image is not None and isinstance(value, image.Image)


def _text_value(value: Any, position: int) -> str:
    """Give the text of one input, refusing what is no text: a missing value (None, NaN) or bytes."""
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, (float, np.floating)) and np.isnan(value)):
        raise UsageError(f"input #{position} is missing ({value}): give a text for every input, or leave the row out")
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise UsageError(f"input #{position} is bytes: the model reads text, so decode it first (value.decode('utf-8'))")
    if isinstance(value, (int, float, np.integer, np.floating, np.str_)):
        return str(value)
    raise UsageError(f"input #{position} is a {type(value).__name__}, not a text: give strings")


def _check_image_value(value: Any, position: int) -> None:
    """Refuse, before the encoder loads, a value no image is read from (a number, None, an array of another shape)."""
    if _is_pil_image(value) or isinstance(value, (bytes, bytearray, memoryview, dict)):
        return
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf" and _is_one_image_array(value) and value.size:
        return
    what = f"an array of shape {value.shape}" if isinstance(value, np.ndarray) else f"a {type(value).__name__}"
    raise UsageError(f"input #{position} is {what}, not an image: give image paths, folders, PIL images, "
                     "(H, W) or (H, W, C) arrays, or encoded image bytes")


def inputs_from_dataset(split: SplitData, data: DatasetSpec) -> Inputs:
    """Give the rows of a dataset split, labelled with their class names (None without labels) and named by their
    file (an image folder's rows: the path below the dataset's folder) or else ``split#row id``."""
    paths = getattr(split.fetch, "paths", None)
    if paths is not None and data.kind == "imagefolder":
        names = [_below(Path(paths[int(i)]), Path(data.source)) for i in split.ids]
    else:
        names = [f"{split.split}#{int(i)}" for i in split.ids]
    if not split.labelled:
        return Inputs(split, data, names)
    labels = [split.class_names[int(label)] if 0 <= int(label) < len(split.class_names) else str(int(label)) for label in split.labels]
    return Inputs(split, data, names, labels)


def _below(path: Path, root: Path) -> str:
    """Give ``path`` relative to ``root`` when it lies below it, else as it is."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)
