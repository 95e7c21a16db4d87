"""Damaged files are found by their checksums and never used: cache entries and shards are rebuilt, heads refused.

Every file stitchcli writes carries, in its metadata, the SHA-256 of its header and of its tensor data. A cache hit
reads the header only (its digest and the file's size are checked: truncation and header damage are found there);
the data's digest is checked whenever the arrays are read. The damage done here: cutting the file short, flipping
one bit of the data, flipping one bit of the header, and editing the metadata or a value by hand (leaving a valid
safetensors file).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stitchcli.models import ModelRef
from stitchcli.embedding import EmbedOptions, embed, load_embeddings, resolve_model_spec
from stitchcli.progress import Reporter
from stitchcli.errors import UsageError, WorkError
from stitchcli.heads import load_head, save_head
from stitchcli.store import CHECKSUM_FIELD, METADATA_KEY, CorruptEntry, DamagedEntry, EmbeddingStore, EntryKey, read_header

# ----- damaging a file -----------------------------------------------------------------------------------------


def _header_size(path: Path) -> int:
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 5])


def flip_data_bit(path: Path, where: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    start = _header_size(path)
    data[start + int((len(data) - start - 1) * where)] ^= 0x10
    path.write_bytes(bytes(data))


def flip_header_bit(path: Path) -> None:
    """Flip one bit in the middle of the header (the metadata document)."""
    data = bytearray(path.read_bytes())
    data[_header_size(path) // 2] ^= 0x02
    path.write_bytes(bytes(data))


def rewrite_metadata(path: Path, change) -> None:
    """Edit the metadata document as a careful person would: valid JSON, header size and padding fixed, data kept."""
    data = path.read_bytes()
    start = _header_size(path)
    header = json.loads(data[8:start])
    document = json.loads(header["__metadata__"][METADATA_KEY])
    change(document)
    header["__metadata__"][METADATA_KEY] = json.dumps(document, sort_keys=True)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(len(encoded).to_bytes(8, "little") + encoded + data[start:])


def edit_value(path: Path) -> None:
    """Add 1 to the first float32 number in place, as a hex editor would: the header is left as it was."""
    data = bytearray(path.read_bytes())
    start = _header_size(path)
    header = json.loads(data[8:start])
    slot = next(v for name, v in header.items() if name != "__metadata__" and v["dtype"] == "F32")
    at = start + slot["data_offsets"][0]
    value = np.frombuffer(bytes(data[at : at + 4]), "<f4")[0]
    data[at : at + 4] = np.array([value + 1], "<f4").tobytes()
    path.write_bytes(bytes(data))


def edit_rows(document: dict) -> None:
    document["rows"] = document.get("rows", 0) + 1


def edit_a_value(document: dict) -> None:
    document["hand_edit"] = "a value nobody wrote"


def drop_checksum(document: dict) -> None:
    """What a file written before stitchcli wrote checksums looks like."""
    document.pop(CHECKSUM_FIELD)


HEADER_DAMAGE = {
    "truncated": truncate,
    "header bit": flip_header_bit,
    "metadata rows edited": lambda path: rewrite_metadata(path, edit_rows),
    "metadata value edited": lambda path: rewrite_metadata(path, edit_a_value),
    "no checksum (older file)": lambda path: rewrite_metadata(path, drop_checksum),
}
DATA_DAMAGE = {"data bit": flip_data_bit, "value edited": edit_value}


# ----- cache entries through embed ------------------------------------------------------------------------------


# timm's tiny test ViT with seeded random weights on 18 images, in batches of 4 and shards of 4 rows: every way of
# building the entry (at once, resumed, on demand) encodes the same batches, so a rebuilt entry is bit for bit the same.
MODEL, WEIGHTS, BATCH = "test_vit", "random", 4


@pytest.fixture
def embedded(cache_dir, image_folder):
    """Embed the image folder's train split; give (store, warnings, run, original entry with its arrays)."""
    warnings: list[str] = []
    store = EmbeddingStore(cache_dir, warn=warnings.append)

    def run(store=store):
        return embed([ModelRef(name, {"weights": WEIGHTS}) for name in [MODEL]], str(image_folder), ["train"], store=store,
                     options=EmbedOptions(num_workers=0, batch_size=BATCH, shard_rows=BATCH))[0]

    first = run()
    assert not first.cache_hit and not warnings
    return store, warnings, run, read_back(store, image_folder)


def read_back(store, image_folder):
    return load_embeddings(store, ModelRef(MODEL, {"weights": WEIGHTS}), str(image_folder), "train")


def _same(a, b) -> None:
    np.testing.assert_array_equal(a.embeddings, b.embeddings)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.ids, b.ids)
    assert a.metadata[CHECKSUM_FIELD]["data"] == b.metadata[CHECKSUM_FIELD]["data"]  # the same bytes


@pytest.mark.slow
@pytest.mark.parametrize("damage", list(HEADER_DAMAGE))
def test_entry_with_a_damaged_header_is_reported_at_the_hit_and_rebuilt(embedded, image_folder, damage):
    store, warnings, run, original = embedded
    HEADER_DAMAGE[damage](Path(original.path))
    again = run()
    assert not again.cache_hit, "a damaged entry was used as a cache hit"
    assert len(warnings) == 1 and str(original.path) in warnings[0] and "rebuilding it" in warnings[0]
    assert "\n" not in warnings[0]
    _same(read_back(store, image_folder), original)
    assert run().cache_hit and len(warnings) == 1  # the rebuilt file is trusted again


@pytest.mark.slow
@pytest.mark.parametrize("damage", list(DATA_DAMAGE))
def test_entry_with_damaged_data_is_found_when_read_removed_and_rebuilt_on_demand(embedded, image_folder, damage):
    from stitchcli.data import resolve_dataset
    from stitchcli.models import ModelRef
    from stitchcli.stitching import StitchSettings
    from stitchcli.stitching.data import ensure_embeddings

    store, warnings, run, original = embedded
    DATA_DAMAGE[damage](Path(original.path))
    assert run().cache_hit  # a hit reads the header alone: the data is checked where it is read
    with pytest.raises(DamagedEntry, match="^no cached embeddings") as caught:
        read_back(store, image_folder)
    assert "does not match its checksum" in str(caught.value) and "\n" not in str(caught.value)
    assert len(warnings) == 1 and "cannot be used" in warnings[0] and not Path(original.path).exists()
    # fit-head, stitch and eval read embeddings through ensure_embeddings, which embeds a missing entry on demand
    settings = StitchSettings(dataset=str(image_folder), embed_batch_size=BATCH)
    rebuilt = ensure_embeddings(store, ModelRef(MODEL, {"weights": WEIGHTS}), resolve_dataset(str(image_folder)), "train", settings, Reporter())
    _same(rebuilt, original)


def test_every_single_bit_flip_of_an_entry_is_found(tmp_path):
    """Any one flipped bit: in the header the hit refuses the file, in the data the read does."""
    warnings: list[str] = []
    store = EmbeddingStore(tmp_path / "cache", warn=warnings.append)
    key = EntryKey(model={"backend": "x"}, dataset_id="d", dataset_fingerprint="f", split="train")
    rng = np.random.default_rng(0)
    entry = store.write_entry("m", key, embeddings=rng.normal(size=(6, 4)).astype(np.float32),
                              labels=np.arange(6), ids=np.arange(6), metadata={"class_names": ["a", "b"]})
    good = entry.path.read_bytes()
    header_end = _header_size(entry.path)
    for position in range(len(good)):
        damaged = bytearray(good)
        damaged[position] ^= 1 << (position % 8)
        entry.path.write_bytes(bytes(damaged))
        store = EmbeddingStore(tmp_path / "cache", warn=warnings.append)  # a store reports a damaged file once
        found = store.lookup("m", key)
        if position < header_end:
            assert found is None, f"header bit at byte {position} not found"
        else:
            assert found is not None  # a hit reads the header alone
            with pytest.raises(DamagedEntry):
                store.read(found)
            assert not entry.path.exists()
    assert len(warnings) == len(good)


# ----- shards of a partial entry --------------------------------------------------------------------------------


def _partial_build(store, image_folder, original, shards: int):
    """Write the first ``shards`` shards of the original entry as an interrupted run leaves them."""
    from stitchcli.data import resolve_dataset
    from stitchcli.embedding import entry_key

    spec = resolve_model_spec(store, ModelRef(MODEL, {"weights": WEIGHTS}))
    key = entry_key(spec, resolve_dataset(str(image_folder)), "train", limit=None, seed=0)
    assert store.entry_path(spec.storage_name, key) == Path(original.path)
    Path(original.path).unlink()
    plan = store.plan(spec.storage_name, key, original.ids, shard_rows=BATCH)
    for index in range(shards):
        start, stop = plan.bounds(index)
        store.write_shard(spec.storage_name, key, plan, index, original.embeddings[start:stop])
    return spec, key, plan


SHARD_DAMAGE = {**HEADER_DAMAGE, **DATA_DAMAGE}


@pytest.mark.slow
@pytest.mark.parametrize("damage", list(SHARD_DAMAGE))
def test_damaged_shard_of_a_partial_entry_is_computed_again_not_merged(embedded, image_folder, damage):
    store, warnings, run, original = embedded
    spec, key, plan = _partial_build(store, image_folder, original, shards=2)
    shard = store.partial_dir(spec.storage_name, key) / "shard-000001.safetensors"
    SHARD_DAMAGE[damage](shard)
    # the store that wrote the shards trusts them; the run that resumes is another process, with its own store
    fresh = EmbeddingStore(store.root, warn=warnings.append)
    result = run(store=fresh)
    assert not result.cache_hit and result.resumed_rows == BATCH, "the damaged shard was resumed instead of computed"
    assert len(warnings) == 1 and str(shard) in warnings[0] and "computing it again" in warnings[0]
    _same(read_back(fresh, image_folder), original)


def test_shard_damaged_after_the_plan_stops_the_merge_and_is_removed(embedded, image_folder):
    store, warnings, run, original = embedded
    spec, key, plan = _partial_build(store, image_folder, original, shards=plan_shards(original))
    shard = store.partial_dir(spec.storage_name, key) / "shard-000000.safetensors"
    flip_data_bit(shard)
    with pytest.raises(WorkError, match="shard 0 of .* cannot be merged: its data does not match its checksum") as caught:
        store.finish(spec.storage_name, key, plan, labels=original.labels, ids=original.ids, metadata={})
    assert "\n" not in str(caught.value) and "run the same command again" in str(caught.value)
    assert not shard.exists() and not Path(original.path).exists()  # nothing merged, nothing that looks complete
    assert (store.partial_dir(spec.storage_name, key) / "shard-000001.safetensors").exists()  # the other is kept
    assert store.plan(spec.storage_name, key, original.ids, shard_rows=BATCH).todo == [0]


def plan_shards(original) -> int:
    return -(-len(original.ids) // BATCH)


# ----- head files ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def head_file(tmp_path_factory):
    """Save a small absolute head once; tests damage copies of it."""
    import torch

    from stitchcli.heads import HEAD_FORMAT, FittedHead, HeadSettings, build_classifier

    settings = HeadSettings(hidden=8, epochs=1)
    module = build_classifier("absolute", 3, settings, input_dim=5, seed=0)
    config = {"format": HEAD_FORMAT, "kind": "absolute", "num_classes": 3, "input_dim": 5, "settings": settings.to_dict()}
    path = save_head(tmp_path_factory.mktemp("head") / "head.safetensors", FittedHead(module.eval(), config))
    assert torch.equal(load_head(path).module.mlp[1].weight, module.mlp[1].weight)
    return path


HEAD_DAMAGE = {**HEADER_DAMAGE, **DATA_DAMAGE,
               "config edited": lambda path: rewrite_metadata(path, lambda doc: doc.update(num_classes=4))}


@pytest.mark.parametrize("damage", list(HEAD_DAMAGE))
def test_damaged_head_file_is_refused_with_one_line(head_file, tmp_path, damage):
    path = tmp_path / "head.safetensors"
    path.write_bytes(head_file.read_bytes())
    HEAD_DAMAGE[damage](path)
    with pytest.raises(UsageError) as caught:
        load_head(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    assert "train it again" in message or "cannot read head" in message


@pytest.mark.slow
def test_damaged_head_through_the_command_line(head_file, tmp_path, cache_dir, text_table):
    from conftest import run_cli

    path = tmp_path / "head.safetensors"
    path.write_bytes(head_file.read_bytes())
    flip_data_bit(path)
    done = run_cli("stitch", "a", "b", "--dataset", str(text_table), "--head", str(path), "--cache-dir", str(cache_dir))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"stitchcli: error: head '{path}' cannot be used: its data does not match")


def test_header_reader_refuses_what_safetensors_refuses(tmp_path):
    """Files that are no safetensors at all: empty, a size prefix larger than the file, a pickle."""
    import pickle

    for name, data in {"empty": b"", "short": b"\x01\x02", "huge": (1 << 40).to_bytes(8, "little") + b"{}",
                       "pickle": pickle.dumps({"weights": [1, 2, 3]})}.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(data)
        with pytest.raises(CorruptEntry):
            read_header(path)
