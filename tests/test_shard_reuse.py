"""Finished shards taken over by the build of the same rows in a changed dataset (stitchcli.shard_reuse)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from stitchcli.data.base import SplitData
from stitchcli.shard_reuse import ROWS_FILE, reuse_finished_shards
from stitchcli.store import EmbeddingStore, EntryKey

MODEL = "timm-test"
KEY = EntryKey(model={"backend": "timm", "source": "test"}, dataset_id="/data/photos", dataset_fingerprint="before", split="test")


def _split(keys: list[str] | None) -> SplitData:
    rows = len(keys) if keys is not None else 9
    return SplitData(
        dataset_id=KEY.dataset_id, split="test", modality="image", ids=np.arange(rows), labels=np.zeros(rows, np.int64),
        class_names=["cat"], fingerprint="x", fetch=lambda row_ids: [],
        row_keys=None if keys is None else (lambda row_ids: [keys[i] for i in row_ids]),
    )


def _embeddings(rows: int, offset: int = 0) -> np.ndarray:
    return np.arange(offset, offset + rows * 4, dtype=np.float32).reshape(rows, 4)


FILES = [f"cat/{i:02d}.jpg\0{100 + i}" for i in range(10)]


@pytest.fixture
def interrupted(tmp_path: Path) -> EmbeddingStore:
    """Give a store holding an unfinished build of KEY over FILES: shards 0 and 1 (rows 0-5) of 4 finished."""
    store = EmbeddingStore(tmp_path / "cache")
    plan = store.plan(MODEL, KEY, np.arange(10), 3)
    assert reuse_finished_shards(store, MODEL, KEY, _split(FILES), plan) == 0  # records its rows
    for index in (0, 1):
        store.write_shard(MODEL, KEY, plan, index, _embeddings(3, 100 * index))
    return store


def test_shards_before_a_removed_file_are_taken_over(interrupted: EmbeddingStore) -> None:
    store = interrupted
    after = replace(KEY, dataset_fingerprint="after")
    files = FILES[:7] + FILES[8:]  # file 7 (in shard 2) removed
    plan = store.plan(MODEL, after, np.arange(9), 3)
    assert reuse_finished_shards(store, MODEL, after, _split(files), plan) == 6
    assert plan.done == [0, 1]
    for index in (2,):
        store.write_shard(MODEL, after, plan, index, _embeddings(3, 900))
    entry = store.read(store.finish(MODEL, after, plan, labels=np.zeros(9), ids=np.arange(9), metadata={}))
    np.testing.assert_array_equal(entry.embeddings[:6], np.concatenate([_embeddings(3, 0), _embeddings(3, 100)]))
    assert store.read_plan(MODEL, KEY, None).done == [0, 1]  # the earlier build's shards are left as they were


@pytest.mark.parametrize(
    "change",
    ["a file changed size", "another model", "another subset", "other shard sizes", "taking over switched off"],
)
def test_shards_of_other_rows_or_options_are_not_taken_over(interrupted: EmbeddingStore, change: str) -> None:
    store = interrupted
    after = replace(KEY, dataset_fingerprint="after")
    files, shard_rows, take_over = list(FILES), 3, True
    if change == "a file changed size":
        files[4] = files[4].replace("\x00104", "\x00999")  # shard 1 holds other bytes now; shard 0 still matches
    elif change == "another model":
        after = replace(after, model={"backend": "timm", "source": "other"})
    elif change == "another subset":
        after = replace(after, limit=9, limit_seed=0)
    elif change == "other shard sizes":
        shard_rows = 4
    else:
        take_over = False
    plan = store.plan(MODEL, after, np.arange(10), shard_rows)
    taken = reuse_finished_shards(store, MODEL, after, _split(files), plan, take_over=take_over)
    assert (taken, plan.done) == ((3, [0]) if change == "a file changed size" else (0, []))


def test_sources_that_cannot_name_their_rows_record_nothing(tmp_path: Path) -> None:
    store = EmbeddingStore(tmp_path / "cache")
    plan = store.plan(MODEL, KEY, np.arange(9), 3)
    assert reuse_finished_shards(store, MODEL, KEY, _split(None), plan) == 0
    assert not (store.partial_dir(MODEL, KEY) / ROWS_FILE).exists()


def test_image_folders_and_tables_name_their_rows(tmp_path: Path) -> None:
    """Image folders by file and size, tables by their input cells (an encoded image by its digest)."""
    from conftest import make_image_folder, make_text_table
    from data_fixtures import make_parquet_image_dataset

    from stitchcli.data import load_split, resolve_dataset

    images = make_image_folder(tmp_path / "images")
    split = load_split(resolve_dataset(str(images)), "test")
    first = split.row_keys([0])[0]
    path = images / "test" / "cat" / "0000.png"
    assert first == f"{path}\0{path.stat().st_size}"
    texts = load_split(resolve_dataset(str(make_text_table(tmp_path / "texts"))), "test")
    assert texts.row_keys([0, 1]) == ["s" + t for t in texts.get_inputs([0, 1])]
    parquet = load_split(resolve_dataset(str(make_parquet_image_dataset(tmp_path / "parquet"))), "train")
    keys = parquet.row_keys(list(range(len(parquet))))
    assert all(k.startswith("sha256:") for k in keys) and len(set(keys)) == len(keys)
