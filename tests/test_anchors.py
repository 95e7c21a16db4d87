"""Anchors: seeded strategies, the manifest in the cache, and the same rows for every model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import make_image_folder, run_cli
from stitchcli.models import ModelRef
from stitchcli.anchors import (
    STRATEGIES,
    AnchorManifest,
    AnchorPool,
    anchor_embeddings,
    balanced_quotas,
    choose_anchors,
    is_evaluation_split,
    list_anchor_manifests,
    list_anchor_strategies,
    load_anchor_manifest,
    save_anchor_manifest,
)
from stitchcli.embedding import EmbedOptions, embed, load_embeddings
from stitchcli.progress import Reporter
from stitchcli.errors import UsageError
from stitchcli.store import EmbeddingStore

MODELS = ("test_vit", "test_convnext")  # timm's tiny test models, 64-d features with random weights
VIT, CONVNEXT = (ModelRef(name, {"weights": "random"}) for name in MODELS)


def _assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    """The run failed with ``code`` and one stderr line, the last, that names every needle."""
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("stitchcli: error: "), result.stderr
    assert sum("error" in line.lower() for line in lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[-1], lines[-1]


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, EmbeddingStore]:
    """Give an image folder (train: 3 classes x 6 rows, class by class) and a cache holding both tiny models' train embeddings."""
    root = tmp_path_factory.mktemp("anchors")
    images = make_image_folder(root / "images")
    store = EmbeddingStore(root / "cache")
    embed([ModelRef(name, {"weights": "random"}) for name in list(MODELS)], str(images), ["train"], store=store, options=EmbedOptions(num_workers=0))
    return images, store


# ----- uniform and the command line -----------------------------------------------------------


def test_uniform_same_seed_same_ids_in_library_and_cli_other_seed_other_ids(cache_dir, image_folder):
    store = EmbeddingStore(cache_dir)
    first = choose_anchors(store, str(image_folder), num=6, seed=0)
    again = choose_anchors(store, str(image_folder), num=6, seed=0)
    other = choose_anchors(store, str(image_folder), num=6, seed=1)
    assert first.ids == again.ids and first.ids != other.ids
    # the documented draw: numpy's default_rng(seed).choice over the split's rows, ids ascending
    assert first.ids == sorted(np.random.default_rng(0).choice(18, size=6, replace=False).tolist())
    assert first.labels == [i // 6 for i in first.ids]  # image folders list rows class by class
    assert (first.strategy, first.seed, first.num, first.pool_rows, first.limit) == ("uniform", 0, 6, 18, None)
    assert first.class_names == ["cat", "dog", "frog"] and first.dataset_id == str(image_folder.resolve())

    result = run_cli("anchor", "--dataset", str(image_folder), "--num", "6", "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)  # exactly one JSON document: json.loads refuses trailing text
    assert document["ids"] == first.ids and document["labels"] == first.labels
    assert document["name"] == first.name and document["dataset_fingerprint"] == first.dataset_fingerprint
    saved = json.loads((cache_dir / "anchors" / f"{first.name}.json").read_text())
    assert saved.pop("checksum")["algorithm"] == "sha256" and saved == document  # the file: the document and its checksum
    assert load_anchor_manifest(store, first.name).ids == first.ids


def test_table_output_and_out_file(cache_dir, image_folder, tmp_path):
    out = tmp_path / "picked" / "anchors.json"
    result = run_cli("anchor", "-d", str(image_folder), "--num", "9", "--strategy", "class-balanced", "--name", "mine", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "mine" in result.stdout and "class-balanced" in result.stdout and "3/3" in result.stdout and "3-3" in result.stdout
    assert "saved anchors 'mine'" in result.stderr
    from_file = load_anchor_manifest(EmbeddingStore(cache_dir), out)
    assert from_file == load_anchor_manifest(EmbeddingStore(cache_dir), "mine")
    assert from_file.class_counts() == {"cat": 3, "dog": 3, "frog": 3}


def test_num_larger_than_the_split_is_one_line(cache_dir, image_folder):
    _assert_one_line_error(run_cli("anchor", "-d", str(image_folder), "--num", "60"), 2, "60 anchors asked for", "18 rows")
    _assert_one_line_error(run_cli("anchor", "-d", str(image_folder), "--num", "10", "--limit", "9"), 2, "10 anchors asked for", "9 rows", "--limit 9")


@pytest.mark.slow
def test_fps_without_cached_embeddings_names_the_embed_command(cache_dir, image_folder):
    result = run_cli("anchor", "-d", str(image_folder), "--strategy", "fps", "--model", "test_vit", "--weights", "random", "--num", "4")
    _assert_one_line_error(result, 2, "fps", f"stitchcli embed --model test_vit --dataset {image_folder} --split train --weights random")
    no_model = run_cli("anchor", "-d", str(image_folder), "--strategy", "kmeans", "--num", "4")
    _assert_one_line_error(no_model, 2, "--model")


@pytest.mark.slow
def test_model_options_without_a_model_are_one_line(cache_dir, image_folder):
    result = run_cli("anchor", "-d", str(image_folder), "--weights", "random", "--max-length", "8", "--num", "3")
    _assert_one_line_error(result, 2, "--weights, --max-length describe how --model was embedded", "pass --model M")


def test_evaluation_splits_are_refused(cache_dir, image_folder):
    _assert_one_line_error(run_cli("anchor", "-d", str(image_folder), "--split", "test", "--num", "3"), 2, "training split", "'test'")


@pytest.mark.parametrize("split", ["test", "validation", "val", "valid", "eval", "dev", "test_matched", "Validation-1"])
def test_evaluation_split_names(split):
    assert is_evaluation_split(split)


@pytest.mark.parametrize("split", ["train", "train_sub", "unsupervised", "interval", "training"])
def test_training_split_names(split):
    assert not is_evaluation_split(split)


def test_anchor_help_imports_no_heavy_library():
    code = (
        "import sys\n"
        "from stitchcli.cli import app\n"
        "try:\n"
        "    app(['anchor', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('HEAVY=' + ','.join(m for m in ('torch', 'timm', 'transformers', 'open_clip', 'datasets') if m in sys.modules), file=sys.stderr)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "--strategy" in out.stdout
    assert out.stderr.strip().splitlines()[-1] == "HEAVY="


# ----- class-balanced -------------------------------------------------------------------------


def test_balanced_quotas_differ_by_at_most_one_except_exhausted_classes():
    rng = np.random.default_rng(0)
    for _ in range(300):
        sizes = rng.integers(1, 30, size=int(rng.integers(1, 12)))
        num = int(rng.integers(1, sizes.sum() + 1))
        quota = balanced_quotas(sizes, num, rng.permutation(len(sizes)))
        assert quota.sum() == num and (quota <= sizes).all()
        open_classes = quota < sizes
        if open_classes.any():
            assert quota[open_classes].max() - quota[open_classes].min() <= 1
            # no class is more than one above a class with rows left: only classes out of rows fall behind
            assert quota.max() <= quota[open_classes].min() + 1


def test_class_balanced_counts_differ_by_at_most_one(cache_dir, image_folder):
    store = EmbeddingStore(cache_dir)
    seen = set()
    for seed in range(4):
        manifest = choose_anchors(store, str(image_folder), num=8, strategy="class-balanced", seed=seed)
        counts = manifest.class_counts()
        assert sorted(counts.values()) == [2, 3, 3] and manifest.notes == []
        assert manifest.params["per_class"] == counts
        seen.add(tuple(counts.values()))
    assert len(seen) > 1, "the leftover should go to classes in a seeded order"


def test_class_balanced_with_fewer_anchors_than_classes_says_which_have_none(cache_dir, image_folder):
    warnings: list[str] = []
    manifest = choose_anchors(EmbeddingStore(cache_dir), str(image_folder), num=2, strategy="class-balanced", reporter=Reporter(warn=warnings.append))
    counts = manifest.class_counts()
    assert sorted(counts.values()) == [0, 1, 1]
    (missing,) = [name for name, count in counts.items() if count == 0]
    assert len(warnings) == 1 and "2 anchor(s) for 3 classes" in warnings[0] and f"({missing};" in warnings[0], warnings
    # the option of fit-head/stitch/eval and that of the anchor command, which has no --num-anchors
    assert "--num-anchors 3" in warnings[0] and "--num 3)" in warnings[0] and manifest.notes == warnings


def test_class_balanced_with_a_class_too_small_takes_all_of_it_and_warns(cache_dir, tmp_path):
    data = make_image_folder(tmp_path / "uneven", per_class={"train": 6}, classes=("cat", "dog"))
    # one more class with a single image
    (data / "train" / "frog").mkdir()
    (data / "train" / "cat" / "0000.png").rename(data / "train" / "frog" / "0000.png")
    warnings: list[str] = []
    manifest = choose_anchors(EmbeddingStore(cache_dir), str(data), num=9, strategy="class-balanced", reporter=Reporter(warn=warnings.append))
    assert manifest.class_counts() == {"cat": 4, "dog": 4, "frog": 1}
    assert len(warnings) == 1 and "frog (1 row)" in warnings[0] and manifest.notes == warnings


# ----- fps and kmeans on cached embeddings ----------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["fps", "kmeans"])
def test_fps_and_kmeans_pick_distinct_valid_rows_deterministically(embedded, strategy):
    images, store = embedded
    entry = load_embeddings(store, VIT, str(images), "train")
    first = choose_anchors(store, str(images), num=7, strategy=strategy, model=VIT, seed=3)
    again = choose_anchors(store, str(images), num=7, strategy=strategy, model=VIT, seed=3)
    assert first.ids == again.ids and len(set(first.ids)) == 7 and first.ids == sorted(first.ids)
    assert set(first.ids) <= set(entry.ids.tolist())
    assert first.labels == entry.labels[first.ids].tolist()
    assert first.model == "test_vit" and first.model_options == {"weights": "random"}
    assert first.model_entry == entry.metadata["key_digest"]
    assert first.name.endswith("-test_vit") and strategy in first.name


def test_fps_covers_separated_clusters_and_both_survive_duplicates():
    rng = np.random.default_rng(0)
    centres = np.eye(4, 16) * 10
    points = np.repeat(centres, 10, axis=0) + rng.normal(0, 0.01, (40, 16))
    pool = AnchorPool(np.arange(40), np.repeat(np.arange(4), 10), list("abcd"), points.astype(np.float32))
    picked = STRATEGIES["fps"].select(pool, 4, np.random.default_rng(0)).positions
    assert sorted(np.asarray(picked) // 10) == [0, 1, 2, 3]
    # 10 identical rows and 2 others: 5 anchors are still 5 distinct rows
    same = np.vstack([np.ones((10, 8)), rng.normal(size=(2, 8))]).astype(np.float32)
    dup = AnchorPool(np.arange(12), np.zeros(12, dtype=np.int64), ["a"], same)
    for name in ("fps", "kmeans"):
        positions = STRATEGIES[name].select(dup, 5, np.random.default_rng(1)).positions
        assert len(set(np.asarray(positions).tolist())) == 5


def test_grid_products_are_exact_in_float32():
    from stitchcli.anchors.strategies import _grid_rows

    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 1000)).astype(np.float32) * rng.uniform(0.01, 100, (300, 1))
    x[:5, :3] *= 1e4  # rows dominated by a few coordinates: the largest partial sums
    grid, squared = _grid_rows(x)
    exact = grid.astype(np.float64) @ grid.astype(np.float64).T
    np.testing.assert_array_equal((grid @ grid.T).astype(np.float64), exact)
    np.testing.assert_array_equal(squared, np.diag(exact))
    assert np.abs(exact).max() < 2**24


# ----- the same samples for every model --------------------------------------------------------


def test_anchor_embeddings_are_the_same_rows_for_two_models(embedded):
    images, store = embedded
    manifest = choose_anchors(store, str(images), num=6, seed=5)
    a = anchor_embeddings(store, manifest, VIT)
    b = anchor_embeddings(store, manifest, CONVNEXT)
    np.testing.assert_array_equal(a.ids, manifest.id_array)
    np.testing.assert_array_equal(b.ids, manifest.id_array)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.labels, manifest.label_array)
    for got, model in ((a, "test_vit"), (b, "test_convnext")):
        entry = load_embeddings(store, ModelRef(model, {"weights": "random"}), str(images), "train")
        np.testing.assert_array_equal(got.embeddings, entry.embeddings[np.searchsorted(entry.ids, manifest.id_array)])
    assert a.embeddings.shape == (6, 64) and not np.allclose(a.embeddings, b.embeddings)


def test_anchor_embeddings_refuse_an_entry_without_the_anchor_rows(embedded):
    images, store = embedded
    manifest = choose_anchors(store, str(images), num=12, seed=0)
    with pytest.raises(UsageError, match="stitchcli embed --model test_vit"):
        anchor_embeddings(store, manifest, VIT, limit=6)
    embed([VIT], str(images), ["train"], store=store, options=EmbedOptions(num_workers=0, limit=6))
    with pytest.raises(UsageError, match=r"of the 12 anchors .* not in test_vit's cached entry \(the --limit 6 subset"):
        anchor_embeddings(store, manifest, VIT, limit=6)
    # anchors drawn from that subset are found in it, and in the whole split's entry
    subset = choose_anchors(store, str(images), num=4, limit=6)
    assert subset.limit == 6 and subset.limit_seed == 0 and subset.pool_rows == 6
    limited = anchor_embeddings(store, subset, VIT, limit=6)
    whole = anchor_embeddings(store, subset, VIT)
    np.testing.assert_allclose(limited.embeddings, whole.embeddings, rtol=1e-5, atol=1e-6)


# ----- saving and finding ---------------------------------------------------------------------


def test_unknown_manifest_name_lists_saved_names(cache_dir, image_folder):
    store = EmbeddingStore(cache_dir)
    with pytest.raises(UsageError, match="no anchors saved yet"):
        load_anchor_manifest(store, "nothing")
    for seed in (0, 1):
        save_anchor_manifest(store, choose_anchors(store, str(image_folder), num=3, seed=seed))
    names = list_anchor_manifests(store)
    assert len(names) == 2
    with pytest.raises(UsageError) as raised:
        load_anchor_manifest(store, "nothing")
    message = str(raised.value)
    assert "\n" not in message and all(name in message for name in names)


def test_another_choice_under_a_saved_name_needs_force(cache_dir, image_folder):
    store = EmbeddingStore(cache_dir)
    first = choose_anchors(store, str(image_folder), num=3, seed=0, name="shared")
    save_anchor_manifest(store, first)
    save_anchor_manifest(store, choose_anchors(store, str(image_folder), num=3, seed=0, name="shared"))  # same choice: fine
    other = choose_anchors(store, str(image_folder), num=3, seed=1, name="shared")
    with pytest.raises(UsageError, match="--force"):
        save_anchor_manifest(store, other)
    assert load_anchor_manifest(store, "shared").ids == first.ids
    save_anchor_manifest(store, other, force=True)
    assert load_anchor_manifest(store, "shared").ids == other.ids
    assert not list((cache_dir / "anchors").glob("*.tmp")), "writes go through a temporary file and a rename"


def test_manifest_round_trip_and_damaged_files(cache_dir, image_folder, tmp_path):
    store = EmbeddingStore(cache_dir)
    manifest = choose_anchors(store, str(image_folder), num=3)
    assert AnchorManifest.from_dict(json.loads(json.dumps(manifest.to_dict()))) == manifest
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UsageError, match="cannot read anchor manifest"):
        load_anchor_manifest(store, bad)
    bad.write_text(json.dumps({**manifest.to_dict(), "ids": [1]}))
    with pytest.raises(UsageError, match="damaged"):
        load_anchor_manifest(store, bad)
    bad.write_text(json.dumps({k: v for k, v in manifest.to_dict().items() if k != "ids"}))
    with pytest.raises(UsageError, match="lacks ids"):
        load_anchor_manifest(store, bad)


@pytest.mark.slow
def test_a_saved_manifest_that_was_edited_is_refused_and_one_without_a_checksum_is_read(cache_dir, image_folder):
    store = EmbeddingStore(cache_dir)
    manifest = choose_anchors(store, str(image_folder), num=3, name="mine")
    path = save_anchor_manifest(store, manifest)
    document = json.loads(path.read_text())
    edited = {**document, "ids": [*document["ids"][:-1], document["ids"][-1] + 1]}  # one anchor moved to the next row
    assert edited["ids"][-1] not in manifest.ids
    path.write_text(json.dumps(edited, indent=2))
    with pytest.raises(UsageError, match=r"does not match its checksum \(bit rot, or edited by hand\).*delete its \"checksum\" field"):
        load_anchor_manifest(store, "mine")
    failed = run_cli("fit-head", "-m", "no-such-model", "-d", str(image_folder), "--anchors", "mine")
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert failed.stderr.strip().splitlines() == [f"stitchcli: error: anchor manifest {str(path)!r} does not match its checksum "
                                                  "(bit rot, or edited by hand): choose the anchors again with `stitchcli anchor`, "
                                                  "or delete its \"checksum\" field to use it as edited"]
    del edited["checksum"]  # a manifest written by hand (or by an older stitchcli) carries none: read as it is
    path.write_text(json.dumps(edited))
    assert load_anchor_manifest(store, "mine").ids == edited["ids"]


def test_library_checks_before_any_work(cache_dir, image_folder):
    store = EmbeddingStore(cache_dir)
    assert list_anchor_strategies() == ["uniform", "class-balanced", "fps", "kmeans"]
    with pytest.raises(UsageError, match="did you mean fps"):
        choose_anchors(store, str(image_folder), strategy="fsp")
    with pytest.raises(UsageError, match="drop --model"):
        choose_anchors(store, str(image_folder), num=3, model=ModelRef("test_vit"))
    with pytest.raises(UsageError, match="not valid"):
        choose_anchors(store, str(image_folder), num=3, name="../escape")
    with pytest.raises(UsageError, match="positive"):
        choose_anchors(store, str(image_folder), num=0)


def test_the_dataset_options_given_are_recorded_and_read_again(cache_dir, tmp_path):
    from data_fixtures import TEXT_ROWS_TRAIN, _write_csv

    from stitchcli.settings import DatasetOptions

    data = tmp_path / "columns"
    data.mkdir()
    _write_csv(data / "train.csv", TEXT_ROWS_TRAIN, header=("body", "topic"))
    # 'body' is a text column's name, 'topic' no label column's: the rows are read without labels
    unlabelled = choose_anchors(EmbeddingStore(cache_dir), str(data), num=3)
    assert (unlabelled.labels, unlabelled.class_names, unlabelled.dataset_options) == ([-1, -1, -1], [], {})
    with pytest.raises(UsageError, match="class-balanced draws anchors by class.*has no labels.*--label-column NAME"):
        choose_anchors(EmbeddingStore(cache_dir), str(data), num=3, strategy="class-balanced")
    options = DatasetOptions(input_column="body", label_column="topic")
    manifest = choose_anchors(EmbeddingStore(cache_dir), str(data), num=3, dataset_options=options)
    assert manifest.dataset_options == {"input_column": "body", "label_column": "topic"}
    assert DatasetOptions.from_given(manifest.dataset_options) == options
    spec = DatasetOptions.from_given(manifest.dataset_options).resolve(manifest.dataset)
    assert (spec.input_columns, spec.label_column) == (("body",), "topic")
    with pytest.raises(UsageError, match="revision"):
        DatasetOptions(dataset_revision="main").resolve(str(data))


@pytest.mark.slow
def test_anchor_table_names_a_packaged_dataset_as_given_and_the_json_keeps_the_manifest(cache_dir):
    args = ("anchor", "-d", "packaged:mnist5k", "--num", "20", "--name", "digits")
    table = run_cli(*args, env={"STITCHCLI_CACHE": str(cache_dir), "COLUMNS": "250"})
    assert table.returncode == 0, table.stderr
    row = next(line for line in table.stdout.splitlines() if "digits" in line)
    assert "packaged:mnist5k" in row and str(cache_dir / "assets") not in row, row
    document = json.loads(run_cli(*args, "--json", env={"STITCHCLI_CACHE": str(cache_dir)}).stdout)
    assert document["dataset"] == str(cache_dir / "assets" / "mnist5k")  # the manifest as saved: it resolves from any folder
