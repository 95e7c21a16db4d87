"""`stitchcli similarity` and `embed --layers`, run in-process on a generated image folder with timm's tiny test models."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import make_image_folder
from stitchcli.cli import app

pytestmark = pytest.mark.slow  # embeds two models layer by layer (about a minute)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Give (image folder, cache) with two random tiny ViTs embedded on the test split, every layer of each."""
    root = tmp_path_factory.mktemp("similarity")
    images = make_image_folder(root / "images", per_class={"train": 2, "test": 6})
    cache = root / "cache"
    for model in ("test_vit", "test_vit2"):
        result = CliRunner().invoke(app, ["embed", "-m", model, "--weights", "random", "-d", str(images), "--split", "test",
                                          "--layers", "all", "--cache-dir", str(cache)])
        assert result.exit_code == 0, result.output
    return images, cache


def _run(embedded: tuple[Path, Path], *args: str) -> "object":
    images, cache = embedded
    return CliRunner().invoke(app, ["similarity", "-d", str(images), "-m", "test_vit,test_vit2", "--weights", "random",
                                    "--k", "3", "--cache-dir", str(cache), *args])


def test_json_is_one_document_whose_values_agree_with_the_library(embedded):
    from stitchcli.embedding import load_embeddings
    from stitchcli.models import ModelRef
    from stitchcli.similarity import measure
    from stitchcli.store import EmbeddingStore

    result = _run(embedded, "--json", "--measures", "linear-cka,mutual-knn", "--null", "10")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["samples"] == 18 and document["null"] == 10
    rows = {(r["model_a"], r["model_b"], r["measure"]): r for r in document["rows"] if r["layer_a"] is None}
    images, cache = embedded
    store = EmbeddingStore(cache)
    x, y = (load_embeddings(store, ModelRef(m, {"weights": "random"}), str(images), "test").embeddings for m in ("test_vit", "test_vit2"))
    expected = measure(np.asarray(x, np.float64), np.asarray(y, np.float64), "linear-cka")
    assert rows[("test_vit", "test_vit2", "linear-cka")]["value"] == pytest.approx(expected, abs=1e-6)
    for row in rows.values():
        assert row["null_mean"] is not None and row["calibrated"] is not None


def test_the_dataset_is_named_as_the_user_gave_it_and_identified_by_its_resolved_source(embedded, monkeypatch):
    images, cache = embedded
    monkeypatch.chdir(images.parent)  # a relative path, as typed in a shell
    result = CliRunner().invoke(app, ["similarity", "-d", images.name, "-m", "test_vit,test_vit2", "--weights", "random",
                                      "--k", "3", "--cache-dir", str(cache), "--measures", "linear-cka", "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["dataset"] == images.name
    assert document["dataset_id"] == str(images.resolve())


def test_layers_give_a_matrix_and_a_best_pair_and_csv_holds_every_row(embedded, tmp_path):
    table = tmp_path / "rows.csv"
    result = _run(embedded, "--layers", "all", "--measures", "linear-cka", "--csv", str(table), "--plot", str(tmp_path / "plots"))
    assert result.exit_code == 0, result.output
    assert "blocks.0" in result.stdout and "best layer pair" in result.stdout
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    layer_pairs = {(r["layer_a"], r["layer_b"]) for r in rows if r["model_a"] == "test_vit" and r["model_b"] == "test_vit2"}
    assert ("blocks.0", "blocks.1") in layer_pairs and len(layer_pairs) > 4
    assert list((tmp_path / "plots").glob("*.png"))


@pytest.mark.parametrize(("args", "needle"), [
    (["--measures", "nope"], "nope"),
    (["--k", "50"], "--k"),
    (["--measures", "mrr"], "--projection"),
    (["--layers", "blocks.99"], "blocks.1, blocks.2, blocks.3, blocks.4, blocks.5 (the final representation, 'final', needs no --layers)"),
])
def test_bad_options_are_one_line_and_exit_2(embedded, args, needle):
    result = _run(embedded, *args)
    assert result.exit_code == 2, result.output
    assert needle in result.output and "Traceback" not in result.output


def test_a_cknna_above_one_is_warned_about_with_what_to_change() -> None:
    from stitchcli.cli.similarity import value_warnings
    from stitchcli.similarity import SimilarityReport, SimilarityRecord

    def report(*values: float) -> SimilarityReport:
        rows = [SimilarityRecord("a", "b", None, None, None, "cknna", value) for value in values]
        return SimilarityReport(["a", "b"], [*rows, SimilarityRecord("a", "b", None, None, None, "linear-cka", 1.5)])

    (line,) = value_warnings(report(1.2, 1.607), k=10, rows=100)
    assert "cknna is above 1 (1.607)" in line and "--k 10" in line and "much smaller" in line
    assert value_warnings(report(0.9, 1.0), k=10, rows=100) == []  # linear-cka's row is not cknna's business


def test_an_svcca_on_too_few_rows_to_differ_from_1_is_warned_about() -> None:
    """With N - 1 <= 10 kept directions, both subspaces are the whole centred row space: SVCCA is 1 for any pair."""
    from stitchcli.cli.similarity import value_warnings
    from stitchcli.similarity import SimilarityReport, SimilarityRecord, compare_models

    rng = np.random.default_rng(0)
    few = compare_models({"a": rng.normal(size=(11, 16)), "b": rng.normal(size=(11, 16))}, ["svcca"])
    assert few.records[0].value == pytest.approx(1.0)  # two unrelated random models: the degenerate case is real
    (line,) = value_warnings(few, k=3, rows=11)
    assert "svcca keeps the top 10 directions" in line and "11 rows span only 10" in line and "more than 11 rows" in line
    enough = SimilarityReport(["a", "b"], [SimilarityRecord("a", "b", None, None, None, "svcca", 0.4)])
    assert value_warnings(enough, k=3, rows=12) == []


@pytest.mark.parametrize("projection", [[], ["--projection", "cosine", "--num-anchors", "3"]])
def test_the_training_split_can_be_compared_since_no_head_is_trained(embedded, projection):
    """`similarity --split train` (the default --train-split) is refused by the stitching commands, which keep
    evaluation data apart from the heads' training data; similarity trains nothing, so it compares that split."""
    result = _run(embedded, "--split", "train", "--measures", "linear-cka", "--json", *projection)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["split"] == "train" and document["samples"] == 6  # 2 images of each of 3 classes
    assert {row["projection"] for row in document["rows"]} == ({None, "cosine"} if projection else {None})


def test_final_may_be_listed_among_the_layers_as_the_tables_name_it(embedded):
    result = _run(embedded, "--layers", "blocks.1,final", "--measures", "linear-cka", "--json")
    assert result.exit_code == 0, result.output
    pairs = {(r["layer_a"], r["layer_b"]) for r in json.loads(result.stdout)["rows"]}
    assert pairs == {(a, b) for a in ("blocks.1", None) for b in ("blocks.1", None)}
    alone = _run(embedded, "--layers", "final", "--measures", "linear-cka", "--json")
    assert alone.exit_code == 0, alone.output
    assert {(r["layer_a"], r["layer_b"]) for r in json.loads(alone.stdout)["rows"]} == {(None, None)}


# --- data without labels: an image folder of split folders of PNGs, no class folders -------------------


@pytest.fixture(scope="module")
def unlabelled_images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Give (an image folder without class folders written by PIL, an empty cache)."""
    from data_fixtures import write_unlabelled

    root = tmp_path_factory.mktemp("unlabelled")
    return write_unlabelled(root / "images", "images"), root / "cache"


def _unlabelled(unlabelled_images: tuple[Path, Path], command: str, *args: str) -> "object":
    images, cache = unlabelled_images
    return CliRunner().invoke(app, [command, "-d", str(images), "--cache-dir", str(cache), *args])


def _one_error_line(result, *needles: str) -> str:
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    errors = [line for line in result.stderr.splitlines() if line.startswith("stitchcli: error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def test_unlabelled_images_embed_and_compare_and_limit_keeps_the_same_rows_for_every_model(unlabelled_images):
    from data_fixtures import UNLABELLED_ROWS

    from stitchcli.data import random_subset
    from stitchcli.embedding import load_embeddings
    from stitchcli.models import ModelRef
    from stitchcli.store import EmbeddingStore

    images, cache = unlabelled_images
    result = _unlabelled(unlabelled_images, "embed", "-m", "test_vit", "--weights", "random", "--split", "test", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["entries"][0]["rows"] == UNLABELLED_ROWS["test"]
    assert "has no label column: reading it without labels" in result.stderr
    result = _unlabelled(unlabelled_images, "similarity", "-m", "test_vit,test_vit2", "--weights", "random", "--k", "3",
                         "--measures", "linear-cka,mutual-knn", "--limit", "6", "--embed-seed", "5", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["samples"] == 6 and {row["measure"] for row in document["rows"]} == {"linear-cka", "mutual-knn"}
    store = EmbeddingStore(cache)
    for model in ("test_vit", "test_vit2"):
        entry = load_embeddings(store, ModelRef(model, {"weights": "random"}), str(images), "test", limit=6, seed=5)
        assert entry.ids.tolist() == random_subset(UNLABELLED_ROWS["test"], 6, 5).tolist()
        assert entry.labels.tolist() == [-1] * 6 and entry.metadata["class_names"] == [] and entry.metadata["label_column"] is None


def test_unlabelled_images_compare_in_relative_spaces_on_anchors_drawn_without_labels(unlabelled_images):
    result = _unlabelled(unlabelled_images, "similarity", "-m", "test_vit,test_vit2", "--weights", "random", "--k", "3",
                         "--measures", "linear-cka", "--projection", "cosine", "--num-anchors", "5", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["projections"] == [None, "cosine"] and document["anchors"].endswith("train-uniform-5-s0")
    assert {row["projection"] for row in document["rows"]} == {None, "cosine"}
    _one_error_line(
        _unlabelled(unlabelled_images, "similarity", "-m", "test_vit,test_vit2", "--weights", "random", "--k", "3",
                    "--projection", "cosine", "--num-anchors", "5", "--anchor-strategy", "class-balanced"),
        "class-balanced", "has no labels", "--label-column NAME",
    )


@pytest.mark.parametrize("command", [["stitch", "vit-a", "vit-b"], ["fit-head", "-m", "vit-a"], ["eval", "-m", "vit-a,vit-b"]])
def test_commands_that_train_on_labels_refuse_unlabelled_images_before_any_work(unlabelled_images, command, tmp_path):
    from stitchcli.embedding import resolve_model_spec
    from stitchcli.models import ModelRef
    from stitchcli.store import EmbeddingStore

    images, _ = unlabelled_images
    cache = tmp_path / "cache"
    store = EmbeddingStore(cache)
    for name, model in (("vit-a", "test_vit"), ("vit-b", "test_vit2")):  # what `embed --name` saves, without embedding
        store.save_name(name, {**resolve_model_spec(store, ModelRef(model, {"weights": "random"})).to_dict(), "name": name})
    result = CliRunner().invoke(app, [*command, "-d", str(images), "--cache-dir", str(cache)])
    _one_error_line(result, "split 'train' has no labels", "--label-column NAME")
    assert not list(cache.glob("embeddings/**/*.safetensors"))  # refused before embedding anything


def test_relative_spaces_take_the_data_options_too(embedded):
    """--label-column (and --input-column) reach the anchors' draw: `--label-column none --projection cosine` was a
    TypeError from choose_anchors, which takes the dataset options as one argument."""
    result = _run(embedded, "--label-column", "none", "--projection", "cosine", "--num-anchors", "3", "--measures", "linear-cka", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert {row["projection"] for row in document["rows"]} == {None, "cosine"} and document["samples"] == 18
