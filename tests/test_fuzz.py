"""Property-based fuzzing (hypothesis) of the option parser and the dataset loaders.

(a) Random options and values for each subcommand, through typer's CliRunner in-process: never an uncaught
    exception or traceback, an exit code in {0, 1, 2}, and for 1 and 2 exactly one `stitchcli: error:` line
    (the last on stderr). Values now and then name the tiny datasets and imported models of a prepared
    folder, so some runs get as far as anchors, heads and stitching; options that set an amount of work
    take small numbers only, and --compile is left out (it compiles for tens of seconds).
(b) Random small tables (CSV/TSV/JSON/JSONL: random column names and types, empty strings, NaN, unicode,
    missing values) and random image folders (zero-byte files, wrong extensions, files that are not images),
    read through stitchcli.data: either a valid split (int64 labels within the class names, unique ascending
    ids, inputs that decode) or a UsageError with a one-line message, never another exception.

Derandomized, so every run tries the same examples (reproducible in CI); about 25 s on two cores.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from stitchcli.errors import UsageError

FUZZ = settings(derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck))
ERROR = "stitchcli: error: "
COMMANDS = ("embed", "anchor", "fit-head", "stitch", "eval")

# ---- (a) the option parser ---------------------------------------------------------------------------------


def _options() -> dict[str, list[tuple[str, str]]]:
    """Give each subcommand's option names with their kinds: flag, int, float, or text."""
    from typer.main import get_command

    from stitchcli.cli import app

    group = get_command(app)
    found: dict[str, list[tuple[str, str]]] = {}
    for name in COMMANDS:
        command = group.commands[name]  # type: ignore[attr-defined]
        found[name] = [
            (opt, "flag" if getattr(param, "is_flag", False) else _kind(param))
            for param in command.params
            if param.param_type_name == "option"
            for opt in (*param.opts, *param.secondary_opts)
            if opt not in ("--help", "-h", "--compile")  # --compile spends tens of seconds compiling: not a parser matter
        ]
    return found


def _kind(param: Any) -> str:
    """Give "int", "float" or "text" for an option, from its annotation (a list of str counts as text)."""
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    return {int: "int", float: "float"}.get(annotation, "text")


OPTIONS = _options()
# Work stays small whatever the values: these options take small numbers only (a run may reach model or head work).
SMALL = {"--epochs", "--patience", "--num-workers", "--hidden", "--batch-size", "--embed-batch-size", "--num-shards", "--shard-rows", "-k", "--num", "--num-anchors", "--k"}
NUMBERS = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["0", "-1", "1", "1e309", "nan", "-inf", "0x10", "1_000", " 3", "३"]),
)
WORDS = st.sampled_from(
    [
        "", " ", ",", ",,", "all", "none", "cosine", "cosine,,euclidean", "l1,linf,cosin", "mlp-sum", "concat,sum",
        "self-attention", "center", "l2", "uniform", "fps", "kmeans", "class-balanced", "cka,jaccard", "absolute",
        "affine,none", "train", "test", "validation", "train=missing.csv", "=", "0,1", "0,,1", "random", "fp16", "bf16",
        "fp64", "cpu", "cuda", "cuda:9", "mps", "auto", "cls", "mean", "-", "--", "-x", "no-such-dir/", "out/file.json",
        "afile/x", ".", "/proc/no-such-dir/file.csv", "missing.safetensors", "missing.toml", "../../etc/passwd", "~",
        "a\nb", "naïve ☃", "\x7f", "%s{}", "${HOME}",
    ]
)
# Names that exist in the fuzz folder (the current folder during a run): two tiny datasets and two imported models.
DATASETS = st.sampled_from(["images", "texts", "images", "nowhere", "cifar11", "", "texts/train.csv", "afile"])
MODELS = st.sampled_from(["arra", "arrb", "test_vit", "timm:test_vit", "nosuch_model_x", "", "arra,arrb", "arrb,arra,arra"])
VALUES = {
    "int": st.one_of(st.integers(-2, 12).map(str), NUMBERS, WORDS),
    "small": st.one_of(st.integers(-2, 3).map(str), st.sampled_from(["0", "-1", "x", "", "1.5"])),
    "float": st.one_of(st.floats(-2, 2).map(repr), NUMBERS, WORDS),
    "text": st.one_of(WORDS, MODELS, NUMBERS, st.text(max_size=10)),
}
NOISE = st.one_of(st.from_regex(r"\A--?[a-z][a-z-]{0,14}\Z"), st.sampled_from(["-", "--", "-mx", "--json=1", "--seed=", "-k3"]))
REQUIRED = {  # what each command needs, drawn from names that often exist
    "embed": lambda draw: ["-m", draw(MODELS), "-d", draw(DATASETS)] + (["--weights", "random"] if draw(st.booleans()) else []),
    "anchor": lambda draw: ["-d", draw(DATASETS)],
    "fit-head": lambda draw: ["-m", draw(MODELS), "-d", draw(DATASETS)],
    "stitch": lambda draw: [draw(MODELS), draw(MODELS), "-d", draw(DATASETS)],
    "eval": lambda draw: ["--models", draw(MODELS), "-d", draw(DATASETS)],
}
FAST = {"fit-head": ["--epochs", "1"], "stitch": ["--epochs", "1", "--seeds", "0"], "eval": ["--epochs", "1", "--seeds", "0", "--k", "2"]}


@st.composite
def command_lines(draw: st.DrawFn) -> list[str]:
    """Draw a subcommand, most of what it needs, and random options (real ones with random values, and noise)."""
    command = draw(st.sampled_from(COMMANDS))
    argv = [command, *FAST.get(command, [])]
    required = REQUIRED[command](draw)
    if draw(st.integers(0, 5)) == 0:  # now and then a required one goes missing
        del required[draw(st.integers(0, len(required) - 1))]
    argv += required
    for _ in range(draw(st.integers(0, 5))):
        if draw(st.integers(0, 9)) == 0:
            argv.append(draw(NOISE))
            continue
        option, kind = draw(st.sampled_from(OPTIONS[command]))
        if kind == "flag":
            argv.append(option)
            continue
        value = draw(VALUES["small" if option in SMALL else kind])
        if draw(st.booleans()) and option.startswith("--"):
            argv.append(f"{option}={value}")
        else:
            argv += [option, value]
    return argv


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Give the folder the runs start in: tiny datasets `images` and `texts`, a file `afile`, and a cache
    with random embeddings imported as `arra` and `arrb`."""
    from conftest import make_image_folder, make_text_table
    from stitchcli.embedding import embed
    from stitchcli.store import EmbeddingStore

    root = tmp_path_factory.mktemp("fuzz-cli")
    make_image_folder(root / "images", per_class={"train": 3, "test": 2}, classes=("cat", "dog"), size=8)
    make_text_table(root / "texts", rows_per_class=2)
    (root / "afile").write_text("a file\n")
    store = EmbeddingStore(root / "cache")
    rng = np.random.default_rng(0)
    for name, dim in (("arra", 4), ("arrb", 6)):
        files = []
        for split, rows in (("train", 6), ("test", 4)):
            np.save(root / f"{name}-{split}.npy", rng.normal(size=(rows, dim)).astype(np.float32))
            files.append(f"{split}={root / f'{name}-{split}.npy'}")
        embed([name], str(root / "images"), ["train", "test"], store=store, from_array=files)
    return root


@pytest.mark.slow
@settings(FUZZ, max_examples=300)
@given(argv=command_lines())
def test_option_parser_never_raises_and_errors_are_one_line(fuzz_dir: Path, argv: list[str]) -> None:
    from typer.testing import CliRunner

    from stitchcli.cli import app

    env = {
        "STITCHCLI_CACHE": str(fuzz_dir / "cache"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1", "COLUMNS": "100",
    }
    cwd = os.getcwd()
    os.chdir(fuzz_dir)  # names in the values are relative to the prepared folder
    try:
        result = CliRunner().invoke(app, argv, env=env)
    finally:
        os.chdir(cwd)
    assert result.exception is None or isinstance(result.exception, SystemExit), (argv, repr(result.exception))
    assert result.exit_code in (0, 1, 2), (argv, result.exit_code, result.output)
    assert "Traceback" not in result.output, (argv, result.output)
    event(f"{argv[0]}: exit {result.exit_code}")
    if result.exit_code:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith(ERROR)]
        assert len(errors) == 1 and lines[-1] == errors[0], (argv, result.stderr)
        assert len(errors[0]) > len(ERROR) + 10, (argv, errors[0])
        event("error: " + re.sub(r"'[^']*'|/\S+|-?\d+(\.\d+)?", "_", errors[0][len(ERROR):])[:40])


# ---- (b) the dataset loaders -------------------------------------------------------------------------------

NAMES = st.one_of(
    st.sampled_from(["text", "label", "sentence", "class", "image", "file", "labels", "Text", "target", "", " ", "a,b", "é", "1"]),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=6),
)
CELLS = st.one_of(
    st.none(),
    st.just(""),
    st.text(max_size=8),
    st.integers(-3, 5),
    st.integers(-(2**66), 2**66),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.sampled_from(["cat", "dog", "0", "1", "-1", "2.0", "2.5", "NaN", "null", "pics/x.png", "☃", "a\nb", "x,y", '"q"']),
)


COLUMN_CELLS = {  # mostly well-formed values, with now and then a missing or odd one
    "text": st.one_of(st.text(max_size=12), st.text(min_size=1, max_size=12), st.sampled_from(["", None, "a b"])),
    "label-str": st.sampled_from(["cat", "dog", "cat", "dog", "Cat", " dog", "☃", "", None]),
    "label-int": st.one_of(st.integers(0, 3), st.integers(-1, 3), st.integers(0, 1), st.integers(0, 2),
                           st.sampled_from([2**40, 10**25, 2**63])),
    "float": st.floats(allow_nan=True, allow_infinity=True),
    "path": st.sampled_from(["pics/x.png", "/nonexistent.jpg", "a.png", ""]),
    "anything": CELLS,
}


@st.composite
def tables(draw: st.DrawFn) -> dict[str, Any]:
    """Draw a table dataset: format, column names, and rows of the train (and maybe test) split.

    Half the tables have the usual text and label columns, so many examples get past column inference.
    """
    fmt = draw(st.sampled_from(["csv", "tsv", "json", "jsonl"]))
    if draw(st.booleans()):
        columns = draw(st.sampled_from([["text", "label"], ["sentence", "category"], ["label", "text", "note"], ["review", "stars"]]))
    else:
        columns = draw(st.lists(NAMES, min_size=1, max_size=4))
    kinds = [draw(st.sampled_from(list(COLUMN_CELLS))) for _ in columns]
    if columns[:2] == ["text", "label"] and draw(st.integers(0, 3)):
        kinds[:2] = ["text", draw(st.sampled_from(["label-str", "label-int"]))]
    splits = ["train"] + (["test"] if draw(st.booleans()) else [])
    rows = {
        split: draw(st.lists(st.tuples(*(COLUMN_CELLS[k] for k in kinds)).map(list), min_size=int(split == "train"), max_size=7))
        for split in splits
    }
    missing_keys = draw(st.booleans())  # JSON records that lack some columns
    pick = st.one_of(st.none(), st.none(), st.sampled_from(columns), NAMES)
    return {
        "format": fmt, "columns": columns, "rows": rows, "missing_keys": missing_keys,
        "input_column": draw(pick), "label_column": draw(pick),
        "limit": draw(st.one_of(st.none(), st.none(), st.integers(-1, 9))), "seed": draw(st.integers(0, 3)),
    }


def _cell_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return str(value)


def _write_table(folder: Path, table: dict[str, Any]) -> None:
    fmt, columns = table["format"], table["columns"]
    for split, rows in table["rows"].items():
        path = folder / f"{split}.{fmt}"
        if fmt in ("csv", "tsv"):
            with open(path, "w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f, delimiter="\t" if fmt == "tsv" else ",")
                writer.writerow(columns)
                writer.writerows([[_cell_text(v) for v in row] for row in rows])
            continue
        records = []
        for i, row in enumerate(rows):
            record = dict(zip(columns, row))
            if table["missing_keys"] and i % 2 and record:
                record.pop(next(iter(record)))
            records.append(record)
        if fmt == "json":
            path.write_text(json.dumps(records), encoding="utf-8")
        else:
            path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def _check_split_or_usage_error(name: str, splits: list[str], **options: Any) -> None:
    """Load every split: a valid split, or a one-line UsageError; any other exception fails the test."""
    from PIL import Image

    from stitchcli.data import load_split, resolve_dataset

    limit = options.pop("limit", None)
    seed = options.pop("seed", 0)
    try:
        spec = resolve_dataset(name, **options)
    except UsageError as exc:
        assert "\n" not in str(exc) and str(exc).strip()
        event("refused by resolve_dataset: " + re.sub(r"'[^']*'|/\S+|\d+", "_", str(exc))[:40])
        return
    for split_name in splits:
        try:
            split = load_split(spec, split_name, limit=limit, seed=seed)
            inputs = split.get_inputs(list(range(len(split))))
        except UsageError as exc:
            assert "\n" not in str(exc) and str(exc).strip(), repr(str(exc))
            event("refused: " + re.sub(r"'[^']*'|/\S+|\d+", "_", str(exc))[:50])
            continue
        n = len(split)
        assert n > 0 and split.ids.dtype == np.int64 and split.labels.dtype == np.int64
        assert split.ids.shape == split.labels.shape == (n,)
        assert len(np.unique(split.ids)) == n and bool(np.all(np.diff(split.ids) > 0))
        assert 0 <= int(split.ids.min()) and int(split.ids.max()) < split.num_rows_in_split
        assert limit is None or n <= limit
        if split.labelled:
            assert bool(np.all(split.labels >= 0)) and int(split.labels.max()) < len(split.class_names)
        else:  # no column holds labels: every row unlabelled, no class names (embed and similarity read it)
            assert bool(np.all(split.labels == -1)) and split.class_names == [] and split.label_column is None
        assert len(inputs) == n
        event(f"loaded a {split.modality} split")
        if split.modality == "text":
            assert all(isinstance(x, str) for x in inputs)
        else:
            assert all(isinstance(x, Image.Image) and x.mode == "RGB" for x in inputs)


@pytest.mark.slow
@settings(FUZZ, max_examples=400)
@given(tables())
def test_random_tables_load_or_give_one_usage_error(table: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "data"
        folder.mkdir()
        _write_table(folder, table)
        _check_split_or_usage_error(
            str(folder), list(table["rows"]), input_column=table["input_column"], label_column=table["label_column"],
            limit=table["limit"], seed=table["seed"],
        )


def _image_bytes(kind: str, fmt: str) -> bytes:
    from PIL import Image

    if kind == "empty":
        return b""
    if kind == "garbage":
        return b"\x89PNG\r\n\x1a\n" + bytes(range(40))
    if kind == "text":
        return "not an image ☃\n".encode()
    mode = {"rgb": "RGB", "gray": "L", "rgba": "RGBA", "palette": "P", "bits": "1", "i16": "I;16"}[kind.split("-")[0]]
    image = Image.new(mode, (5, 3))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt if mode in ("RGB", "L") or fmt == "PNG" else "PNG")
    data = buffer.getvalue()
    return data[: len(data) // 2] if kind.endswith("-truncated") else data


FILE_KINDS = ["rgb", "gray", "rgba", "palette", "bits", "i16", "rgb-truncated", "empty", "garbage", "text"]
EXTENSIONS = [".png", ".PNG", ".jpg", ".jpeg", ".gif", ".bmp", ".txt", "", ".png.bak", ".webp"]
FOLDER_NAMES = st.one_of(
    st.sampled_from(["train", "test", "cat", "dog", "a b", "ünï", "1", ".hidden", "-x"]),
    st.text(st.characters(whitelist_categories=("L", "N")), min_size=1, max_size=5),
)


@st.composite
def image_folders(draw: st.DrawFn) -> list[tuple[str, str, str, str, str]]:
    """Draw files as (split, class, stem, extension, content kind)."""
    files = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["train", "test"]) | FOLDER_NAMES, FOLDER_NAMES, st.from_regex(r"\A[a-z0-9]{1,4}\Z"),
                st.sampled_from(EXTENSIONS), st.sampled_from(FILE_KINDS),
            ),
            max_size=8,
        )
    )
    return files


@pytest.mark.slow
@settings(FUZZ, max_examples=200)
@given(image_folders(), st.one_of(st.none(), st.integers(1, 4)))
def test_random_image_folders_load_or_give_one_usage_error(files: list[tuple[str, str, str, str, str]], limit: int | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        root.mkdir()
        for split, cls, stem, ext, kind in files:
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            fmt = "JPEG" if ext.lower() in (".jpg", ".jpeg") else "PNG"
            (folder / f"{stem}{ext}").write_bytes(_image_bytes(kind, fmt))
        splits = sorted({split for split, *_ in files} | {"train"})
        _check_split_or_usage_error(str(root), splits, limit=limit)
