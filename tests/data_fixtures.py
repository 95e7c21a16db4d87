"""Small generated datasets in every local format stitchcli.data reads (for tests; no downloads).

Builders are plain functions (usable from any test); the fixtures below build each dataset once per
session under pytest's temporary folder. Tests that change files build their own copy.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

# Colours chosen so every image is distinguishable by its top-left pixel.
IMAGE_CLASSES = ("cat", "dog", "frog")
TRAIN_COUNTS = {"cat": 3, "dog": 2, "frog": 1}
TEST_COUNTS = {"cat": 1, "dog": 2}  # no frog: class ids must still follow every split's classes

TEXT_ROWS_TRAIN = [
    ("the match ended in a draw", "sport"),
    ("shares fell sharply today", "business"),
    ("a new phone was released", "tech"),
    ("the striker scored twice", "sport"),
    ("profits rose in the third quarter", "business"),
    ("the keeper saved a penalty", "sport"),
]
TEXT_ROWS_TEST = [
    ("the bank raised rates", "business"),
    ("the final went to extra time", "sport"),
]  # no tech row: ids must still match train's


def _png(color: tuple[int, int, int], mode: str = "RGB", fmt: str = "PNG") -> bytes:
    from PIL import Image

    image = Image.new("RGB", (4, 4), color)
    if mode != "RGB":
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def color_for(split: str, cls: str, index: int) -> tuple[int, int, int]:
    """Give the colour of image ``index`` of class ``cls`` in ``split`` (tests read it back)."""
    return (10 * (IMAGE_CLASSES.index(cls) + 1), 20 * index, 200 if split == "train" else 100)


def make_sparse_image_folder(root: Path) -> Path:
    """Give ``root`` filled as ``split/class/file``: train 3/2/1 and test 1/2/0 images of cat/dog/frog.

    ``train/dog/001`` is a JPEG and ``train/frog/000`` a grayscale PNG (both must come back RGB);
    a stray text file and a hidden file are ignored.
    """
    for split, counts in (("train", TRAIN_COUNTS), ("test", TEST_COUNTS)):
        for cls, count in counts.items():
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                if split == "train" and cls == "dog" and i == 1:
                    (folder / f"{i:03d}.jpg").write_bytes(_png(color_for(split, cls, i), fmt="JPEG"))
                elif split == "train" and cls == "frog":
                    (folder / f"{i:03d}.png").write_bytes(_png(color_for(split, cls, i), mode="L"))
                else:
                    (folder / f"{i:03d}.png").write_bytes(_png(color_for(split, cls, i)))
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    (root / "train" / "cat" / ".DS_Store").write_bytes(b"\0")
    return root


def make_disk_image_dataset(root: Path) -> Path:
    """Give a ``save_to_disk`` DatasetDict: Image + ClassLabel (names not sorted) + a second ClassLabel.

    Splits: train (6 rows), test (3 rows), unsupervised (2 rows, label -1).
    """
    import datasets
    from PIL import Image

    features = datasets.Features(
        {
            "picture": datasets.Image(),
            "label": datasets.ClassLabel(names=["zebra", "ant", "moth"]),
            "group": datasets.ClassLabel(names=["big", "small"]),
            "note": datasets.Value("string"),
        }
    )

    def split(labels: list[int]) -> datasets.Dataset:
        return datasets.Dataset.from_dict(
            {
                "picture": [Image.new("RGB", (4, 4), (40 * i, 7, 7)) for i in range(len(labels))],
                "label": labels,
                "group": [0 if lab == 0 else 1 for lab in labels],
                "note": [f"row {i}" for i in range(len(labels))],
            },
            features=features,
        )

    datasets.DatasetDict(
        train=split([0, 1, 2, 0, 1, 2]), test=split([2, 1, 0]), unsupervised=split([-1, -1])
    ).save_to_disk(str(root))
    return root


def make_disk_text_dataset(root: Path) -> Path:
    """Give a single-Dataset ``save_to_disk`` folder (state.json) of text with string labels."""
    import datasets

    texts, labels = zip(*TEXT_ROWS_TRAIN)
    datasets.Dataset.from_dict({"sentence": list(texts), "category": list(labels)}).save_to_disk(str(root))
    return root


def _write_csv(path: Path, rows: list[tuple[str, str]], header: tuple[str, str] = ("text", "label")) -> None:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def make_csv_dataset(root: Path) -> Path:
    """Give a folder with ``train.csv`` and ``test.csv`` (text, string label)."""
    root.mkdir(parents=True, exist_ok=True)
    _write_csv(root / "train.csv", TEXT_ROWS_TRAIN)
    _write_csv(root / "test.csv", TEXT_ROWS_TEST)
    return root


def make_json_dataset(root: Path) -> Path:
    """Give a folder with ``train.json`` (an array of records) and ``test.jsonl`` (JSON lines)."""
    root.mkdir(parents=True, exist_ok=True)
    records = [{"text": t, "label": lab} for t, lab in TEXT_ROWS_TRAIN]
    (root / "train.json").write_text(json.dumps(records))
    (root / "test.jsonl").write_text(
        "".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in TEXT_ROWS_TEST)
    )
    return root


def make_parquet_image_dataset(root: Path) -> Path:
    """Give a folder with ``train.parquet``/``test.parquet``: PNG bytes ``image`` and int ``label``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    for split, labels in (("train", [0, 1, 2, 1, 0, 2, 1]), ("test", [2, 0])):
        images = [_png((30 * lab, 5 * i, 9), mode="L" if i == 0 else "RGB") for i, lab in enumerate(labels)]
        pq.write_table(
            pa.table({"image": pa.array(images, type=pa.binary()), "label": pa.array(labels, type=pa.int64())}),
            root / f"{split}.parquet",
        )
    return root


def make_image_path_table(root: Path) -> Path:
    """Give a folder with ``train.csv`` naming images by relative path (``file``) and a ``class`` column."""
    (root / "pics").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, cls in enumerate(["b", "a", "b", "a"]):
        (root / "pics" / f"{i}.png").write_bytes(_png((i * 50, 0, 0)))
        rows.append((f"pics/{i}.png", cls))
    _write_csv(root / "train.csv", rows, header=("file", "class"))
    return root


def make_stratify_table(path: Path) -> Path:
    """Give a CSV of 100 rows with labels 0/1/2 in proportion 50/30/20, interleaved."""
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = [0] * 50 + [1] * 30 + [2] * 20
    order = sorted(range(100), key=lambda i: (i * 37) % 100)  # a fixed shuffle
    rows = [(f"row {i}", str(labels[j])) for i, j in enumerate(order)]
    _write_csv(path, rows)
    return path


@pytest.fixture(scope="session")
def sparse_image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sparse_image_folder(tmp_path_factory.mktemp("imagefolder"))


@pytest.fixture(scope="session")
def disk_image_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_disk_image_dataset(tmp_path_factory.mktemp("disk") / "images")


@pytest.fixture(scope="session")
def disk_text_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_disk_text_dataset(tmp_path_factory.mktemp("disk") / "text")


@pytest.fixture(scope="session")
def csv_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_csv_dataset(tmp_path_factory.mktemp("csv"))


@pytest.fixture(scope="session")
def json_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_json_dataset(tmp_path_factory.mktemp("json"))


@pytest.fixture(scope="session")
def parquet_image_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_parquet_image_dataset(tmp_path_factory.mktemp("parquet"))


@pytest.fixture(scope="session")
def image_path_table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_path_table(tmp_path_factory.mktemp("pathtable"))


@pytest.fixture(scope="session")
def stratify_table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_stratify_table(tmp_path_factory.mktemp("strat") / "rows.csv")


# --- data without labels: what other programs write when there is nothing to classify ------------------

UNLABELLED_FORMATS = ("csv", "parquet", "jsonl", "save_to_disk", "images")
UNLABELLED_ROWS = {"train": 14, "test": 9}


def unlabelled_texts(split: str, count: int) -> list[str]:
    """Give ``count`` texts of different lengths (the tiny test BERT tells texts apart by length)."""
    words = "the team won the match a late goal decided the final".split()
    return [" ".join(words[: 1 + (i * 3 + len(split)) % len(words)]) + f" ({i})" for i in range(count)]


def write_unlabelled(root: Path, fmt: str, rows: dict[str, int] = UNLABELLED_ROWS) -> Path:
    """Write train and test splits with no label column, as pandas, ``datasets`` or PIL write them; give the folder.

    Tables hold one column ``text`` (pandas ``to_csv``, ``to_parquet``, ``to_json(orient="records", lines=True)``);
    ``save_to_disk`` a DatasetDict of one ``text`` column; ``images`` split folders of PNGs with no class folders.
    """
    import pandas as pd

    root.mkdir(parents=True, exist_ok=True)
    if fmt == "images":
        import numpy as np
        from PIL import Image

        rng = np.random.default_rng(0)
        for split, count in rows.items():
            (root / split).mkdir(exist_ok=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(root / split / f"img{i:03d}.png")
        return root
    frames = {split: pd.DataFrame({"text": unlabelled_texts(split, count)}) for split, count in rows.items()}
    if fmt == "save_to_disk":
        import datasets

        datasets.DatasetDict({split: datasets.Dataset.from_pandas(frame) for split, frame in frames.items()}).save_to_disk(str(root))
        return root
    for split, frame in frames.items():
        if fmt == "csv":
            frame.to_csv(root / f"{split}.csv", index=False)
        elif fmt == "parquet":
            frame.to_parquet(root / f"{split}.parquet")
        elif fmt == "jsonl":
            frame.to_json(root / f"{split}.jsonl", orient="records", lines=True)
        else:
            raise ValueError(fmt)
    return root
