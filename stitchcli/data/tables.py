"""Table files (CSV, TSV, JSON, JSON lines, Parquet) read as Arrow tables, the way pandas reads them.

CSV and TSV go through pyarrow's parser with ``newlines_in_values``: quoted fields may hold newlines,
quotes (doubled) and delimiters, as Python's ``csv`` module and pandas' ``to_csv`` write them. Without
that option pyarrow cuts a file into blocks at newlines, and a block boundary inside a quoted field
breaks the parse, so only files larger than one block (1 MB) failed. pyarrow is kept rather than
pandas' C parser because it gives the same rows and values on the files users bring (UTF-8
byte-order mark, CRLF line ends, quoted newlines, empty cells; compared in tests/test_real_world_files.py),
infers the same column types as before for files that loaded already (so their labels keep their ids),
and hands back the Arrow table the sources need. The one difference: pandas also reads the cells
``None`` and ``<NA>`` as missing; here they stay text.

The delimiter is the suffix's (``,`` or a tab) unless it leaves the header row one column while ``;``, a tab
or ``|`` splits it, and the first row under it as wide (Excel saves "CSV" with ``;`` where the decimal mark is a comma).

Text must be UTF-8 (a byte-order mark is allowed). A file that is not is refused with one line naming
the first bad byte; the check costs nothing on files that parse, since it runs only when the parser
failed or a CSV column came back as bytes (what pyarrow gives for invalid UTF-8).
"""

from __future__ import annotations

import codecs
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from stitchcli.data.base import first_line, printable
from stitchcli.errors import UsageError

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.csv as pcsv

TABLE_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet")

_CHUNK = 1 << 20


def read_table(path: str | os.PathLike[str], columns: Sequence[str] | None = None) -> "pa.Table":
    """Give the table in a CSV, TSV, JSON (records, columns or lines), JSONL or Parquet file.

    Args:
        path: the file; its suffix says the format.
        columns: read only these columns (all when None).

    Raises:
        UsageError: the file cannot be read, is not UTF-8 text, or names a column twice.
    """
    import pyarrow as pa

    p = Path(path)
    suffix = p.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(p, columns=list(columns) if columns is not None else None)
        elif suffix in (".csv", ".tsv"):
            table = _read_csv(p, csv_delimiter(p) or ",", columns)
        elif suffix in (".json", ".jsonl"):
            table = _read_json(p)
            if columns is not None:
                table = table.select(list(columns))
        else:
            raise UsageError(f"{p} is not a table file; use one of {', '.join(TABLE_SUFFIXES)}")
    except PermissionError:
        raise UsageError(f"cannot read table file {p}: permission denied; make it readable or choose another dataset") from None
    except (pa.ArrowException, OSError, ValueError, KeyError, TypeError, OverflowError, RecursionError) as exc:
        if suffix != ".parquet":
            _refuse_if_not_utf8(p)  # the likeliest cause of a text file that does not parse
        raise UsageError(f"cannot read table file {p}: {first_line(exc)}") from exc
    names = table.column_names
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"table file {p} has {len(twice)} column name(s) more than once ({', '.join(map(repr, twice))}): give each column its own name")
    return table


def table_column_names(path: str | os.PathLike[str]) -> list[str] | None:
    """Give the column names of a Parquet, CSV or TSV file from its schema or first block, reading no other row;
    None for JSON (its columns are known once it is parsed) or a file that cannot be read (reading it says why)."""
    import pyarrow as pa

    p = Path(path)
    suffix = p.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(p).names)
        if suffix in (".csv", ".tsv"):
            import pyarrow.csv as pcsv

            with pcsv.open_csv(p, parse_options=_csv_parse_options(csv_delimiter(p) or ",")) as reader:
                return list(reader.schema.names)
    except (pa.ArrowException, OSError, ValueError):
        return None
    return None


def _csv_parse_options(delimiter: str) -> "pcsv.ParseOptions":
    import pyarrow.csv as pcsv

    return pcsv.ParseOptions(delimiter=delimiter, newlines_in_values=True)


def _read_csv(path: Path, delimiter: str, columns: Sequence[str] | None) -> "pa.Table":
    import pyarrow as pa
    import pyarrow.csv as pcsv

    table = pcsv.read_csv(
        path,
        parse_options=_csv_parse_options(delimiter),
        # empty cells are missing values: an empty label is reported, an empty text embedded as ""
        convert_options=pcsv.ConvertOptions(
            strings_can_be_null=True,
            include_columns=list(columns) if columns is not None else None,
        ),
    )
    if any(pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type) for f in table.schema):
        _refuse_if_not_utf8(path)  # a CSV cell holds text: bytes mean invalid UTF-8 somewhere in it
    return table


def class_label_names(schema: "pa.Schema") -> dict[str, tuple[str, ...]]:
    """Give column -> class names of the ``ClassLabel`` columns that ``datasets`` records in a table's schema (its
    ``huggingface`` metadata: ``Dataset.to_parquet`` writes it); {} when there are none or they cannot be read."""
    if not schema.metadata or b"huggingface" not in schema.metadata:
        return {}
    import datasets

    try:
        features = datasets.Features.from_arrow_schema(schema)
    except Exception:  # noqa: BLE001 - metadata written by another datasets version, or edited: read the plain columns
        return {}
    return {name: tuple(f.names) for name, f in features.items() if isinstance(f, datasets.ClassLabel)}


def file_class_label_names(path: str | os.PathLike[str]) -> dict[str, tuple[str, ...]]:
    """Give :func:`class_label_names` of a Parquet file, reading its schema only ({} for other files)."""
    if Path(path).suffix.lower() != ".parquet":
        return {}
    import pyarrow.parquet as pq

    try:
        return class_label_names(pq.read_schema(path))
    except Exception:  # noqa: BLE001 - an unreadable file is reported when its rows are read
        return {}


# Delimiters a spreadsheet may save a "CSV" with: Excel in locales whose decimal mark is a comma writes ';'.
_DELIMITERS = (",", ";", "\t", "|")


def default_delimiter(path: str | os.PathLike[str]) -> str | None:
    """Give the delimiter a CSV or TSV file's suffix stands for (None for other files)."""
    return {".csv": ",", ".tsv": "\t"}.get(Path(path).suffix.lower())


_DELIMITER_MEMO: dict[tuple[object, ...], str] = {}


def csv_delimiter(path: str | os.PathLike[str]) -> str | None:
    """Give the delimiter a CSV or TSV file is read with (None for other files); see :func:`_delimiter`.

    Memoised in this process per path and file identity (as :func:`~stitchcli.fingerprint.file_sha256`): the
    fingerprint, the column listing and the reading of one file each ask, and each answer reads its head."""
    from stitchcli.fingerprint import file_identity

    preferred = default_delimiter(path)
    if preferred is None:
        return None
    p = Path(path)
    try:
        key: tuple[object, ...] = (str(p.resolve()), *file_identity(p.stat()))
    except OSError:
        return preferred  # the parser reports the file
    if key not in _DELIMITER_MEMO:
        _DELIMITER_MEMO[key] = _delimiter(p, preferred)
    return _DELIMITER_MEMO[key]


def _delimiter(path: Path, preferred: str) -> str:
    """Give the delimiter of a CSV or TSV file: ``preferred`` (the suffix's) unless it leaves the header row one
    column while another delimiter splits it into several, and the first row under it into as many (a semicolon
    CSV from Excel, a comma TSV; not a one-column file whose header name holds a ';' or '|').

    Read wrongly, such a file is one text column holding every cell of a row, labels included, which no
    later check would notice. The rows are parsed with the csv module, so quoted names may hold delimiters.
    """
    import csv
    import io
    import itertools

    try:
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
            head = f.read(1 << 20)
    except OSError:
        return preferred  # the parser reports the file

    def widths(delimiter: str) -> list[int]:  # of the header and the first row under it
        rows = (row for row in csv.reader(io.StringIO(head), delimiter=delimiter) if row)
        return [len(row) for row in itertools.islice(rows, 2)] or [0]

    if widths(preferred)[0] > 1:
        return preferred
    found = {d: widths(d) for d in _DELIMITERS}
    best = max(_DELIMITERS, key=lambda d: found[d][0])
    header, *first = found[best]
    return best if header > 1 and all(width == header for width in first) else preferred


# --- JSON ------------------------------------------------------------------------------------------


def _read_json(path: Path) -> "pa.Table":
    """Give the table in a JSON or JSON lines file.

    Accepted: records (a JSON array of objects, as ``json.dump`` of a list and pandas'
    ``orient="records"`` write; or one object per line, as ``datasets``' ``to_json`` and pandas'
    ``lines=True`` write, blank lines skipped), an object of column lists, and each of pandas' other
    layouts of a table: ``"columns"`` (its default), ``"index"``, ``"split"`` and ``"table"``.
    """
    text = _utf8_text(path)
    try:
        document: Any = json.loads(text)
    except json.JSONDecodeError:
        return _records_table(_json_lines(text))  # .json files are often JSON lines
    if isinstance(document, dict):
        return _table_of_object(document)
    if not isinstance(document, list) or not all(isinstance(r, dict) for r in document):
        raise ValueError(
            "expected records: a JSON array of objects, one object per line, or an object of columns "
            "(pandas: to_json(orient='records'))"
        )
    return _records_table(document)


def _table_of_object(document: dict[str, Any]) -> "pa.Table":
    values = list(document.values())
    if set(document) in ({"columns", "data"}, {"columns", "index", "data"}) and all(isinstance(r, list) for r in document["data"]):
        columns = document["columns"]  # pandas orient="split"
        return _columns_table({str(c): [row[i] for row in document["data"]] for i, c in enumerate(columns)})
    if set(document) == {"schema", "data"} and isinstance(document["schema"], dict) and isinstance(document["data"], list):
        index = set(document["schema"].get("primaryKey") or ())  # pandas orient="table": the index is no column
        return _records_table([{k: v for k, v in r.items() if k not in index} for r in document["data"]])
    if values and all(isinstance(v, list) for v in values):
        return _columns_table(document)  # {"column": [values...]}
    if values and all(isinstance(v, dict) for v in values):
        inner = {k for v in values for k in v}
        if all(k.isdigit() for k in document) and not all(k.isdigit() for k in inner):
            return _records_table(values)  # pandas orient="index": {"row": {"column": value}}
        return _columns_of_row_objects(document)
    return _records_table([document])  # one record


def _records_table(records: list[dict[str, Any]]) -> "pa.Table":
    """Give the table of JSON records (columns: the first record's keys, as pyarrow's ``from_pylist``)."""
    import pyarrow as pa

    try:
        return pa.Table.from_pylist(records)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # a column mixes kinds of value: see _columns_table
        return _columns_table({name: [record.get(name) for record in records] for name in (records[0] if records else {})})


def _columns_table(columns: dict[str, list[Any]]) -> "pa.Table":
    """Give the table of JSON columns, as pandas reads them: a column whose cells mix text with numbers or
    booleans (``"hello"`` and ``123``; ``1`` and ``"x"``) is text, each number or boolean as JSON writes it."""
    import pyarrow as pa

    arrays = {}
    for name, values in columns.items():
        try:
            arrays[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            if not all(v is None or isinstance(v, (str, int, float, bool)) for v in values):
                kinds = sorted({_JSON_KINDS.get(type(v).__name__, type(v).__name__) for v in values if v is not None})
                raise ValueError(f"column '{printable(name)}' mixes {', '.join(kinds)} values; give every cell of a column one kind") from None
            arrays[name] = pa.array([v if v is None or isinstance(v, str) else json.dumps(v) for v in values], pa.string())
    return pa.table(arrays)


_JSON_KINDS = {"str": "text", "int": "number", "float": "number", "bool": "true/false", "dict": "object", "list": "array"}


def _json_lines(text: str) -> list[dict[str, Any]]:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            what = exc.msg.removesuffix(" at")  # json's messages are written to be followed by "at line ..."
            raise ValueError(f"{what} at line {number}, column {exc.colno} (JSON lines hold one whole record per line)") from None
        if not isinstance(record, dict):
            raise ValueError(f"line {number} is not a JSON object (one record per line)")
        records.append(record)
    return records


def _columns_of_row_objects(document: dict[str, dict[str, Any]]) -> "pa.Table":
    """Give the table of pandas' ``orient="columns"`` JSON: {"column": {"row index": value}}."""
    import pyarrow as pa

    index: dict[str, None] = {}
    for column in document.values():
        index.update(dict.fromkeys(column))  # every row index, in the order first written
    return pa.table({name: [column.get(row) for row in index] for name, column in document.items()})


# --- UTF-8 -----------------------------------------------------------------------------------------


def _utf8_text(path: Path) -> str:
    """Give a file's text, without a UTF-8 byte-order mark; UsageError naming the first bad byte."""
    raw = path.read_bytes()
    start = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    try:
        return raw[start:].decode("utf-8")
    except UnicodeDecodeError:
        _refuse_if_not_utf8(path)
        raise


def first_invalid_utf8(path: str | os.PathLike[str]) -> tuple[int, int, int] | None:
    """Give (byte offset, line number, byte value) of the first byte that is not UTF-8 text, or None.

    Reads the file in 1 MiB chunks, so it costs no more memory on a large file.
    """
    offset = 0  # of ``pending``'s first byte in the file
    lines = 1
    pending = b""
    with open(path, "rb") as f:
        while True:
            chunk = f.read(_CHUNK)
            data = pending + chunk
            try:
                data.decode("utf-8")
                good = len(data)
            except UnicodeDecodeError as exc:
                # a sequence cut by the chunk's end is completed by the next chunk; anything else is bad
                cut = chunk and exc.reason == "unexpected end of data" and len(data) - exc.start < 4
                if not cut:
                    return offset + exc.start, lines + data.count(b"\n", 0, exc.start), data[exc.start]
                good = exc.start
            lines += data.count(b"\n", 0, good)
            offset += good
            pending = data[good:]
            if not chunk:
                return None


def _refuse_if_not_utf8(path: Path) -> None:
    """Raise the one-line UsageError for a table file that is not UTF-8 text; return if it is."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
        bad = first_invalid_utf8(path)
    except OSError:
        return  # the caller reports the file as unreadable
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise UsageError(
            f"cannot read table file {path}: it is UTF-16 text (it starts with a UTF-16 byte-order mark), "
            "not UTF-8; save it as UTF-8 (pandas: encoding='utf-8')"
        )
    if bad is not None:
        offset, line, value = bad
        raise UsageError(
            f"cannot read table file {path}: it is not UTF-8 text (byte 0x{value:02X} at offset {offset}, line {line}); "
            "save it as UTF-8 (for example `iconv -f cp1252 -t utf-8 OLD > NEW`, or pandas: encoding='utf-8')"
        )

