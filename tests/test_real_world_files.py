"""Files other programs wrote (issue 18): tables from pandas, the csv module and ``datasets``; images from PIL.

Every file here is written by the program users write it with, never by hand, and each case either loads
with the right rows and labels or exits 2 with one line naming the file. docs/RELIABILITY.md lists them.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from typer.testing import CliRunner

from stitchcli.models import ModelRef
from stitchcli.cli import app
from stitchcli.data import load_split, resolve_dataset
from stitchcli.data.tables import first_invalid_utf8

# Article-like texts: paragraphs (newlines), quotes, the delimiters, a tab, CRLF inside a field, non-ASCII.
ARTICLES = [
    'Ad sales boost profit\n\nQuarterly profits rose 76% to "$1.13bn", up from $639m.\n\nIt said: "We\'re pleased", twice.',
    "Match report\n\nThe striker scored twice, then\tcelebrated; fans sang \"olé\" in the rain.",
    "Phone review\r\n\r\nA faster chip, a longer battery -- and a £999 price.",
    ' Leading and trailing spaces stay ',
    "Rates rise\n\n\n\nThe bank raised rates by 0,25 points (\"a small step\").",
    "Emoji 🎉 and accents: café, naïve, Zürich.",
]
LABELS = ["business", "sport", "tech", "tech", "business", "sport"]
CLASSES = ["business", "sport", "tech"]


def _frame(texts: list[str | None] = ARTICLES, labels: list = LABELS):
    import pandas as pd

    return pd.DataFrame({"text": texts, "label": labels})


def _csv_module(path: Path, texts: list[str] = ARTICLES, labels: list = LABELS, **fmt) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:  # the csv module's own advice: newline=""
        writer = csv.writer(f, **fmt)
        writer.writerow(["text", "label"])
        writer.writerows(zip(texts, labels))


def _dataset(texts: list[str] = ARTICLES, labels: list = LABELS):
    import datasets

    return datasets.Dataset.from_dict({"text": texts, "label": labels})


def _json_lines_with_blank_lines(path: Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for text, label in zip(ARTICLES, LABELS):
            f.write("\n" + json.dumps({"text": text, "label": label}) + "\n\n")


def _json_array(path: Path) -> None:
    path.write_text(json.dumps([{"text": t, "label": lab} for t, lab in zip(ARTICLES, LABELS)], indent=2, ensure_ascii=False), encoding="utf-8")


@dataclass(frozen=True)
class Table:
    """One file kind: ``write(path)`` writes the train split as the named program does."""

    name: str
    file: str
    write: Callable[[Path], None]
    texts: tuple[str, ...] = tuple(ARTICLES)
    labels: tuple[int, ...] = tuple(CLASSES.index(label) for label in LABELS)
    classes: tuple[str, ...] = tuple(CLASSES)


TABLES = [
    Table("csv module (CRLF row ends, quoted newlines, quotes, commas)", "train.csv", _csv_module),
    Table("csv module, every field quoted", "train.csv", lambda p: _csv_module(p, quoting=csv.QUOTE_ALL)),
    Table("csv module, LF row ends", "train.csv", lambda p: _csv_module(p, lineterminator="\n")),
    Table("pandas to_csv", "train.csv", lambda p: _frame().to_csv(p, index=False)),
    Table("pandas to_csv, CRLF and a UTF-8 byte-order mark (Excel's 'CSV UTF-8')", "train.csv",
          lambda p: _frame().to_csv(p, index=False, lineterminator="\r\n", encoding="utf-8-sig")),
    Table("pandas to_csv with its index column", "train.csv", lambda p: _frame().to_csv(p)),
    Table("pandas to_csv, tab-separated", "train.tsv", lambda p: _frame().to_csv(p, sep="\t", index=False)),
    Table("pandas to_csv sep=';', CRLF, byte-order mark (Excel's CSV where the decimal mark is a comma)", "train.csv",
          lambda p: _frame().to_csv(p, sep=";", index=False, lineterminator="\r\n", encoding="utf-8-sig")),
    Table("csv module, delimiter=';'", "train.csv", lambda p: _csv_module(p, delimiter=";")),
    Table("csv module, excel-tab dialect, named .csv", "train.csv", lambda p: _csv_module(p, dialect="excel-tab")),
    Table("pandas to_csv sep='|'", "train.csv", lambda p: _frame().to_csv(p, sep="|", index=False)),
    Table("pandas to_csv comma-separated, named .tsv", "train.tsv", lambda p: _frame().to_csv(p, index=False)),
    Table("pandas to_json (default orient='columns')", "train.json", lambda p: _frame().to_json(p)),
    Table("pandas to_json orient='records'", "train.json", lambda p: _frame().to_json(p, orient="records")),
    Table("pandas to_json orient='index'", "train.json", lambda p: _frame().to_json(p, orient="index")),
    Table("pandas to_json orient='split'", "train.json", lambda p: _frame().to_json(p, orient="split")),
    Table("pandas to_json orient='table'", "train.json", lambda p: _frame().to_json(p, orient="table")),
    Table("pandas to_json lines=True", "train.jsonl", lambda p: _frame().to_json(p, orient="records", lines=True)),
    Table("json module: JSON lines with blank lines", "train.jsonl", _json_lines_with_blank_lines),
    Table("json module: one JSON array, indented", "train.json", _json_array),
    Table("pandas to_parquet", "train.parquet", lambda p: _frame().to_parquet(p)),
    Table("pandas to_parquet, labels as a category", "train.parquet",
          lambda p: _frame().astype({"label": "category"}).to_parquet(p)),
    Table("datasets to_csv", "train.csv", lambda p: _dataset().to_csv(str(p), index=False)),
    Table("datasets to_json (JSON lines)", "train.json", lambda p: _dataset().to_json(str(p))),
    Table("datasets to_parquet", "train.parquet", lambda p: _dataset().to_parquet(str(p))),
    Table("pandas to_csv, integer labels with gaps (0, 3, 7)", "train.csv",
          lambda p: _frame(labels=[7, 0, 3, 3, 7, 0]).to_csv(p, index=False),
          labels=(7, 0, 3, 3, 7, 0), classes=tuple(str(i) for i in range(8))),
    Table("pandas to_parquet, integer labels with gaps", "train.parquet",
          lambda p: _frame(labels=[7, 0, 3, 3, 7, 0]).to_parquet(p),
          labels=(7, 0, 3, 3, 7, 0), classes=tuple(str(i) for i in range(8))),
    Table("pandas to_csv, empty text cells (embedded as empty strings)", "train.csv",
          lambda p: _frame(texts=[ARTICLES[0], None, ARTICLES[2], "", ARTICLES[4], ARTICLES[5]]).to_csv(p, index=False),
          texts=(ARTICLES[0], "", ARTICLES[2], "", ARTICLES[4], ARTICLES[5])),
    Table("pandas to_json lines=True, empty text cells", "train.jsonl",
          lambda p: _frame(texts=[ARTICLES[0], None, ARTICLES[2], "", ARTICLES[4], ARTICLES[5]]).to_json(p, orient="records", lines=True),
          texts=(ARTICLES[0], "", ARTICLES[2], "", ARTICLES[4], ARTICLES[5])),
    Table("pandas to_parquet, empty text cells", "train.parquet",
          lambda p: _frame(texts=[ARTICLES[0], None, ARTICLES[2], "", ARTICLES[4], ARTICLES[5]]).to_parquet(p),
          texts=(ARTICLES[0], "", ARTICLES[2], "", ARTICLES[4], ARTICLES[5])),
]


@pytest.mark.parametrize("case", TABLES, ids=[t.name for t in TABLES])
def test_table_written_by_another_program_loads_its_rows_and_labels(tmp_path: Path, case: Table) -> None:
    case.write(tmp_path / case.file)
    split = load_split(resolve_dataset(str(tmp_path)), "train")
    assert split.input_columns == ("text",) and split.label_column == "label"
    assert split.get_inputs(range(len(split))) == list(case.texts)
    assert split.labels.tolist() == list(case.labels)
    assert split.class_names == list(case.classes)


def _long_articles(rows: int) -> tuple[list[str], list[str]]:
    """Give ``rows`` texts of several paragraphs (about 2.5 kB each) and their labels."""
    rng = np.random.default_rng(0)
    words = "the a bank match phone rates said \"quoted\" comma, semi; tab\tend".split(" ")
    texts = []
    for i in range(rows):
        paragraphs = [" ".join(rng.choice(words, 60)) for _ in range(7)]
        texts.append(f"Headline {i}\n\n" + "\n\n".join(paragraphs))
    return texts, [CLASSES[i % 3] for i in range(rows)]


def test_a_one_column_csv_whose_texts_hold_semicolons_stays_one_column(tmp_path: Path) -> None:
    """The delimiter is read from the header row alone: a single column named ``text`` is never split."""
    with open(tmp_path / "train.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text"])
        writer.writerows([["a; b; c"], ["x|y"], ["tab\there"]])
    split = load_split(resolve_dataset(str(tmp_path)), "train")
    assert split.input_columns == ("text",) and split.label_column is None
    assert split.get_inputs(range(3)) == ["a; b; c", "x|y", "tab\there"]


@pytest.mark.parametrize("header", ["text|source", "text; notes", "name\tvalue"])
def test_a_one_column_csv_whose_header_holds_another_delimiter_stays_one_column(tmp_path: Path, header: str) -> None:
    """The header alone split it ("Expected 2 columns, got 1" on its rows, which read before): the first row decides too."""
    with open(tmp_path / "train.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([[header], ["one text"], ["another"]])
    split = load_split(resolve_dataset(str(tmp_path)), "train")
    assert split.input_columns == (header,) and split.get_inputs(range(2)) == ["one text", "another"]


def test_a_csv_read_with_another_delimiter_than_its_suffix_has_a_fingerprint_of_its_own(tmp_path: Path) -> None:
    """Entries embedded before the ';' was found hold one text column of whole rows: they must not be cache hits,
    while every file read as before keeps the fingerprint (and so the cache entries) it had."""
    import hashlib

    from stitchcli.data import dataset_fingerprint
    from stitchcli.fingerprint import file_sha256

    def before(path: Path) -> str:  # the fingerprint as it was computed before delimiters were detected
        return hashlib.sha256(f"train={file_sha256(path)};".encode()).hexdigest()

    for sep, kept in ((",", True), (";", False)):
        folder = tmp_path / ("comma" if kept else "semicolon")
        folder.mkdir()
        _frame().to_csv(folder / "train.csv", sep=sep, index=False)
        assert (dataset_fingerprint(resolve_dataset(str(folder)), "train") == before(folder / "train.csv")) is kept


def test_datasets_to_parquet_keeps_the_class_names_of_its_class_label_feature(tmp_path: Path) -> None:
    """datasets records a ClassLabel's names in the Parquet schema; they were read as 0, 1, 2 (what predict printed)."""
    import hashlib

    import datasets

    from stitchcli.data import dataset_fingerprint
    from stitchcli.fingerprint import file_sha256

    names = ["zebra", "ant", "tech"]  # not sorted: the ids are the feature's
    features = datasets.Features({"text": datasets.Value("string"), "topic": datasets.ClassLabel(names=names)})
    ids = [2, 0, 1, 1, 2, 0]
    (tmp_path / "hf").mkdir()
    datasets.Dataset.from_dict({"text": ARTICLES, "topic": ids}, features=features).to_parquet(str(tmp_path / "hf" / "train.parquet"))
    spec = resolve_dataset(str(tmp_path / "hf"))
    split = load_split(spec, "train")
    assert (split.input_columns, split.label_column) == (("text",), "topic")  # a ClassLabel is labels whatever its name
    assert split.labels.tolist() == ids and split.class_names == names
    assert split.get_inputs(range(len(split))) == ARTICLES
    # entries made when the names were 0, 1, 2 are not cache hits; a Parquet file without the feature keeps its key
    (tmp_path / "plain").mkdir()
    _frame().to_parquet(tmp_path / "plain" / "train.parquet")
    for folder, kept in (("plain", True), ("hf", False)):
        before = hashlib.sha256(f"train={file_sha256(tmp_path / folder / 'train.parquet')};".encode()).hexdigest()
        assert (dataset_fingerprint(resolve_dataset(str(tmp_path / folder)), "train") == before) is kept


@pytest.mark.parametrize("writer", ["csv module", "pandas"])
def test_large_csv_with_quoted_newlines_loads_whole(tmp_path: Path, writer: str) -> None:
    """Issue 18: a quoted field cut by pyarrow's 1 MB block boundary broke files over 1 MB only."""
    texts, labels = _long_articles(600)
    path = tmp_path / "train.csv"
    if writer == "csv module":
        _csv_module(path, texts, labels)
    else:
        _frame(texts, labels).to_csv(path, index=False)
    assert path.stat().st_size > 1_200_000  # more than one of pyarrow's 1 MB blocks
    split = load_split(resolve_dataset(str(path)), "train")
    assert split.get_inputs(range(len(split))) == texts
    assert split.labels.tolist() == [CLASSES.index(label) for label in labels]


def test_csv_reads_as_pandas_reads_it(tmp_path: Path) -> None:
    """The same rows and values as pandas.read_csv, but the cells pandas alone takes as missing."""
    import pandas as pd

    texts = [*ARTICLES, "NA", "n/a", "null", "NaN", "", "None", "<NA>"]
    labels = [CLASSES[i % 3] for i in range(len(texts))]
    _csv_module(tmp_path / "train.csv", texts, labels)
    split = load_split(resolve_dataset(str(tmp_path)), "train")
    ours = split.get_inputs(range(len(split)))
    theirs = ["" if isinstance(v, float) else v for v in pd.read_csv(tmp_path / "train.csv")["text"]]
    differ = [(o, t) for o, t in zip(ours, theirs) if o != t]
    assert differ == [("None", ""), ("<NA>", "")]


# --- tables: one line and exit 2 -----------------------------------------------------------------------------


def _first_bad_byte(data: bytes) -> tuple[int, int]:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start, data.count(b"\n", 0, exc.start) + 1
    raise AssertionError("valid UTF-8")


def _cp1252_csv(folder: Path) -> str:
    _frame().to_csv(folder / "train.csv", index=False, encoding="cp1252", errors="replace")
    offset, line = _first_bad_byte((folder / "train.csv").read_bytes())
    return f"cannot read table file {folder / 'train.csv'}: it is not UTF-8 text (byte 0x{(folder / 'train.csv').read_bytes()[offset]:02X} at offset {offset}, line {line})"


def _latin1_jsonl(folder: Path) -> str:
    _frame().to_json(folder / "train.jsonl", orient="records", lines=True, force_ascii=False)
    (folder / "train.jsonl").write_bytes((folder / "train.jsonl").read_text(encoding="utf-8").encode("latin-1", errors="replace"))
    offset, line = _first_bad_byte((folder / "train.jsonl").read_bytes())
    return f"cannot read table file {folder / 'train.jsonl'}: it is not UTF-8 text (byte 0x{(folder / 'train.jsonl').read_bytes()[offset]:02X} at offset {offset}, line {line})"


def _utf16_csv(folder: Path) -> str:
    _frame().to_csv(folder / "train.csv", index=False, encoding="utf-16")
    return f"cannot read table file {folder / 'train.csv'}: it is UTF-16 text (it starts with a UTF-16 byte-order mark), not UTF-8"


def _header_only(write: Callable[[object, Path], None], file: str) -> Callable[[Path], str]:
    def make(folder: Path) -> str:
        import pandas as pd

        _frame().to_csv(folder / "train.csv", index=False)
        write(pd.DataFrame({"text": pd.Series([], dtype=str), "label": pd.Series([], dtype=str)}), folder / file)
        return f"dataset '{folder}' split 'test' has no rows: give a split that holds data"

    return make


def _pandas_values_json(folder: Path) -> str:
    _frame().to_json(folder / "train.json", orient="values")
    return f"cannot read table file {folder / 'train.json'}: expected records"


def _broken_json_line(folder: Path) -> str:
    _frame().to_json(folder / "train.jsonl", orient="records", lines=True)
    lines = (folder / "train.jsonl").read_text().splitlines()
    lines[2] = lines[2][:-5]  # cut off mid-record, as an interrupted writer leaves it
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    return f"cannot read table file {folder / 'train.jsonl'}: Unterminated string starting at line 3, column"


BAD_TABLES = {
    "pandas to_csv encoding='cp1252'": (_cp1252_csv, "train"),
    "JSON lines saved as Latin-1": (_latin1_jsonl, "train"),
    "pandas to_csv encoding='utf-16'": (_utf16_csv, "train"),
    "pandas to_csv of no rows (header only)": (_header_only(lambda df, p: df.to_csv(p, index=False), "test.csv"), "test"),
    "pandas to_parquet of no rows": (_header_only(lambda df, p: df.to_parquet(p), "test.parquet"), "test"),
    "pandas to_json lines=True of no rows (an empty file)": (
        _header_only(lambda df, p: df.to_json(p, orient="records", lines=True), "test.jsonl"), "test"),
    "pandas to_json orient='values' (no column names)": (_pandas_values_json, "train"),
    "JSON lines with a record cut short": (_broken_json_line, "train"),
}


@pytest.mark.parametrize("name", list(BAD_TABLES))
def test_table_that_cannot_load_exits_2_with_one_line_naming_it(tmp_path: Path, cache_dir: Path, tiny_bert: Path, name: str) -> None:
    make, split = BAD_TABLES[name]
    folder = tmp_path / "data"
    folder.mkdir()
    expected = make(folder)
    result = CliRunner().invoke(app, ["embed", "-m", str(tiny_bert), "-d", str(folder), "--split", split])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"stitchcli: error: {expected}"), result.stderr
    assert not (cache_dir / "embeddings").exists() or not any((cache_dir / "embeddings").rglob("*.safetensors"))


@pytest.fixture(scope="module")
def two_tiny_berts(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """Give two model folders holding the same tiny BERT (so every measure between them says identical)."""
    import shutil

    twin = tmp_path_factory.mktemp("twin") / "bert"
    shutil.copytree(tiny_bert, twin)
    return str(tiny_bert), str(twin)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl", "save_to_disk"])
def test_text_with_no_label_column_embeds_and_compares_and_stitch_refuses(tmp_path: Path, cache_dir: Path, two_tiny_berts, fmt: str) -> None:
    from data_fixtures import UNLABELLED_ROWS, write_unlabelled

    folder = str(write_unlabelled(tmp_path / "data", fmt))
    bert, twin = two_tiny_berts
    result = CliRunner().invoke(app, ["embed", "-m", bert, "-d", folder, "--json"])
    assert result.exit_code == 0, result.output
    assert [entry["rows"] for entry in json.loads(result.stdout)["entries"]] == [UNLABELLED_ROWS["train"], UNLABELLED_ROWS["test"]]
    result = CliRunner().invoke(app, ["similarity", "-m", f"{bert},{twin}", "-d", folder, "--measures", "linear-cka", "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["samples"] == UNLABELLED_ROWS["test"]
    assert [round(row["value"], 6) for row in document["rows"]] == [1.0]  # the same model twice
    result = CliRunner().invoke(app, ["stitch", bert, twin, "-d", folder])
    assert result.exit_code == 2, result.output
    assert _the_error_line(result.stderr).startswith("stitchcli: error: dataset ") and "has no labels" in result.stderr
    assert "no column of it is recognised as labels; its columns: text" in result.stderr  # what to choose from


@pytest.mark.slow
def test_label_column_none_reads_a_labelled_table_without_labels_and_fit_head_says_so(tmp_path: Path, cache_dir: Path, tiny_bert: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    _frame().to_csv(folder / "train.csv", index=False)
    result = CliRunner().invoke(app, ["embed", "-m", str(tiny_bert), "-d", str(folder), "--split", "train", "--label-column", "none", "--limit", "4"])
    assert result.exit_code == 0, result.output
    entries = sorted((cache_dir / "embeddings").rglob("*.safetensors"))
    result = CliRunner().invoke(app, ["embed", "-m", str(tiny_bert), "-d", str(folder), "--split", "train", "--limit", "4"])
    assert result.exit_code == 0, result.output
    assert len(sorted((cache_dir / "embeddings").rglob("*.safetensors"))) == len(entries) + 1  # a labelled entry of its own
    result = CliRunner().invoke(app, ["fit-head", "-m", str(tiny_bert), "-d", str(folder), "--label-column", "none"])
    assert result.exit_code == 2, result.output
    assert "has no labels (it is read with --label-column none)" in _the_error_line(result.stderr)


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 1 << 20])
def test_first_invalid_utf8_is_found_across_chunk_boundaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    import stitchcli.data.tables as tables

    monkeypatch.setattr(tables, "_CHUNK", chunk)
    good = "é€🎉\nline two ü\n".encode()
    path = tmp_path / "x.csv"
    path.write_bytes(good)
    assert first_invalid_utf8(path) is None
    path.write_bytes(good + b"caf\xe9\n")
    assert first_invalid_utf8(path) == (len(good) + 3, 3, 0xE9)
    path.write_bytes(good + "🎉".encode()[:3])  # a sequence cut by the end of the file
    assert first_invalid_utf8(path) == (len(good), 3, 0xF0)


# --- image folders: PIL writes each mode and format ----------------------------------------------------------


def _halves(left: tuple, right: tuple, mode: str, size: tuple[int, int] = (16, 8)):
    """Give an image whose left half is ``left`` and right half ``right``."""
    from PIL import Image

    image = Image.new(mode, size, left)
    image.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return image


def _palette_with_transparent_colour():
    from PIL import Image

    image = Image.new("P", (16, 8), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0, 0, 0] * 254)
    image.paste(1, (8, 0, 16, 8))
    image.info["transparency"] = 0  # index 0 (red) is transparent
    return image


GRADIENT_16 = (np.arange(256, dtype=np.uint32) * 257).astype(np.uint16).reshape(1, 256).repeat(4, axis=0)


def _exif_rotated(orientation: int):
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    return lambda p: _halves((0, 0, 255), (255, 0, 0), "RGB", (40, 20)).save(p, exif=exif.tobytes(), quality=95)


def _close(want: tuple, atol: int = 0) -> Callable[[np.ndarray], None]:
    def check(rgb: np.ndarray) -> None:
        assert np.abs(rgb.astype(int) - np.array(want)).max() <= atol, (rgb[0, 0], want)

    return check


def _left_right(left: tuple, right: tuple, atol: int = 0) -> Callable[[np.ndarray], None]:
    def check(rgb: np.ndarray) -> None:
        w = rgb.shape[1]
        _close(left, atol)(rgb[:, : w // 2 - 1])
        _close(right, atol)(rgb[:, w // 2 + 1 :])

    return check


def _upright(top: tuple, bottom: tuple, size: tuple[int, int]) -> Callable[[np.ndarray], None]:
    """Check the photo is shown as a viewer shows it: ``size`` (width, height) and these colours on top and below."""

    def check(rgb: np.ndarray) -> None:
        assert (rgb.shape[1], rgb.shape[0]) == size
        h = rgb.shape[0]
        _close(top, 12)(rgb[: h // 2 - 2])
        _close(bottom, 12)(rgb[h // 2 + 2 :])

    return check


def _gradient_16(rgb: np.ndarray) -> None:
    want = np.round(GRADIENT_16[0] / 257).astype(int)  # 0..255: not clipped to white
    for channel in range(3):
        np.testing.assert_array_equal(rgb[0, :, channel], want)


@dataclass(frozen=True)
class Picture:
    """One image kind: ``write(path)`` saves it with PIL; ``check(rgb)`` asserts what the models receive."""

    name: str
    file: str
    write: Callable[[Path], None]
    check: Callable[[np.ndarray], None]


def _image(mode: str, colour, size=(16, 8)):
    from PIL import Image

    return Image.new(mode, size, colour)


def _from_array(array: np.ndarray, mode: str | None = None):
    from PIL import Image

    return Image.fromarray(array, mode) if mode else Image.fromarray(array)


PICTURES = [
    Picture("grey PNG (L)", "0.png", lambda p: _image("L", 77).save(p), _close((77, 77, 77))),
    Picture("1-bit PNG (1)", "0.png", lambda p: _halves(0, 1, "1").save(p), _left_right((0, 0, 0), (255, 255, 255))),
    Picture("palette PNG (P)", "0.png", lambda p: _image("RGB", (200, 30, 60)).quantize(4).save(p), _close((200, 30, 60))),
    Picture("palette PNG with a transparent colour", "0.png", lambda p: _palette_with_transparent_colour().save(p),
            _left_right((255, 255, 255), (0, 0, 255))),
    Picture("RGBA PNG, half transparent (composited on white)", "0.png",
            lambda p: _halves((255, 0, 0, 255), (0, 0, 0, 0), "RGBA").save(p), _left_right((255, 0, 0), (255, 255, 255))),
    Picture("RGBA PNG, black at half opacity", "0.png", lambda p: _image("RGBA", (0, 0, 0, 128)).save(p), _close((127, 127, 127), 1)),
    Picture("grey + alpha PNG (LA)", "0.png", lambda p: _halves((0, 255), (0, 0), "LA").save(p),
            _left_right((0, 0, 0), (255, 255, 255))),
    Picture("16-bit grey PNG (I;16)", "0.png", lambda p: _from_array(GRADIENT_16).save(p), _gradient_16),
    Picture("16-bit grey TIFF (I;16)", "0.tif", lambda p: _from_array(GRADIENT_16).save(p), _gradient_16),
    Picture("32-bit float TIFF (F) in [0, 1]", "0.tiff", lambda p: _from_array(np.full((8, 16), 0.5, np.float32), "F").save(p),
            _close((128, 128, 128), 1)),
    Picture("CMYK JPEG", "0.jpg", lambda p: _image("RGB", (200, 30, 60)).convert("CMYK").save(p, quality=95), _close((200, 30, 60), 10)),
    Picture("EXIF-rotated JPEG (orientation 6: turn right)", "0.jpg", _exif_rotated(6), _upright((0, 0, 255), (255, 0, 0), (20, 40))),
    Picture("EXIF-rotated JPEG (orientation 8: turn left)", "0.jpg", _exif_rotated(8), _upright((255, 0, 0), (0, 0, 255), (20, 40))),
    Picture("EXIF-rotated JPEG (orientation 3: upside down)", "0.jpeg", _exif_rotated(3), _left_right((255, 0, 0), (0, 0, 255), 12)),
    Picture("WebP (lossy)", "0.webp", lambda p: _image("RGB", (10, 120, 200)).save(p, quality=90), _close((10, 120, 200), 8)),
    Picture("WebP with transparency", "0.webp", lambda p: _halves((0, 128, 0, 255), (0, 0, 0, 0), "RGBA").save(p, lossless=True),
            _left_right((0, 128, 0), (255, 255, 255))),
    Picture("TIFF (RGB, LZW)", "0.tiff", lambda p: _image("RGB", (1, 2, 250)).save(p, compression="tiff_lzw"), _close((1, 2, 250))),
    Picture("GIF", "0.gif", lambda p: _image("RGB", (250, 250, 0)).save(p), _close((250, 250, 0))),
    Picture("BMP", "0.bmp", lambda p: _image("RGB", (9, 8, 7)).save(p), _close((9, 8, 7))),
    Picture("JPEG named .JPG (a camera's upper-case name)", "IMG_0001.JPG", lambda p: _image("RGB", (90, 90, 90)).save(p, "JPEG", quality=95),
            _close((90, 90, 90), 3)),
]


@pytest.mark.parametrize("case", PICTURES, ids=[c.name for c in PICTURES])
def test_image_written_by_pil_reaches_the_models_as_a_viewer_shows_it(tmp_path: Path, case: Picture) -> None:
    folder = tmp_path / "images" / "train" / "cat"
    folder.mkdir(parents=True)
    case.write(folder / case.file)
    split = load_split(resolve_dataset(str(tmp_path / "images")), "train")
    (image,) = split.get_inputs([0])
    assert image.mode == "RGB"
    case.check(np.asarray(image))


def test_image_folder_ignores_the_files_operating_systems_leave(tmp_path: Path) -> None:
    """.DS_Store, AppleDouble ``._`` files, Thumbs.db, desktop.ini, hidden folders and a zip's __MACOSX folder."""
    from PIL import Image

    root = tmp_path / "photos"
    for split, cls in (("train", "cat"), ("train", "dog"), ("test", "cat")):
        folder = root / split / cls
        (folder / ".ipynb_checkpoints").mkdir(parents=True)
        Image.new("RGB", (4, 4), (1, 2, 3)).save(folder / "0001.png")
        Image.new("RGB", (4, 4)).save(folder / ".ipynb_checkpoints" / "0001-checkpoint.jpg")
        (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(100))
        (folder / "._0001.png").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(60))  # AppleDouble
        (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(100))
        (folder / "desktop.ini").write_text("[.ShellClassInfo]\n")
    (root / "__MACOSX" / "train" / "cat").mkdir(parents=True)
    (root / "__MACOSX" / "train" / "cat" / "._0001.jpg").write_bytes(b"\x00\x05\x16\x07" + bytes(60))
    (root / ".DS_Store").write_bytes(bytes(10))
    spec = resolve_dataset(str(root))
    train = load_split(spec, "train")
    assert len(train) == 2 and train.class_names == ["cat", "dog"]
    assert [np.asarray(i)[0, 0].tolist() for i in train.get_inputs([0, 1])] == [[1, 2, 3], [1, 2, 3]]
    with pytest.raises(Exception, match="available splits: test, train"):
        load_split(spec, "__MACOSX")


def _png_at(path: Path, colour: tuple[int, int, int]) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), colour).save(path)


def test_images_in_subfolders_of_class_folders_are_rows_of_that_class(tmp_path: Path) -> None:
    """train/cat/indoor/1.png is a cat, as torchvision's ImageFolder reads it (it was left out, with no word);
    symbolic links to folders are followed, each real folder once."""
    root = tmp_path / "photos"
    _png_at(root / "train" / "cat" / "0.png", (1, 0, 0))
    _png_at(root / "train" / "cat" / "indoor" / "1.png", (2, 0, 0))
    _png_at(root / "train" / "cat" / "indoor" / "night" / "2.JPG".replace(".JPG", ".png"), (3, 0, 0))
    _png_at(root / "train" / "cat" / ".cache" / "x.png", (9, 9, 9))  # hidden: skipped
    _png_at(root / "train" / "dog" / "shelter" / "0.png", (4, 0, 0))  # a class whose images all lie one level down
    _png_at(tmp_path / "elsewhere" / "5.png", (5, 0, 0))
    (root / "train" / "dog" / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (root / "train" / "dog" / "shelter" / "loop").symlink_to(root / "train" / "dog", target_is_directory=True)
    _png_at(root / "test" / "dog" / "0.png", (6, 0, 0))
    split = load_split(resolve_dataset(str(root)), "train")
    assert split.class_names == ["cat", "dog"] and split.labels.tolist() == [0, 0, 0, 1, 1]
    assert [np.asarray(i)[0, 0, 0] for i in split.get_inputs(range(len(split)))] == [1, 2, 3, 5, 4]


def test_a_split_folder_holding_images_beside_its_class_folders_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    _png_at(root / "train" / "cat" / "0.png", (1, 0, 0))
    _png_at(root / "train" / "stray.png", (2, 0, 0))
    with pytest.raises(Exception, match=r"holds 1 image\(s\) beside its class folders \(first: stray.png\): move them"):
        load_split(resolve_dataset(str(root)), "train")


def test_an_image_that_is_a_link_to_nothing_is_refused_naming_it(tmp_path: Path) -> None:
    from stitchcli.data import dataset_fingerprint

    root = tmp_path / "photos"
    _png_at(root / "train" / "cat" / "0.png", (1, 0, 0))
    (root / "train" / "cat" / "1.png").symlink_to(tmp_path / "moved-away.png")
    (root / "train" / "cat" / "notes.txt").symlink_to(tmp_path / "gone.txt")  # not an image: not a row, no error
    spec = resolve_dataset(str(root))
    assert dataset_fingerprint(spec, "train")  # it was a FileNotFoundError (a traceback) here
    with pytest.raises(Exception, match=r"1.png is a symbolic link to .*moved-away.png, which does not exist: fix the link or remove it"):
        load_split(spec, "train")


@pytest.mark.slow
def test_an_image_that_is_a_link_to_nothing_is_one_line_and_exit_2(tmp_path: Path, cache_dir: Path) -> None:
    root = tmp_path / "photos"
    _png_at(root / "test" / "cat" / "0.png", (1, 0, 0))
    (root / "test" / "cat" / "1.png").symlink_to(tmp_path / "moved-away.png")
    (root / "test" / "cat" / "notes.txt").symlink_to(tmp_path / "gone.txt")  # not an image: not a row, no error
    result = CliRunner().invoke(app, ["embed", "-m", "test_vit", "--weights", "random", "-d", str(root), "-s", "test", "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert _the_error_line(result.stderr) == (f"stitchcli: error: image file {root / 'test' / 'cat' / '1.png'} is a symbolic link to "
                                              f"{tmp_path / 'moved-away.png'}, which does not exist: fix the link or remove it")


def test_an_image_folder_keeps_its_fingerprint_unless_its_rows_changed(tmp_path: Path) -> None:
    """Reading images below class folders adds rows to such folders only: their entries (made without those rows)
    must not be cache hits, while every flat folder keeps the fingerprint, and so the cache entries, it had."""
    import hashlib

    from stitchcli.data import dataset_fingerprint
    from stitchcli.fingerprint import tree_fingerprint

    def before(root: Path) -> str:  # the fingerprint as it was computed before subfolders were read
        digest = hashlib.sha256(tree_fingerprint(root / "train", content=False).encode())
        digest.update("\0".join(["cat", "dog"]).encode())
        return digest.hexdigest()

    for nested in (False, True):
        root = tmp_path / f"nested-{nested}"
        _png_at(root / "train" / "cat" / "0.png", (1, 0, 0))
        _png_at(root / "train" / "dog" / ("sub/0.png" if nested else "0.png"), (2, 0, 0))
        (root / "train" / "dog" / "notes").mkdir()
        (root / "train" / "dog" / "notes" / "readme.txt").write_text("not an image")
        assert (dataset_fingerprint(resolve_dataset(str(root)), "train") == before(root)) is not nested


def test_images_reached_through_a_link_below_a_class_folder_are_in_the_fingerprint(tmp_path: Path) -> None:
    """Rows read through a link to a folder (followed since subfolders are read) key the entry: the walk that hashes
    names and sizes does not follow links, so the entries made before without those rows were read back, and an
    image added there went unnoticed. A __MACOSX folder (never read) leaves a flat folder its fingerprint."""
    import hashlib

    from stitchcli.data import dataset_fingerprint
    from stitchcli.fingerprint import tree_fingerprint

    def flat_fingerprint(root: Path) -> str:  # as computed before subfolders were read
        digest = hashlib.sha256(tree_fingerprint(root / "train", content=False).encode())
        digest.update("\0".join(["cat", "dog"]).encode())
        return digest.hexdigest()

    root = tmp_path / "photos"
    _png_at(root / "train" / "cat" / "0.png", (1, 0, 0))
    _png_at(root / "train" / "dog" / "0.png", (2, 0, 0))
    _png_at(root / "train" / "dog" / "__MACOSX" / "1.png", (0, 0, 0))
    spec = resolve_dataset(str(root))
    flat = dataset_fingerprint(spec, "train")
    assert flat == flat_fingerprint(root) and len(load_split(spec, "train")) == 2
    _png_at(tmp_path / "elsewhere" / "5.png", (5, 0, 0))
    (root / "train" / "dog" / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    linked = dataset_fingerprint(spec, "train")
    assert len(load_split(spec, "train")) == 3 and linked != flat
    _png_at(tmp_path / "elsewhere" / "6.png", (6, 0, 0))
    assert dataset_fingerprint(spec, "train") != linked


def test_every_source_gives_the_same_pixels(tmp_path: Path) -> None:
    """An image folder, a ``datasets.save_to_disk`` folder and a ``datasets`` Parquet file of the same PIL-written
    files give the models the same pixels (EXIF turned, transparency on white, 16-bit scaled in all three)."""
    import datasets

    kinds = [c for c in PICTURES if "16-bit" in c.name or "EXIF" in c.name or "RGBA" in c.name or "CMYK" in c.name]
    folder = tmp_path / "images" / "train" / "cat"
    folder.mkdir(parents=True)
    paths = []
    for i, case in enumerate(kinds):
        path = folder / f"{i:02d}-{case.file}"
        case.write(path)
        paths.append(str(path))
    from_folder = load_split(resolve_dataset(str(tmp_path / "images")), "train")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat"])})
    table = datasets.Dataset.from_dict({"image": paths, "label": [0] * len(paths)}, features=features)
    table.save_to_disk(str(tmp_path / "disk"))
    (tmp_path / "parquet").mkdir()
    table.to_parquet(str(tmp_path / "parquet" / "train.parquet"))
    want = [np.asarray(i) for i in from_folder.get_inputs(range(len(from_folder)))]
    for i, case in enumerate(kinds):
        case.check(want[i])
    for other in ("disk", "parquet"):
        split = load_split(resolve_dataset(str(tmp_path / other)), "train")
        got = [np.asarray(i) for i in split.get_inputs(range(len(split)))]
        for case, a, b in zip(kinds, got, want):
            np.testing.assert_array_equal(a, b, err_msg=f"{other}: {case.name}")


# --- a bad image among many: one line, exit 2, finished shards kept and reused --------------------------------


def _jpeg_folder(root: Path, per_class: int = 100) -> Path:
    """Give an image folder whose test split holds ``per_class`` small JPEGs of each of two classes."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, cls in enumerate(("cat", "dog")):
        folder = root / "test" / cls
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(60 + 120 * c, 30, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:04d}.jpg", quality=90)
    return root


def _the_error_line(stderr: str) -> str:
    """Give the one error line, the last on stderr (progress lines may come before it), after checking it is the only one."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert [line for line in lines if "error" in line.lower()] == lines[-1:], stderr
    return lines[-1]


@pytest.mark.slow
def test_truncated_jpeg_among_200_stops_with_one_line_keeps_shards_and_the_rerun_resumes(tmp_path: Path, cache_dir: Path) -> None:
    from conftest import run_cli

    from stitchcli.embedding import EmbedOptions, embed, load_embeddings
    from stitchcli.store import EmbeddingStore

    data = _jpeg_folder(tmp_path / "photos")
    whole = (data / "test" / "cat" / "0050.jpg").read_bytes()
    bad = data / "test" / "cat" / "0050x.jpg"  # row 51 of 201: sorted after 0050.jpg
    bad.write_bytes(whole[: len(whole) // 2])  # a download cut short
    command = ["embed", "-m", "test_vit", "--weights", "random", "-d", str(data), "-s", "test",
               "--batch-size", "8", "--shard-rows", "16", "--device", "cpu", "--json"]

    failed = run_cli(*command)
    assert failed.returncode == 2, failed.stderr
    assert "Traceback" not in failed.stderr and failed.stdout == ""
    line = _the_error_line(failed.stderr)
    assert line.startswith(f"stitchcli: error: cannot decode image file {bad}: ")  # then Pillow's reason ("Truncated File Read")
    assert line.endswith("; fix or remove it, then run the same command again (finished shards are kept and reused)")
    (partial,) = (cache_dir / "embeddings").rglob("test-*.partial")
    assert sorted(p.name for p in partial.glob("shard-*")) == [f"shard-{i:06d}.safetensors" for i in range(3)]  # rows 0-47

    bad.unlink()
    resumed = run_cli(*command)
    assert resumed.returncode == 0, resumed.stderr
    (entry,) = json.loads(resumed.stdout)["entries"]
    assert entry["rows"] == 200 and entry["resumed_rows"] == 48 and not entry["cache_hit"]
    assert "resuming, 48 of 200 rows already done" in resumed.stderr

    fresh = EmbeddingStore(tmp_path / "fresh-cache")
    embed([ModelRef(name, {"weights": "random"}) for name in ["test_vit"]], str(data), ["test"], store=fresh,
          options=EmbedOptions(batch_size=8, shard_rows=16, device="cpu", num_workers=0))
    want = load_embeddings(fresh, ModelRef("test_vit", {"weights": "random"}), str(data), "test")
    got = load_embeddings(EmbeddingStore(cache_dir), ModelRef("test_vit", {"weights": "random"}), str(data), "test")
    assert got.metadata["resumed_rows"] == 48
    np.testing.assert_array_equal(got.ids, want.ids)
    np.testing.assert_array_equal(got.labels, want.labels)
    np.testing.assert_allclose(got.embeddings, want.embeddings, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_a_web_page_saved_as_jpg_stops_with_one_line_naming_it(tmp_path: Path, cache_dir: Path) -> None:
    data = _jpeg_folder(tmp_path / "photos", per_class=4)
    page = data / "test" / "dog" / "0002.jpg"
    page.write_text("<!DOCTYPE html><html><body>Access denied</body></html>")
    result = CliRunner().invoke(app, ["embed", "-m", "test_vit", "--weights", "random", "-d", str(data), "-s", "test",
                                      "--batch-size", "2", "--shard-rows", "2", "--device", "cpu"])
    assert result.exit_code == 2, result.output
    line = _the_error_line(result.stderr)
    assert line.startswith(f"stitchcli: error: cannot decode image file {page}: not an image format Pillow reads; fix or remove it")
    (partial,) = (cache_dir / "embeddings").rglob("test-*.partial")
    assert len(list(partial.glob("shard-*"))) == 3  # the 6 rows before it


# --- acceptance: the BBC articles as Python's csv module writes them --------------------------------------


@pytest.mark.real
@pytest.mark.slow
def test_bbc_news_written_by_the_csv_module_equals_the_packaged_dataset(tmp_path: Path, cache_dir: Path) -> None:
    """Issue 18, acceptance 1. Every row's text and label is compared; MiniLM's embeddings on a 120-row subset of the
    4 MB training split (the file that failed), which depend on nothing but the texts."""
    from stitchcli.assets import register_packaged_models
    from stitchcli.data.packaged import packaged_dataset
    from stitchcli.embedding import EmbedOptions, embed, load_embeddings
    from stitchcli.store import EmbeddingStore

    store = EmbeddingStore(cache_dir)
    packaged = Path(packaged_dataset("packaged:bbc-news", store.root / "assets"))
    as_csv = tmp_path / "bbc-csv"
    as_csv.mkdir()
    for split in ("train", "test"):
        records = [json.loads(line) for line in (packaged / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
        _csv_module(as_csv / f"{split}.csv", [r["text"] for r in records], [r["label"] for r in records])
    assert (as_csv / "train.csv").stat().st_size > 4_000_000
    assert sum("\n" in r["text"] for r in records) == len(records)  # every article keeps its paragraph breaks

    for split in ("train", "test"):
        want, got = load_split(resolve_dataset(str(packaged)), split), load_split(resolve_dataset(str(as_csv)), split)
        assert got.get_inputs(range(len(got))) == want.get_inputs(range(len(want)))
        np.testing.assert_array_equal(got.labels, want.labels)
        assert got.class_names == want.class_names == ["business", "entertainment", "politics", "sport", "tech"]

    register_packaged_models(store, ["minilm"])
    entries = []
    for folder in (packaged, as_csv):
        embed(["minilm"], str(folder), ["train"], store=store, options=EmbedOptions(limit=120, num_workers=0))
        entries.append(load_embeddings(store, "minilm", str(folder), "train", limit=120))
    want, got = entries
    assert got.embeddings.shape == (120, 384)
    np.testing.assert_array_equal(got.ids, want.ids)
    np.testing.assert_array_equal(got.labels, want.labels)
    np.testing.assert_allclose(got.embeddings, want.embeddings, rtol=0, atol=1e-6)


# --- embeddings computed elsewhere (--from-array) --------------------------------------------------------


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32", "float64"])
def test_embeddings_torch_saved_as_safetensors_are_imported_in_any_float_type(tmp_path: Path, dtype: str) -> None:
    """safetensors.torch.save_file writes bfloat16, which numpy has no type for: it was 'TypeError: data type
    'bfloat16' not understood'. A file with the metadata torch's tools add, and a second tensor beside it."""
    import torch
    from safetensors.torch import save_file

    from stitchcli.embedding.arrays import read_array

    values = torch.randn(6, 5, generator=torch.Generator().manual_seed(0)).to(getattr(torch, dtype))
    path = tmp_path / "emb.safetensors"
    save_file({"embeddings": values, "labels": torch.arange(6)}, str(path), metadata={"format": "pt", "model": "mine"})
    array = read_array(path)
    assert array.shape == (6, 5) and array.dtype.kind == "f"
    np.testing.assert_array_equal(array.astype(np.float32), values.float().numpy())


# --- predict's inputs ------------------------------------------------------------------------------------


def test_a_text_file_with_a_byte_order_mark_predicts_on_its_text_alone(tmp_path: Path) -> None:
    """Notepad's 'UTF-8 with BOM' (Python: encoding='utf-8-sig'), CRLF line ends: the first input began with U+FEFF,
    which the tokenizer read as part of the text (standard input already dropped it)."""
    from stitchcli.stitched.inputs import inputs_from_paths

    path = tmp_path / "articles.txt"
    path.write_text("\r\n".join(ARTICLES[3:6:2]) + "\r\n", encoding="utf-8-sig")
    inputs = inputs_from_paths([path], "text")
    assert inputs.split.get_inputs(range(len(inputs.split))) == [ARTICLES[3], ARTICLES[5]]
    assert inputs.names == [f"{path}:1", f"{path}:2"]


def test_predict_reads_an_image_folder_as_embed_does_skipping_what_notebooks_and_zips_leave(tmp_path: Path) -> None:
    """Jupyter's .ipynb_checkpoints copies were predicted on as inputs of their own (only hidden file names were skipped)."""
    from stitchcli.stitched.inputs import inputs_from_paths

    root = tmp_path / "new-images"
    _png_at(root / "a.png", (1, 0, 0))
    _png_at(root / "batch2" / "b.JPG".replace(".JPG", ".png"), (2, 0, 0))
    _png_at(root / ".ipynb_checkpoints" / "a-checkpoint.png", (9, 9, 9))
    _png_at(root / "__MACOSX" / "batch2" / "b.png", (9, 9, 9))
    (root / "batch2" / ".DS_Store").write_bytes(bytes(8))
    inputs = inputs_from_paths([root], "image")
    assert inputs.names == [str(root / "a.png"), str(root / "batch2" / "b.png")]
    assert [np.asarray(i)[0, 0, 0] for i in inputs.split.get_inputs(range(2))] == [1, 2]
