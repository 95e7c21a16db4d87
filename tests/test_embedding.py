"""`embed` end to end through the library: cache entries, cache hits, keys, imports, names, resume."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from stitchcli.models import MODEL_OPTIONS, ModelRef
from stitchcli.embedding import EmbedOptions, embed, entry_key, load_embeddings, resolve_model_spec
from stitchcli.errors import UsageError
from stitchcli.store import EmbeddingStore

TINY = "test_vit"  # timm's own 300k-parameter test ViT: 64-d features


def _embed(store: EmbeddingStore, dataset: Path, model: str = TINY, **kwargs):
    options = kwargs.pop("options", EmbedOptions(num_workers=0))
    model_options = {key: kwargs.pop(key) for key in MODEL_OPTIONS if key in kwargs}
    model_options.setdefault("weights", "random")
    return embed([ModelRef(model, model_options)], str(dataset), kwargs.pop("splits", ["train", "test"]), store=store, options=options, **kwargs)


def test_random_timm_model_writes_complete_entries(cache_dir, image_folder):
    store = EmbeddingStore(cache_dir)
    results = _embed(store, image_folder)
    assert [(r.split, r.rows, r.dim, r.cache_hit) for r in results] == [("train", 18, 64, False), ("test", 9, 64, False)]
    entry = load_embeddings(store, ModelRef(TINY, {"weights": "random"}), str(image_folder), "train")
    assert entry.embeddings.dtype == np.float32 and entry.embeddings.shape == (18, 64)
    assert np.isfinite(entry.embeddings).all() and entry.embeddings.std() > 0
    # rows are ordered class by class (sorted class folders), ids are the split's row indices
    np.testing.assert_array_equal(entry.labels, np.repeat([0, 1, 2], 6))
    np.testing.assert_array_equal(entry.ids, np.arange(18))
    meta = entry.metadata
    assert meta["class_names"] == ["cat", "dog", "frog"]
    assert meta["key"]["model"]["backend"] == "timm" and meta["key"]["model"]["weights"] == "random"
    assert meta["key"]["split"] == "train" and meta["rows"] == 18 and meta["dim"] == 64
    assert meta["versions"]["torch"] and meta["preprocessing"]
    # rows differ from each other: the pipeline does not feed one image for all
    assert np.unique(entry.embeddings.round(5), axis=0).shape[0] == 18


def test_same_seed_same_model_in_another_process_is_identical(cache_dir, image_folder, tmp_path):
    a = EmbeddingStore(cache_dir)
    b = EmbeddingStore(tmp_path / "other-cache")
    _embed(a, image_folder, splits=["test"])
    _embed(b, image_folder, splits=["test"])
    ea = load_embeddings(a, ModelRef(TINY, {"weights": "random"}), str(image_folder), "test")
    eb = load_embeddings(b, ModelRef(TINY, {"weights": "random"}), str(image_folder), "test")
    np.testing.assert_array_equal(ea.embeddings, eb.embeddings)
    c = EmbeddingStore(tmp_path / "seed1")
    _embed(c, image_folder, splits=["test"], options=EmbedOptions(num_workers=0, seed=1))
    ec = load_embeddings(c, ModelRef(TINY, {"weights": "random"}), str(image_folder), "test", seed=1)
    assert not np.allclose(ea.embeddings, ec.embeddings)


def test_second_run_is_a_cache_hit_without_building_the_model(cache_dir, image_folder, monkeypatch):
    store = EmbeddingStore(cache_dir)
    first = _embed(store, image_folder)

    def no_build(*args, **kwargs):
        raise AssertionError("a cache hit must not build the model")

    import stitchcli.encoders

    monkeypatch.setattr(stitchcli.encoders, "build_encoder", no_build)
    monkeypatch.setattr(stitchcli.encoders, "resolve_model", no_build)  # the memoised resolution is reused too
    second = _embed(store, image_folder)
    assert all(r.cache_hit for r in second)
    assert [r.path for r in second] == [r.path for r in first]


def test_limit_is_stratified_and_part_of_the_key(cache_dir, image_folder):
    store = EmbeddingStore(cache_dir)
    full = _embed(store, image_folder, splits=["train"])[0]
    sub = _embed(store, image_folder, splits=["train"], options=EmbedOptions(num_workers=0, limit=6))[0]
    assert sub.path != full.path and sub.rows == 6
    entry = load_embeddings(store, ModelRef(TINY, {"weights": "random"}), str(image_folder), "train", limit=6)
    assert sorted(np.bincount(entry.labels).tolist()) == [2, 2, 2]
    # the subset rows are the same rows of the full entry
    whole = load_embeddings(store, ModelRef(TINY, {"weights": "random"}), str(image_folder), "train")
    np.testing.assert_allclose(entry.embeddings, whole.embeddings[entry.ids], rtol=1e-5, atol=1e-6)


def test_key_changes_with_weights_file_precision_and_dataset_revision(cache_dir, image_folder, tmp_path):
    import timm
    from safetensors.torch import save_file

    from stitchcli.data import resolve_dataset

    store = EmbeddingStore(cache_dir)
    data = resolve_dataset(str(image_folder))
    w1, w2 = tmp_path / "w1.safetensors", tmp_path / "w2.safetensors"
    for seed, path in ((1, w1), (2, w2)):
        import torch

        torch.manual_seed(seed)
        save_file(timm.create_model(TINY, num_classes=0).state_dict(), str(path))
    keys = {
        "file1": entry_key(resolve_model_spec(store, ModelRef(f"timm:{TINY}", {"weights": str(w1)})), data, "train", limit=None, seed=0),
        "file2": entry_key(resolve_model_spec(store, ModelRef(f"timm:{TINY}", {"weights": str(w2)})), data, "train", limit=None, seed=0),
        "bf16": entry_key(resolve_model_spec(store, ModelRef(f"timm:{TINY}", {"weights": str(w1), "precision": "bf16"})), data, "train", limit=None, seed=0),
        "limit": entry_key(resolve_model_spec(store, ModelRef(f"timm:{TINY}", {"weights": str(w1)})), data, "train", limit=5, seed=0),
    }
    assert len({k.digest for k in keys.values()}) == 4
    # the same weights file rewritten with other values is another key, even at the same path
    import torch

    torch.manual_seed(3)
    save_file(timm.create_model(TINY, num_classes=0).state_dict(), str(w1))
    rewritten = entry_key(resolve_model_spec(store, ModelRef(f"timm:{TINY}", {"weights": str(w1)})), data, "train", limit=None, seed=0)
    assert rewritten.digest != keys["file1"].digest
    hub = resolve_model_spec(store, ModelRef(TINY, {"weights": "random"}))
    a = entry_key(hub, resolve_dataset("cifar10"), "train", limit=None, seed=0)
    b = entry_key(hub, resolve_dataset("cifar10", revision="0b2714987fa478483af9968de7c934580d0bb9a2"), "train", limit=None, seed=0)
    assert a.digest != b.digest


def test_bare_and_prefixed_timm_names_share_one_entry(cache_dir, image_folder):
    store = EmbeddingStore(cache_dir)
    first = _embed(store, image_folder, model=TINY, splits=["test"])[0]
    second = _embed(store, image_folder, model=f"timm:{TINY}", splits=["test"])[0]
    assert second.cache_hit and second.path == first.path


def test_changed_dataset_file_makes_a_new_entry(cache_dir, text_table, tmp_path):
    from stitchcli.data import resolve_dataset

    store = EmbeddingStore(cache_dir)
    spec = resolve_model_spec(store, ModelRef(TINY, {"weights": "random"}))
    before = entry_key(spec, resolve_dataset(str(text_table)), "train", limit=None, seed=0)
    with open(text_table / "train.csv", "a") as f:
        f.write("one more sentence,sport\n")
    after = entry_key(spec, resolve_dataset(str(text_table)), "train", limit=None, seed=0)
    assert before.digest != after.digest


def test_corrupt_cache_file_is_reported_and_rebuilt(cache_dir, image_folder):
    warnings: list[str] = []
    store = EmbeddingStore(cache_dir, warn=warnings.append)
    first = _embed(store, image_folder, splits=["test"])[0]
    good = load_embeddings(store, ModelRef(TINY, {"weights": "random"}), str(image_folder), "test").embeddings
    Path(first.path).write_bytes(Path(first.path).read_bytes()[:100])
    again = _embed(store, image_folder, splits=["test"])[0]
    assert not again.cache_hit and again.path == first.path
    assert any("cannot be used" in w and first.path in w for w in warnings)
    np.testing.assert_array_equal(load_embeddings(store, ModelRef(TINY, {"weights": "random"}), str(image_folder), "test").embeddings, good)


def test_imported_arrays_npy_and_safetensors(cache_dir, image_folder, tmp_path):
    from safetensors.numpy import save_file

    store = EmbeddingStore(cache_dir)
    rng = np.random.default_rng(0)
    train, test = rng.normal(size=(18, 7)), rng.normal(size=(9, 7)).astype(np.float32)
    np.save(tmp_path / "train.npy", train)
    save_file({"embeddings": test}, str(tmp_path / "test.safetensors"))
    results = embed(
        ["mine"],
        str(image_folder),
        ["train", "test"],
        store=store,
        from_array=[f"train={tmp_path / 'train.npy'}", f"test={tmp_path / 'test.safetensors'}"],
    )
    assert [(r.rows, r.dim, r.cache_hit) for r in results] == [(18, 7, False), (9, 7, False)]
    entry = load_embeddings(store, "mine", str(image_folder), "train")
    np.testing.assert_allclose(entry.embeddings, train.astype(np.float32))
    assert entry.metadata["array_sha256"]
    # with --limit the imported rows are the subset's rows
    sub = embed(["mine"], str(image_folder), ["test"], store=store, options=EmbedOptions(limit=3),
                from_array=[str(tmp_path / "test.safetensors")])[0]
    got = load_embeddings(store, "mine", str(image_folder), "test", limit=3)
    np.testing.assert_array_equal(got.embeddings, test[got.ids])
    assert sub.rows == 3
    # importing the same file again is a cache hit; the name now stands for the imported arrays
    again = embed(["mine"], str(image_folder), ["test"], store=store, from_array=[str(tmp_path / "test.safetensors")])[0]
    assert again.cache_hit
    with pytest.raises(UsageError, match="holds imported arrays"):
        embed(["mine"], str(image_folder), ["test"], store=store)


def test_array_with_wrong_row_count_is_refused_and_loses_nothing(cache_dir, image_folder, tmp_path):
    store = EmbeddingStore(cache_dir)
    kept = _embed(store, image_folder, splits=["test"])[0]
    np.save(tmp_path / "short.npy", np.zeros((8, 4)))
    with pytest.raises(UsageError, match="has 8 rows but split 'test'.* has 9"):
        embed(["other"], str(image_folder), ["test"], store=store, from_array=[str(tmp_path / "short.npy")])
    assert Path(kept.path).exists() and _embed(store, image_folder, splits=["test"])[0].cache_hit


def test_name_registers_the_full_spec(cache_dir, image_folder, tmp_path):
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    weights = tmp_path / "tiny.safetensors"
    save_file(timm.create_model(TINY, num_classes=0).state_dict(), str(weights))
    store = EmbeddingStore(cache_dir)
    first = _embed(store, image_folder, model=f"timm:{TINY}", weights=str(weights), register_as="tiny", splits=["test"])[0]
    assert first.model == "tiny"
    saved = json.loads((cache_dir / "names" / "tiny.json").read_text())
    assert saved["weights"] == str(weights.resolve()) and saved["weights_fingerprint"]
    again = embed(["tiny"], str(image_folder), ["test"], store=store, options=EmbedOptions(num_workers=0))[0]
    assert again.cache_hit and again.path == first.path
    fresh = embed(["tiny"], str(image_folder), ["train"], store=store, options=EmbedOptions(num_workers=0))[0]
    assert not fresh.cache_hit and fresh.rows == 18


def test_a_bad_model_among_good_ones_fails_before_any_work(cache_dir, image_folder):
    store = EmbeddingStore(cache_dir)
    with pytest.raises(UsageError, match="did you mean"):
        embed([ModelRef(name, {"weights": "random"}) for name in [TINY, "vit_bsae_patch16_224"]], str(image_folder), ["test"], store=store)
    assert not (cache_dir / "embeddings").exists()


def test_text_model_from_a_local_folder(cache_dir, text_table, tiny_bert):
    store = EmbeddingStore(cache_dir)
    cls = embed([str(tiny_bert)], str(text_table), ["train"], store=store, options=EmbedOptions(num_workers=0))[0]
    mean = embed([ModelRef(name, {"pooling": "mean"}) for name in [str(tiny_bert)]], str(text_table), ["train"], store=store, options=EmbedOptions(num_workers=0))[0]
    short = embed([ModelRef(name, {"max_length": 4}) for name in [str(tiny_bert)]], str(text_table), ["train"], store=store, options=EmbedOptions(num_workers=0))[0]
    assert len({cls.path, mean.path, short.path}) == 3
    a = load_embeddings(store, str(tiny_bert), str(text_table), "train").embeddings
    b = load_embeddings(store, ModelRef(str(tiny_bert), {"pooling": "mean"}), str(text_table), "train").embeddings
    assert a.shape == b.shape == (8, 32) and not np.allclose(a, b)
    meta = load_embeddings(store, str(tiny_bert), str(text_table), "train").metadata
    assert meta["class_names"] == ["sport", "tech"] and meta["pooling"] == "cls"


def test_openclip_random_architecture_on_images_and_text(cache_dir, image_folder, text_table, tiny_clip):
    store = EmbeddingStore(cache_dir)
    img = embed([ModelRef(name, {"weights": "random"}) for name in [f"openclip:{tiny_clip}"]], str(image_folder), ["test"], store=store, options=EmbedOptions(num_workers=0))[0]
    txt = embed([ModelRef(name, {"weights": "random"}) for name in [f"openclip:{tiny_clip}"]], str(text_table), ["test"], store=store, options=EmbedOptions(num_workers=0))[0]
    assert img.rows == 9 and txt.rows == 4 and img.dim == txt.dim
    e = load_embeddings(store, ModelRef(f"openclip:{tiny_clip}", {"weights": "random"}), str(image_folder), "test").embeddings
    assert np.isfinite(e).all() and e.std() > 0


@pytest.mark.parametrize(
    "builder, split, modality",
    [
        ("make_disk_image_dataset", "train", "image"),
        ("make_disk_text_dataset", "train", "text"),
        ("make_csv_dataset", "test", "text"),
        ("make_json_dataset", "train", "text"),  # train.json: an array of records
        ("make_json_dataset", "test", "text"),  # test.jsonl: JSON lines
        ("make_parquet_image_dataset", "train", "image"),
        ("make_image_path_table", "train", "image"),
        ("make_sparse_image_folder", "test", "image"),
    ],
)
def test_every_local_format_embeds_end_to_end(cache_dir, tmp_path, tiny_bert, builder, split, modality):
    import data_fixtures
    from stitchcli.data import load_split, resolve_dataset

    root = getattr(data_fixtures, builder)(tmp_path / builder)
    model, weights = (TINY, "random") if modality == "image" else (str(tiny_bert), None)
    store = EmbeddingStore(cache_dir)
    result = embed([ModelRef(name, {"weights": weights}) for name in [model]], str(root), [split], store=store, options=EmbedOptions(num_workers=0))[0]
    rows = load_split(resolve_dataset(str(root)), split)
    assert result.rows == len(rows) > 0 and result.dim == (64 if modality == "image" else 32)
    entry = load_embeddings(store, ModelRef(model, {"weights": weights}), str(root), split)
    np.testing.assert_array_equal(entry.labels, rows.labels)
    np.testing.assert_array_equal(entry.ids, rows.ids)
    assert entry.metadata["class_names"] == rows.class_names and entry.metadata["modality"] == modality
    assert np.isfinite(entry.embeddings).all()


def test_typo_of_a_saved_name_suggests_it(cache_dir, image_folder):
    store = EmbeddingStore(cache_dir)
    _embed(store, image_folder, model=TINY, register_as="tinyvit", splits=["test"])
    with pytest.raises(UsageError, match="did you mean the saved name 'tinyvit'"):
        embed(["tinyvlt"], str(image_folder), ["test"], store=store)
    # an explicit hub id is taken as written (it fails later, at download time, not here)
    assert resolve_model_spec(store, "hf:tinyvlt").backend == "transformers"


def test_name_may_not_hide_a_model_or_silently_replace_a_saved_name(cache_dir, image_folder):
    store = EmbeddingStore(cache_dir)
    with pytest.raises(UsageError, match="already means a model"):
        _embed(store, image_folder, register_as="test_efficientnet", splits=["test"])
    _embed(store, image_folder, register_as="tiny", splits=["test"])
    with pytest.raises(UsageError, match="already saved for timm: test_vit.*--force"):
        _embed(store, image_folder, model="test_efficientnet", register_as="tiny", splits=["test"])
    # the same spec again is fine, and --force replaces it
    _embed(store, image_folder, register_as="tiny", splits=["test"])
    _embed(store, image_folder, model="test_efficientnet", register_as="tiny", splits=["test"],
           options=EmbedOptions(num_workers=0, force=True))
    assert json.loads((cache_dir / "names" / "tiny.json").read_text())["source"] == "test_efficientnet"


def test_imported_arrays_may_not_take_a_model_name(cache_dir, image_folder, tmp_path):
    store = EmbeddingStore(cache_dir)
    np.save(tmp_path / "a.npy", np.zeros((9, 3), np.float32))
    with pytest.raises(UsageError, match="already means a model"):
        embed([TINY], str(image_folder), ["test"], store=store, from_array=[str(tmp_path / "a.npy")])
    _embed(store, image_folder, register_as="tv", splits=["test"])
    with pytest.raises(UsageError, match="already saved"):
        embed(["tv"], str(image_folder), ["test"], store=store, from_array=[str(tmp_path / "a.npy")])
    assert _embed(store, image_folder, model="tv", weights=None, splits=["test"])[0].cache_hit


def test_run_time_options_apply_to_a_saved_name(cache_dir, image_folder, text_table, tiny_bert):
    store = EmbeddingStore(cache_dir)
    base = _embed(store, image_folder, register_as="tv", splits=["test"])[0]
    bf16 = embed([ModelRef(name, {"precision": "bf16"}) for name in ["tv"]], str(image_folder), ["test"], store=store, options=EmbedOptions(num_workers=0))[0]
    assert not bf16.cache_hit and bf16.path != base.path
    with pytest.raises(UsageError, match="own weights"):
        embed([ModelRef(name, {"weights": "random"}) for name in ["tv"]], str(image_folder), ["test"], store=store)
    with pytest.raises(UsageError, match="apply to text models"):
        embed([ModelRef(name, {"pooling": "mean"}) for name in ["tv"]], str(image_folder), ["test"], store=store)
    with pytest.raises(UsageError, match="unknown precision"):
        embed([ModelRef(name, {"precision": "fp8"}) for name in ["tv"]], str(image_folder), ["test"], store=store)
    cls = embed([str(tiny_bert)], str(text_table), ["test"], store=store, register_as="bert", options=EmbedOptions(num_workers=0))[0]
    mean = embed([ModelRef(name, {"pooling": "mean"}) for name in ["bert"]], str(text_table), ["test"], store=store, options=EmbedOptions(num_workers=0))[0]
    assert mean.path != cls.path
    with pytest.raises(UsageError, match="unknown pooling"):
        embed([ModelRef(name, {"pooling": "max"}) for name in ["bert"]], str(text_table), ["test"], store=store)
    # a name saved with bf16 keeps bf16 unless told otherwise
    embed([ModelRef(name, {"weights": "random", "precision": "bf16"}) for name in [TINY]], str(image_folder), ["test"], store=store, register_as="tvb",
          options=EmbedOptions(num_workers=0))
    assert embed(["tvb"], str(image_folder), ["test"], store=store)[0].path == bf16.path


def test_class_vocabulary_of_other_splits_is_part_of_the_key(cache_dir, text_table):
    from stitchcli.data import resolve_dataset

    store = EmbeddingStore(cache_dir)
    spec = resolve_model_spec(store, ModelRef(TINY, {"weights": "random"}))
    before = entry_key(spec, resolve_dataset(str(text_table)), "train", limit=None, seed=0)
    test_csv = text_table / "test.csv"
    test_csv.write_text(test_csv.read_text().replace("tech", "arts"))
    after = entry_key(spec, resolve_dataset(str(text_table)), "train", limit=None, seed=0)
    assert before.digest != after.digest  # train's class ids change when test brings a new class


def test_weights_replaced_with_same_size_and_mtime_is_a_new_key(cache_dir, tmp_path):
    import shutil

    import timm
    import torch
    from safetensors.torch import save_file

    store = EmbeddingStore(cache_dir)
    for seed in (1, 2):
        torch.manual_seed(seed)
        save_file(timm.create_model(TINY, num_classes=0).state_dict(), str(tmp_path / f"w{seed}.safetensors"))
    live = tmp_path / "w.safetensors"
    shutil.copy2(tmp_path / "w1.safetensors", live)
    first = resolve_model_spec(store, ModelRef(f"timm:{TINY}", {"weights": str(live)}))
    shutil.copy2(tmp_path / "w2.safetensors", live)  # same size, mtime copied from w2
    os.utime(live, ns=(live.stat().st_atime_ns, (tmp_path / "w1.safetensors").stat().st_mtime_ns))
    second = resolve_model_spec(store, ModelRef(f"timm:{TINY}", {"weights": str(live)}))
    assert first.weights_fingerprint != second.weights_fingerprint


def test_bad_values_fail_before_any_work(cache_dir, image_folder, tmp_path):
    store = EmbeddingStore(cache_dir)
    cases = [
        (dict(splits=["train", "valid"]), "valid"),
        (dict(options=EmbedOptions(num_workers=-1)), "--num-workers"),
        (dict(options=EmbedOptions(shard_rows=0)), "--shard-rows"),
        (dict(options=EmbedOptions(device="tpu")), "unknown device"),
        (dict(options=EmbedOptions(device="cpu"), precision="fp16"), "needs a GPU"),
    ]
    for kwargs, needle in cases:
        with pytest.raises(UsageError, match=needle):
            _embed(store, image_folder, **kwargs)
    for bad in (tmp_path / "missing.npy", tmp_path):
        with pytest.raises(UsageError, match="not a file"):
            embed(["mine"], str(image_folder), ["test"], store=store, from_array=[str(bad)])
    assert not (cache_dir / "embeddings").exists()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        EmbeddingStore(tmp_path / "afile")


def test_empty_split_says_it_has_no_rows(cache_dir, tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "train.csv").write_text("text,label\n")
    with pytest.raises(UsageError, match="has no rows"):
        embed([ModelRef(name, {"weights": "random"}) for name in [TINY]], str(folder), ["train"], store=EmbeddingStore(cache_dir))


def test_text_is_encoded_longest_first_and_written_back_in_row_order(cache_dir, tmp_path, tiny_bert):
    """Length-sorted batches (little padding) give the embeddings of a plain padded loop in row order."""
    import csv

    import torch
    from transformers import AutoModel, AutoTokenizer

    from stitchcli.data import load_split, resolve_dataset
    from stitchcli.embedding.batching import shard_order

    rng = np.random.default_rng(0)
    words = "the team won match a late goal decided final striker scored twice new phone has faster chip".split()
    texts = [" ".join(rng.choice(words, size=int(n))) for n in rng.integers(1, 40, size=50)]  # 1 to 39 words
    folder = tmp_path / "lengths"
    folder.mkdir()
    with open(folder / "train.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows([t, str(i % 2)] for i, t in enumerate(texts))

    store = EmbeddingStore(cache_dir)
    options = EmbedOptions(num_workers=0, batch_size=8, shard_rows=24)  # shards of 24 rows: [0, 24), [24, 48), [48, 50)
    result = embed([ModelRef(name, {"pooling": "mean", "max_length": 48}) for name in [str(tiny_bert)]], str(folder), ["train"], store=store, options=options)[0]
    entry = load_embeddings(store, ModelRef(str(tiny_bert), {"pooling": "mean", "max_length": 48}), str(folder), "train")
    assert entry.metadata["batching"] == "length-sorted within shards" and result.rows == 50

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    model = AutoModel.from_pretrained(tiny_bert).eval()
    order = [int(i) for i in entry.ids]  # the rows as the entry holds them
    plain = []
    with torch.inference_mode():
        for b in range(0, len(order), 8):  # the plain loop: row order, each batch padded to its longest text
            batch = tokenizer([texts[i] for i in order[b : b + 8]], padding="longest", truncation=True, max_length=48, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            plain.append(((hidden * mask).sum(1) / mask.sum(1)).numpy())
    np.testing.assert_allclose(entry.embeddings, np.concatenate(plain), atol=1e-5)

    split = load_split(resolve_dataset(str(folder)), "train")
    first = shard_order(split, 0, 24)
    lengths = [len(texts[int(entry.ids[p])]) for p in first]
    assert sorted(first.tolist()) == list(range(24)) and lengths == sorted(lengths, reverse=True)


# ----- out of memory: smaller slices of the same batch --------------------------------------------------------


def _encoder_that_runs_out_of_memory(monkeypatch, fits, error=None) -> list[int]:
    """Make built encoders raise an out-of-memory error for the batches ``fits(rows, calls_so_far)`` refuses.

    Gives the list of the batch rows each ``encode`` call was given (refused ones included), filled as the run goes.
    """
    import torch

    import stitchcli.encoders

    error = error or (lambda rows: torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {rows} GiB"))
    real_build = stitchcli.encoders.build_encoder
    seen: list[int] = []

    def build(*args, **kwargs):
        encoder = real_build(*args, **kwargs)
        real_encode = encoder.encode

        def encode(batch):
            rows = int(batch["input_ids"].shape[0] if isinstance(batch, dict) else batch.shape[0])
            seen.append(rows)
            if not fits(rows, len(seen) - 1):
                raise error(rows)
            return real_encode(batch)

        encoder.encode = encode
        return encoder

    monkeypatch.setattr(stitchcli.encoders, "build_encoder", build)
    return seen


@pytest.mark.slow
def test_out_of_memory_retries_the_same_batch_in_smaller_slices(cache_dir, image_folder, tmp_path, monkeypatch):

    from stitchcli.progress import Reporter

    seen = _encoder_that_runs_out_of_memory(monkeypatch, lambda rows, _: rows <= 4)
    infos: list[str] = []
    store = EmbeddingStore(cache_dir)
    results = _embed(store, image_folder, options=EmbedOptions(num_workers=0, batch_size=16), reporter=Reporter(info=infos.append))
    assert [(r.split, r.rows) for r in results] == [("train", 18), ("test", 9)]
    # train: the batch of 16 fails at 16, 12, 8, 6 (timm's decay_batch_step), then goes in slices of 4; the batch
    # of 2 and the test split (one batch of 9) start at 4 at once: the size that fitted is kept, across splits too
    assert seen == [16, 12, 8, 6, 4, 4, 4, 4, 2, 4, 4, 1]
    assert [line for line in infos if "out of memory" in line] == ["out of memory at batch 16 on cpu: continuing with 12"]

    reference = EmbeddingStore(tmp_path / "reference")
    _embed(reference, image_folder, options=EmbedOptions(num_workers=0, batch_size=4))
    for split in ("train", "test"):
        got = load_embeddings(store, ModelRef(TINY, {"weights": "random"}), str(image_folder), split)
        want = load_embeddings(reference, ModelRef(TINY, {"weights": "random"}), str(image_folder), split)
        np.testing.assert_array_equal(got.ids, want.ids)
        np.testing.assert_allclose(got.embeddings, want.embeddings, rtol=0, atol=1e-6)
        assert (got.metadata["batch_size"], got.metadata["micro_batch_size"]) == (16, 4)
        assert (want.metadata["batch_size"], want.metadata["micro_batch_size"]) == (4, 4)


def test_text_batches_are_sliced_key_by_key_on_a_cpu_allocator_failure(cache_dir, text_table, tmp_path, tiny_bert, monkeypatch):
    cpu_failure = lambda rows: RuntimeError(  # noqa: E731 - what torch's CPU allocator raises
        f"[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to allocate {rows << 30} bytes."
    )
    seen = _encoder_that_runs_out_of_memory(monkeypatch, lambda rows, _: rows <= 3, cpu_failure)
    store = EmbeddingStore(cache_dir)
    options = EmbedOptions(num_workers=0, batch_size=8)
    embed([ModelRef(name, {"pooling": "mean"}) for name in [str(tiny_bert)]], str(text_table), ["train"], store=store, options=options)
    assert seen == [8, 6, 4, 3, 3, 2]
    reference = EmbeddingStore(tmp_path / "reference")
    monkeypatch.undo()
    embed([ModelRef(name, {"pooling": "mean"}) for name in [str(tiny_bert)]], str(text_table), ["train"], store=reference, options=options)
    got = load_embeddings(store, ModelRef(str(tiny_bert), {"pooling": "mean"}), str(text_table), "train")
    want = load_embeddings(reference, ModelRef(str(tiny_bert), {"pooling": "mean"}), str(text_table), "train")
    np.testing.assert_allclose(got.embeddings, want.embeddings, rtol=0, atol=1e-6)  # slices keep the batch's padding
    assert got.metadata["micro_batch_size"] == 3 and want.metadata["micro_batch_size"] == 8


def test_other_errors_are_not_taken_for_out_of_memory(cache_dir, image_folder, monkeypatch):
    seen = _encoder_that_runs_out_of_memory(monkeypatch, lambda rows, _: False, lambda rows: RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        _embed(EmbeddingStore(cache_dir), image_folder, options=EmbedOptions(num_workers=0, batch_size=8))
    assert seen == [8]
    from stitchcli.device import is_out_of_memory

    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"))
    assert not is_out_of_memory(RuntimeError("CUDA error: an illegal memory access was encountered (out of memory?)"))


def test_out_of_memory_at_one_row_fails_with_one_line_and_keeps_finished_shards(cache_dir, image_folder, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import stitchcli.encoders
    from stitchcli.cli import app

    real_build = stitchcli.encoders.build_encoder
    seen = _encoder_that_runs_out_of_memory(monkeypatch, lambda rows, calls: calls == 0)  # only the first batch fits
    args = ["embed", "-m", TINY, "--weights", "random", "-d", str(image_folder), "--split", "train", "--batch-size", "4",
            "--shard-rows", "4", "--num-workers", "0", "--json", "--cache-dir", str(cache_dir)]
    failed = CliRunner().invoke(app, args)
    assert failed.exit_code == 1, failed.output
    assert seen == [4, 4, 3, 2, 1]
    assert "Traceback" not in failed.stderr and failed.stdout == ""
    lines = [line for line in failed.stderr.splitlines() if line.strip()]
    assert [line for line in lines if "error" in line.lower()] == [lines[-1]]
    assert lines[-1].startswith(f"stitchcli: error: out of memory encoding with {TINY} on cpu, even one row at a time")
    assert "smaller model" in lines[-1] and "--precision bf16" in lines[-1] and "resumes" in lines[-1]
    store = EmbeddingStore(cache_dir)
    with pytest.raises(UsageError, match="no cached embeddings"):
        load_embeddings(store, ModelRef(TINY, {"weights": "random"}), str(image_folder), "train")
    assert [p.name for p in cache_dir.glob("embeddings/*/*/*.partial/shard-*")] == ["shard-000000.safetensors"]

    monkeypatch.setattr(stitchcli.encoders, "build_encoder", real_build)
    resumed = CliRunner().invoke(app, args)
    assert resumed.exit_code == 0, resumed.output
    entry = json.loads(resumed.stdout)["entries"][0]
    assert (entry["rows"], entry["resumed_rows"]) == (18, 4)
    reference = EmbeddingStore(tmp_path / "reference")
    _embed(reference, image_folder, splits=["train"], options=EmbedOptions(num_workers=0, batch_size=4))
    np.testing.assert_allclose(
        load_embeddings(store, ModelRef(TINY, {"weights": "random"}), str(image_folder), "train").embeddings,
        load_embeddings(reference, ModelRef(TINY, {"weights": "random"}), str(image_folder), "train").embeddings,
        rtol=0, atol=1e-6,
    )


def test_batch_decay_follows_timm_and_default_batch_sizes():
    from timm.utils.decay_batch import decay_batch_step as timm_decay_batch_step

    from stitchcli.embedding.batching import decay_batch_step, default_batch_size

    assert [decay_batch_step(n) for n in range(1, 600)] == [timm_decay_batch_step(n) for n in range(1, 600)]
    assert (default_batch_size("cpu"), default_batch_size("cuda"), default_batch_size("mps")) == (32, 256, 256)


@pytest.mark.slow
def test_compile_option_runs_the_compiled_model_and_says_so(cache_dir, image_folder):
    from conftest import run_cli

    base = ["embed", "-m", TINY, "--weights", "random", "-d", str(image_folder), "--split", "test",
            "--batch-size", "4", "--num-workers", "0", "--cache-dir", str(cache_dir), "--json"]
    from safetensors.numpy import load_file

    eager = run_cli(*base)
    assert eager.returncode == 0, eager.stderr
    reference = load_file(json.loads(eager.stdout)["entries"][0]["path"])["embeddings"]  # read before --force replaces it
    compiled = run_cli(*base, "--compile", "--force")  # 9 rows: batches of 4, 4 and 1 (padded to 4)
    assert compiled.returncode == 0, compiled.stderr
    assert "compiling with torch.compile" in compiled.stderr and "failed" not in compiled.stderr
    entry = load_embeddings(EmbeddingStore(cache_dir), ModelRef(TINY, {"weights": "random"}), str(image_folder), "test")
    assert entry.metadata["compiled"] is True and entry.embeddings.shape == (9, 64)
    assert entry.metadata["compiled"] is True and json.loads(eager.stdout)["entries"][0]["cache_hit"] is False
    np.testing.assert_allclose(entry.embeddings, reference, rtol=1e-4, atol=1e-5)


def test_default_loading_is_threads_in_the_main_process_on_the_cpu_and_processes_beside_a_gpu(monkeypatch):
    import torch

    from stitchcli.embedding.batching import Loading, choose_loading

    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert choose_loading(None, "cpu", "image") == Loading(0, 3)
    assert choose_loading(None, "cpu", "text") == Loading(0, 1)  # a batch's texts are tokenized together
    assert choose_loading(None, "cuda", "image") == Loading(8, 1)
    assert choose_loading(2, "cpu", "image") == Loading(2, 1)
    assert choose_loading(0, "cuda", "image") == Loading(0, 3)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert choose_loading(None, "cuda", "image") == Loading(1, 1)
    assert [Loading(0, 3).describe(), Loading(0, 1).describe(), Loading(1).describe(), Loading(4).describe()] == [
        "main process, 3 threads", "main process", "1 worker process", "4 worker processes"]


@pytest.mark.parametrize("threads", [2, 3, 7, 9])
def test_batches_loaded_in_threads_equal_the_batches_loaded_whole(image_folder, threads):
    import timm

    from stitchcli.data import load_split, resolve_dataset
    from stitchcli.embedding.batching import batches_in_threads
    from stitchcli.encoders import ImageCollator

    split = load_split(resolve_dataset(str(image_folder)), "train")
    collate = ImageCollator(timm.data.create_transform(input_size=(3, 32, 32), crop_pct=0.9))
    batches = [[5, 0, 17, 3, 9, 11, 2], [4], [12, 13, 14, 15, 16, 1, 6, 7]]  # uneven sizes, not in row order
    got = list(batches_in_threads(split, batches, collate, threads))
    assert len(got) == 3
    for positions, batch in zip(batches, got):
        whole = collate(split.get_inputs(positions))
        assert batch.dtype == whole.dtype and batch.shape == whole.shape == (len(positions), 32, 32, 3)
        assert batch.equal(whole)


def test_a_collator_that_pads_to_the_batch_collates_each_batch_whole_when_threads_read_it(image_folder):
    import torch

    from stitchcli.data import load_split, resolve_dataset
    from stitchcli.embedding.batching import batches_in_threads

    split = load_split(resolve_dataset(str(image_folder)), "train")
    calls = []

    def pad_to_widest(images):  # as an image processor that pads every image to the batch's largest
        calls.append(len(images))
        return torch.full((len(images), max(image.width for image in images)), 1.0)

    batches = [[0, 1, 2, 3, 4], [5, 6]]
    got = list(batches_in_threads(split, batches, pad_to_widest, 3, per_part=False))
    assert calls == [5, 2] and [tuple(b.shape)[0] for b in got] == [5, 2]
    images = split.get_inputs([0, 1, 2, 3, 4])
    assert got[0].equal(pad_to_widest(images))


def test_only_per_image_collators_are_collated_in_parts():
    from stitchcli.encoders import build_encoder, resolve_model
    import torch

    encoder = build_encoder(resolve_model("test_vit", weights="random"), "image", torch.device("cpu"))
    assert encoder.collates_each_input_alone
    encoder._collator = lambda images: images  # any other collator (an image processor) is not
    assert not encoder.collates_each_input_alone


def test_joining_collated_parts_keeps_mappings_and_their_type():
    import torch
    from transformers import BatchFeature

    from stitchcli.embedding.batching import join_parts

    a = {"pixel_values": torch.zeros(2, 3), "mask": torch.ones(2, dtype=torch.long)}
    b = {"pixel_values": torch.ones(1, 3), "mask": torch.zeros(1, dtype=torch.long)}
    joined = join_parts([a, b])
    assert type(joined) is dict and joined["pixel_values"].shape == (3, 3) and joined["mask"].tolist() == [1, 1, 0]
    feature = join_parts([BatchFeature(a), BatchFeature(b)])
    assert isinstance(feature, BatchFeature) and feature["pixel_values"][2].tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(TypeError, match="cannot join"):
        join_parts([[1], [2]])


def test_threaded_loading_embeds_what_a_loader_process_embeds_and_records_it(cache_dir, image_folder, tmp_path):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the main process loads with as many threads as torch has: at least two here
    try:
        threaded = _embed(EmbeddingStore(cache_dir), image_folder, splits=["train"], options=EmbedOptions(num_workers=0, batch_size=5))
        process = _embed(EmbeddingStore(tmp_path / "other"), image_folder, splits=["train"], options=EmbedOptions(num_workers=1, batch_size=5))
    finally:
        torch.set_num_threads(before)
    a = load_embeddings(EmbeddingStore(cache_dir), ModelRef(TINY, {"weights": "random"}), str(image_folder), "train")
    b = load_embeddings(EmbeddingStore(tmp_path / "other"), ModelRef(TINY, {"weights": "random"}), str(image_folder), "train")
    np.testing.assert_array_equal(a.embeddings, b.embeddings)
    assert a.metadata["loading"] == "main process, 2 threads"
    assert b.metadata["loading"] == "1 worker process"
    assert threaded[0].rows == process[0].rows == 18
