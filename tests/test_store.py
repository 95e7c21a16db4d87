"""The embedding cache: keys, atomic entries, corruption handling, resumable shards, names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stitchcli.errors import UsageError
from stitchcli.store import EmbeddingStore, EntryKey, default_cache_dir, remove_interrupted_writes, slug, write_text_atomically


def _key(**overrides) -> EntryKey:
    fields = dict(
        model={"backend": "timm", "source": "resnet18", "precision": "fp32"},
        dataset_id="/data/digits",
        dataset_fingerprint="abc",
        split="train",
    )
    fields.update(overrides)
    return EntryKey(**fields)


def _write(store: EmbeddingStore, key: EntryKey, n: int = 5, d: int = 3):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(n, d)).astype(np.float32)
    return store.write_entry("m", key, embeddings=emb, labels=np.arange(n) % 2, ids=np.arange(n) * 2, metadata={"note": "x"}), emb


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("STITCHCLI_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "stitchcli"
    monkeypatch.setenv("STITCHCLI_CACHE", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"
    assert default_cache_dir(tmp_path / "explicit") == tmp_path / "explicit"


@pytest.mark.parametrize(
    "change",
    [
        {"model": {"backend": "timm", "source": "resnet18", "precision": "bf16"}},
        {"dataset_fingerprint": "abd"},
        {"split": "test"},
        {"limit": 10, "limit_seed": 0},
        {"columns": {"input": ["text"], "label": "label"}},
    ],
)
def test_every_part_of_the_key_changes_the_digest(change):
    assert _key().digest != _key(**change).digest
    assert _key().digest == _key().digest


def test_a_layer_entry_is_keyed_by_how_layers_are_pooled(monkeypatch):
    from stitchcli.store import keys

    final, layer = _key(), _key(layer="layer.3")
    assert "layer_pooling" not in final.to_dict()  # final representations keep the keys they always had
    assert layer.to_dict()["layer_pooling"] == keys.LAYER_POOLING_VERSION and layer.digest != final.digest
    before = layer.digest
    monkeypatch.setattr(keys, "LAYER_POOLING_VERSION", keys.LAYER_POOLING_VERSION + 1)
    assert _key(layer="layer.3").digest != before and _key().digest == final.digest  # pooled anew: other entries


def test_write_then_lookup_roundtrip(tmp_path):
    store = EmbeddingStore(tmp_path)
    key = _key()
    entry, emb = _write(store, key)
    found = store.lookup("m", key)
    assert found is not None and found.rows == 5 and found.dim == 3
    full = store.read(found)
    np.testing.assert_array_equal(full.embeddings, emb)
    np.testing.assert_array_equal(full.ids, np.arange(5) * 2)
    assert full.labels.dtype == np.int64 and full.ids.dtype == np.int64
    assert full.metadata["key_digest"] == key.digest and full.metadata["note"] == "x"
    # no temporary files are left next to the entry
    assert [p.name for p in entry.path.parent.iterdir()] == [entry.path.name]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "other_key"])
def test_damaged_entry_is_reported_and_not_used(tmp_path, damage):
    warnings: list[str] = []
    store = EmbeddingStore(tmp_path, warn=warnings.append)
    key = _key()
    entry, _ = _write(store, key)
    if damage == "truncate":
        data = entry.path.read_bytes()
        entry.path.write_bytes(data[: len(data) - 7])
    elif damage == "garbage":
        entry.path.write_bytes(b"not a safetensors file at all")
    else:
        other = _key(split="test")
        other_entry, _ = _write(store, other)
        entry.path.write_bytes(other_entry.path.read_bytes())
    assert store.lookup("m", key) is None
    assert len(warnings) == 1 and str(entry.path) in warnings[0] and "rebuilding" in warnings[0]


def test_shards_resume_only_for_the_same_plan(tmp_path):
    store = EmbeddingStore(tmp_path)
    key = _key()
    ids = np.arange(10)
    plan = store.plan("m", key, ids, shard_rows=4)
    assert plan.num_shards == 3 and plan.todo == [0, 1, 2]
    store.write_shard("m", key, plan, 0, np.ones((4, 2), np.float32))
    store.write_shard("m", key, plan, 1, np.full((4, 2), 2, np.float32))
    # a later run with the same key and rows resumes, even if it asks for another shard size
    again = store.plan("m", key, ids, shard_rows=8)
    assert again.shard_rows == 4 and again.done == [0, 1] and again.todo == [2] and again.rows_done == 8
    # a damaged shard is recomputed
    shard1 = store.partial_dir("m", key) / "shard-000001.safetensors"
    shard1.write_bytes(shard1.read_bytes()[:20])
    assert store.plan("m", key, ids, shard_rows=4).todo == [1, 2]
    # other rows: start over
    assert store.plan("m", key, np.arange(1, 11), shard_rows=4).done == []
    # fresh: start over
    assert store.plan("m", key, np.arange(1, 11), shard_rows=4, fresh=True).done == []


def test_finish_joins_shards_and_removes_them(tmp_path):
    store = EmbeddingStore(tmp_path)
    key = _key()
    ids = np.arange(6)
    plan = store.plan("m", key, ids, shard_rows=4)
    store.write_shard("m", key, plan, 0, np.arange(8, dtype=np.float32).reshape(4, 2))
    store.write_shard("m", key, plan, 1, np.arange(8, 12, dtype=np.float32).reshape(2, 2))
    with pytest.raises(ValueError):
        store.write_shard("m", key, plan, 1, np.zeros((3, 2), np.float32))
    entry = store.finish("m", key, plan, labels=np.zeros(6, np.int64), ids=ids, metadata={})
    assert not store.partial_dir("m", key).exists()
    np.testing.assert_array_equal(store.read(entry).embeddings, np.arange(12, dtype=np.float32).reshape(6, 2))


def test_names_roundtrip_and_validation(tmp_path):
    store = EmbeddingStore(tmp_path)
    assert store.load_name("lite0") is None
    store.save_name("lite0", {"backend": "timm", "source": "tf_efficientnet_lite0"})
    assert store.load_name("lite0")["source"] == "tf_efficientnet_lite0"
    assert store.list_names() == ["lite0"]
    with pytest.raises(UsageError):
        store.save_name("../evil", {})
    (tmp_path / "names" / "lite0.json").write_text("{broken")
    with pytest.raises(UsageError, match="register it again"):
        store.load_name("lite0")


def test_slug_keeps_paths_apart():
    assert slug("resnet18") == "resnet18"
    assert slug("/a/b/data") != slug("/a/b_data")
    assert "/" not in slug("hf:org/name")


def test_streamed_safetensors_equal_the_library_writer_and_refuse_short_input(tmp_path):
    """finish() streams shards into the entry: the file reads back exactly like safetensors' own save_file."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    from stitchcli.store import read_safetensors_header, write_safetensors, write_safetensors_streamed

    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(70, 5)).astype(np.float32)
    labels, ids = rng.integers(0, 3, 70).astype(np.int64), np.arange(70, dtype=np.int64)[::-1].copy()
    meta = {"rows": 70, "note": "ünïcode"}
    chunks = [embeddings[b : b + 32] for b in range(0, 70, 32)]
    streamed, reference = tmp_path / "streamed.safetensors", tmp_path / "reference.safetensors"
    write_safetensors_streamed(streamed, [("embeddings", np.dtype(np.float32), (70, 5), iter(chunks)),
                                          ("labels", np.dtype(np.int64), (70,), iter([labels])),
                                          ("ids", np.dtype(np.int64), (70,), iter([ids]))], meta)
    write_safetensors(reference, {"embeddings": embeddings, "labels": labels, "ids": ids}, meta)
    a, b = load_file(str(streamed)), load_file(str(reference))
    assert set(a) == set(b) == {"embeddings", "labels", "ids"}
    for name in a:
        assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name])
    assert read_safetensors_header(streamed) == read_safetensors_header(reference)
    with safe_open(str(streamed), framework="numpy") as f:  # a partial read works too
        assert np.array_equal(f.get_slice("embeddings")[10:20], embeddings[10:20])

    short = tmp_path / "short.safetensors"
    with pytest.raises(ValueError, match="bytes written"):
        write_safetensors_streamed(short, [("embeddings", np.dtype(np.float32), (70, 5), iter(chunks[:1]))], meta)
    assert not short.exists() and not list(tmp_path.glob(".short*"))  # nothing that looks complete is left


def test_extra_metadata_is_readable_by_safetensors_and_covered_by_the_header_checksum(tmp_path):
    from safetensors import safe_open

    from stitchcli.store import CorruptEntry, read_header, write_safetensors_streamed

    path = tmp_path / "extra.safetensors"
    values = np.arange(6, dtype=np.float64).reshape(3, 2)
    write_safetensors_streamed(path, [("x", np.dtype(np.float64), (3, 2), iter([values]))], {"rows": 3},
                               extra_metadata={"projection": "l1"})
    with safe_open(str(path), framework="numpy") as f:
        assert f.metadata()["projection"] == "l1" and np.array_equal(f.get_tensor("x"), values)
    header = read_header(path)
    assert header.extra_metadata == {"projection": "l1"} and header.metadata["rows"] == 3
    assert np.array_equal(header.read_tensors()["x"], values)  # both checksums hold
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b'"projection":"l1"', b'"projection":"l2"'))  # same length: only the digest can tell
    with pytest.raises(CorruptEntry, match="header does not match its checksum"):
        read_header(path).verify()
    for bad in ({"stitchcli": "x"}, {"n": 3}):
        with pytest.raises(ValueError, match="extra_metadata"):
            write_safetensors_streamed(tmp_path / "bad.safetensors", [], {}, extra_metadata=bad)


def test_small_files_are_replaced_whole_and_an_identical_one_is_not_rewritten(tmp_path):
    path = tmp_path / "deep" / "plan.json"
    write_text_atomically(path, '{"a": 1}\n')
    assert path.read_text() == '{"a": 1}\n'
    first = path.stat()
    write_text_atomically(path, '{"a": 1}\n')  # the same text: nothing written (works in a read-only folder)
    again = path.stat()
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
    write_text_atomically(path, '{"a": 2}\n')  # other text: a new file renamed over the old one
    assert path.read_text() == '{"a": 2}\n' and path.stat().st_ino != first.st_ino
    assert sorted(p.name for p in path.parent.iterdir()) == ["plan.json"]  # no temporary file left


def test_interrupted_writes_of_one_file_are_removed_and_no_others(tmp_path):
    name = "relative-[ab]*.safetensors"  # glob characters in the name are matched literally
    left = [tmp_path / f".{name}.x1y2.tmp", tmp_path / f".{name}.q9.tmp"]
    kept = [tmp_path / name, tmp_path / ".relative-a.safetensors.x1y2.tmp", tmp_path / f".{name}.x1y2.json"]
    for path in left + kept:
        path.write_text("x")
    remove_interrupted_writes(tmp_path / name)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in kept)


def test_a_link_the_user_named_is_written_through_not_replaced(tmp_path):
    target = tmp_path / "kept" / "rows.csv"
    target.parent.mkdir()
    target.write_text("old\n")
    link = tmp_path / "rows.csv"
    link.symlink_to(target)
    write_text_atomically(link, "new\n")  # e.g. eval --csv pointed at a link (or at /dev/stdout)
    assert link.is_symlink() and target.read_text() == "new\n"
