"""Stitched models (stitchcli/stitched, `stitch --save`, `predict`): saved, checked, loaded, run and gated.

On timm's tiny test models with seeded random weights, embedded once per module, and images of pure noise with
random labels, so that accuracy sits far from 100% and "the same predictions" compares non-trivial ones.
Commands run in process through typer's CliRunner.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from stitchcli import load_stitched
from stitchcli.cli import app
from stitchcli.embedding import EmbedOptions, embed
from stitchcli.errors import UsageError
from stitchcli.models import ModelRef
from stitchcli.store import EmbeddingStore

FAST = ["--epochs", "8", "--patience", "3", "--seeds", "0,1"]
CLASSES = ("ant", "bee", "cow")


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Run on one thread: on a busy two-core machine torch's spinning thread pool runs tiny steps far slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_noise_images(root: Path, *, per_class: dict[str, int], seed: int = 0) -> Path:
    """Write an image folder (split/class/file.png) of random 16x16 pixels: the classes are labels only."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in per_class.items():
        for cls in CLASSES:
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return root


def invoke(*args: str, stdin: str | None = None):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, [str(a) for a in args], input=stdin)


def one_error_line(result, code: int, *needles: str) -> str:  # type: ignore[no-untyped-def]
    """Assert the run ended with ``code`` and one error line, the last of stderr, naming every needle; give it."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("stitchcli: error: "), result.stderr
    assert sum("error" in line.lower() for line in lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[-1], lines[-1]
    return lines[-1]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Give a noise image folder, a cache with both tiny models (saved as vit and cnx) and `stitch vit cnx --save`'s model.

    Built once per run: under pytest-xdist the workers share the run's temporary folder and take turns on a lock,
    so the first builds it and the others read it (the tests only read it, or write beside it).
    """
    import os

    from stitchcli.store import file_lock

    shared = tmp_path_factory.getbasetemp().parent if os.environ.get("PYTEST_XDIST_WORKER") else tmp_path_factory.mktemp("shared")
    root = shared / "stitched-world"
    with file_lock(shared / "stitched-world.lock"):
        if not (root / "stitch.json").is_file():
            images = write_noise_images(root / "images", per_class={"train": 12, "test": 6})
            store = EmbeddingStore(root / "cache")
            for name, arch in (("vit", "test_vit"), ("cnx", "test_convnext")):
                embed([ModelRef(arch, {"weights": "random"})], str(images), ["train", "test"], store=store, options=EmbedOptions(num_workers=0),
                      register_as=name)
            result = invoke("stitch", "vit", "cnx", "-d", images, *FAST, "--save", root / "model", "--json", "--cache-dir", store.root)
            assert result.exit_code == 0, result.stderr
            (root / "stitch.stderr").write_text(result.stderr)
            (root / "stitch.json").write_text(result.stdout)  # last: its presence says the world is whole
    card = json.loads((root / "model" / "card.json").read_text())
    return SimpleNamespace(root=root, images=root / "images", cache=root / "cache", model=root / "model",
                           report=json.loads((root / "stitch.json").read_text()), card=card, stderr=(root / "stitch.stderr").read_text())


def predict_json(*args: object) -> dict:
    result = invoke("predict", *args, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def saved_row(report: dict, card: dict) -> dict:
    row = card["row"]
    return next(r for r in report["rows"] if r["stitched"] and r["method"] == row["method"] and r["projections"] == row["projections"]
                and r["aggregation"] == row["aggregation"])


# ----- save -> predict ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_predict_on_the_test_split_gives_the_saved_rows_accuracy_and_predictions_row_for_row(world):
    card, row = world.card, saved_row(world.report, world.card)
    seed_accuracy = next(entry["accuracy"] for entry in row["per_seed"] if entry["seed"] == card["row"]["seed"])
    assert card["accuracy"]["stitched"] == seed_accuracy and card["accuracy"]["stitched_row_mean"] == row["accuracy"]
    assert 0.0 < seed_accuracy < 0.9  # random labels: a set of predictions with errors in it
    assert f"saved vit→cnx {card['row']['label']} (seed {card['row']['seed']})" in world.stderr

    from_cache = predict_json(world.model, "-d", world.images, "--split", "test", "--cache-dir", world.cache)
    encoded = predict_json(world.model, "-d", world.images, "--split", "test", "--cache-dir", world.cache, "--recompute")
    for document, source in ((from_cache, "cache"), (encoded, "encoded")):
        assert document["latents"] == source
        assert document["accuracy"] == pytest.approx(seed_accuracy, abs=1e-6)
        assert document["same_as_saved_row"] is True  # the digest of (row id, class) pairs the sweep's own path gave
        assert len(document["predictions"]) == 18 and all("label" in p for p in document["predictions"])
    assert [p["class"] for p in from_cache["predictions"]] == [p["class"] for p in encoded["predictions"]]


def test_the_saved_row_is_the_best_on_validation_data_never_on_the_test_split(world):
    selection = world.card["selection"]
    assert selection["by"] == "validation"
    candidates = selection["candidates"]
    rows = [r for r in world.report["rows"] if r["stitched"] and r["accuracy"] is not None]
    assert len(candidates) == sum(len(r["seeds"]) for r in rows)  # every defined stitched row, every seed
    best = max(c["validation_accuracy"] for c in candidates)
    first_best = next(c for c in candidates if c["validation_accuracy"] == best)
    assert (first_best["row"], first_best["seed"]) == (world.card["row"]["label"], world.card["row"]["seed"])
    assert world.card["accuracy"]["validation_stitched"] == best


def test_load_stitched_predicts_what_the_cli_predicts(world):
    cli = predict_json(world.model, world.images / "test", "--cache-dir", world.cache)
    model = load_stitched(world.model)
    files = sorted(str(p) for p in (world.images / "test").rglob("*.png"))
    assert [p["input"] for p in cli["predictions"]] == files
    probabilities = model.predict_proba(files, store=EmbeddingStore(world.cache))
    assert model.predict(files, store=EmbeddingStore(world.cache)) == [p["class"] for p in cli["predictions"]]
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(probabilities.max(axis=1), [p["probability"] for p in cli["predictions"]], atol=1e-6)
    # the folder's files are the test split's rows in order: the same predictions as on the dataset
    on_split = predict_json(world.model, "-d", world.images, "--split", "test", "--cache-dir", world.cache)
    assert [p["class"] for p in on_split["predictions"]] == [p["class"] for p in cli["predictions"]]
    assert model.card["encoder"]["spec"]["source"] == "test_vit" and model.card["classes"] == list(CLASSES)


def test_unlabelled_pngs_give_one_prediction_each_as_a_table_one_json_document_and_csv(world, tmp_path):
    loose = tmp_path / "loose"
    loose.mkdir()
    for i, png in enumerate(sorted((world.images / "test").rglob("*.png"))[:4]):
        shutil.copy(png, loose / f"picture-{i}.png")
    table = invoke("predict", world.model, loose, "--cache-dir", world.cache, "--csv", tmp_path / "out.csv", "--top-k", "2")
    assert table.exit_code == 0, table.stderr
    assert sum(f"picture-{i}.png" in table.stdout for i in range(4)) == 4 and "accuracy" not in table.stdout
    rows = (tmp_path / "out.csv").read_text().splitlines()
    assert rows[0] == "input,class,probability,class_2,probability_2" and len(rows) == 5
    document = predict_json(world.model, loose, "--cache-dir", world.cache, "--top-k", "2")
    assert "accuracy" not in document and len(document["predictions"]) == 4
    for prediction in document["predictions"]:
        first, second = prediction["top_k"]
        assert first["class"] == prediction["class"] and first["probability"] >= second["probability"]


def test_image_paths_on_standard_input_are_predicted_as_named_on_the_command_line(world, tmp_path):
    pictures = sorted((world.images / "test").rglob("*.png"))[:3]
    named = predict_json(world.model, *pictures, "--cache-dir", world.cache)
    piped = invoke("predict", world.model, "-", "--cache-dir", world.cache, "--json", stdin="".join(f"{p}\n" for p in pictures) + "\n")
    assert piped.exit_code == 0, piped.stderr
    assert json.loads(piped.stdout)["predictions"] == named["predictions"]
    one_error_line(invoke("predict", world.model, "-", "--cache-dir", world.cache, stdin="\n"), 2, "standard input (-) names no image")
    one_error_line(invoke("predict", world.model, "-", "-", "--cache-dir", world.cache, stdin=""), 2, "given twice")


def test_an_image_that_cannot_be_decoded_is_one_line_that_promises_no_kept_shards(world, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"<html>not an image</html>")
    line = one_error_line(invoke("predict", world.model, tmp_path / "bad.png", "--cache-dir", world.cache), 2, "cannot decode", "bad.png")
    assert line.endswith("run the same command again") and "shards" not in line  # predict keeps nothing to reuse


def test_a_copied_model_predicts_with_another_cache_and_nothing_is_written_to_either_cache(world, tmp_path):
    before = sorted(p.name for p in (world.cache / "embeddings").rglob("*"))
    copy = tmp_path / "elsewhere" / "model"
    shutil.copytree(world.model, copy)
    other = tmp_path / "other-cache"
    document = predict_json(copy, "-d", world.images, "--split", "test", "--cache-dir", other)
    assert document["latents"] == "encoded" and document["same_as_saved_row"] is True
    assert document["accuracy"] == pytest.approx(world.card["accuracy"]["stitched"], abs=1e-6)
    assert not (other / "embeddings").exists()
    assert sorted(p.name for p in (world.cache / "embeddings").rglob("*")) == before


@pytest.mark.parametrize(("row", "pipeline", "part"), [("relative", "relative", "encoder_anchors.safetensors"), ("affine", "map", "map.safetensors")])
def test_a_relative_row_and_a_mapped_row_saved_with_save_row_predict_as_their_row(world, tmp_path, row, pipeline, part):
    result = invoke("stitch", "vit", "cnx", "-d", world.images, *FAST, "--save", tmp_path / row, "--save-row", row,
                    "--cache-dir", world.cache, "--quiet")
    assert result.exit_code == 0, result.stderr
    card = json.loads((tmp_path / row / "card.json").read_text())
    assert card["pipeline"]["kind"] == pipeline and card["selection"]["by"].startswith(f"--save-row {row}")
    assert card["row"]["method"] == row
    assert sorted(p.name for p in (tmp_path / row).iterdir()) == sorted(["card.json", "head.json", "head.safetensors", "manifest.json", part])
    document = predict_json(tmp_path / row, "-d", world.images, "--split", "test", "--cache-dir", world.cache, "--recompute")
    assert document["same_as_saved_row"] is True and document["accuracy"] == pytest.approx(card["accuracy"]["stitched"], abs=1e-6)


def test_a_head_trained_with_fit_head_is_saved_with_the_stitched_model(world, tmp_path):
    fitted = invoke("fit-head", "-m", "cnx", "-d", world.images, "--epochs", "8", "--patience", "3", "--seed", "1", "--out", tmp_path / "head",
                    "--cache-dir", world.cache, "--quiet")
    assert fitted.exit_code == 0, fitted.stderr
    result = invoke("stitch", "vit", "cnx", "-d", world.images, "--head", tmp_path / "head.safetensors", "--save", tmp_path / "model",
                    "--save-row", "relative", "--cache-dir", world.cache, "--json")
    assert result.exit_code == 0, result.stderr
    card = json.loads((tmp_path / "model" / "card.json").read_text())
    model = load_stitched(tmp_path / "model")
    assert card["row"]["seed"] == 1 and model.parts.head.config["identity_digest"] == json.loads((tmp_path / "head.json").read_text())["identity_digest"]
    document = predict_json(tmp_path / "model", "-d", world.images, "--split", "test", "--cache-dir", world.cache)
    assert document["same_as_saved_row"] is True and document["accuracy"] == pytest.approx(card["accuracy"]["stitched"], abs=1e-6)
    # without --save-row, the rows that use the head given are the candidates: never a map with a head of its own
    unnamed = invoke("stitch", "vit", "cnx", "-d", world.images, "--head", tmp_path / "head.safetensors", "--save", tmp_path / "unnamed",
                     "--cache-dir", world.cache, "--quiet")
    assert unnamed.exit_code == 0, unnamed.stderr
    saved = load_stitched(tmp_path / "unnamed")
    assert saved.card["row"]["method"] == "relative"
    assert saved.parts.head.config["identity_digest"] == json.loads((tmp_path / "head.json").read_text())["identity_digest"]


def test_a_shared_space_row_is_not_a_candidate_to_save_and_cannot_be_asked_for(world, tmp_path):
    args = ["stitch", "vit", "cnx", "-d", world.images, *FAST, "--bridge", "shared", "--cache-dir", world.cache, "--quiet"]
    one_error_line(invoke(*args, "--save", tmp_path / "asked", "--save-row", "shared"), 2, "--save-row shared", "choose another row")
    assert not (tmp_path / "asked").exists()  # refused before the sweep
    saved = invoke(*args, "--save", tmp_path / "model", "--min-accuracy", "0")
    assert saved.exit_code == 0, saved.stderr
    assert load_stitched(tmp_path / "model").card["row"]["method"] != "shared"


def test_an_unknown_save_row_names_the_rows_there_are_before_any_work(world, tmp_path):
    # the l1 projection and a third seed: heads no earlier test trained, so a sweep run before the refusal would say so
    args = ["stitch", "vit", "cnx", "-d", world.images, *FAST, "--seeds", "7", "-p", "cosine,l1", "--save", tmp_path / "x", "--cache-dir", world.cache]
    bogus = invoke(*args, "--save-row", "cosin")
    line = one_error_line(bogus, 2, "--save-row 'cosin'", "affine", "auto", "cosine+l1[mlp-sum]")
    assert "cosine+euclidean" not in line  # the rows of these settings, not of the defaults
    assert not any(word in bogus.stderr for word in ("projecting", "trained", "training")), bogus.stderr
    # a relative row named by its projections alone, and a bridge the settings sweep, pass the early check
    for row in ("cosine + l1", "auto"):
        assert invoke(*args, "--save-row", row, "--bridge", "auto", "--quiet").exit_code == 0
    one_error_line(invoke(*args, "--save-row", "refine", "--bridge", "none"), 2, "--save-row 'refine'")


# ----- directories that are refused ------------------------------------------------------------------------


class Payload:
    """Pickled, it writes a marker file when unpickled: proof that the loader never unpickles."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def _flip_a_bit_in_the_head(folder: Path) -> None:
    data = bytearray((folder / "head.safetensors").read_bytes())
    data[-5] ^= 0x04  # inside the last tensor's bytes
    (folder / "head.safetensors").write_bytes(bytes(data))


def _edit_the_card(folder: Path) -> None:
    card = json.loads((folder / "card.json").read_text())
    card["accuracy"]["stitched"] = 0.99
    (folder / "card.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")


def _drop_a_pickle(folder: Path) -> None:
    (folder / "extra.pkl").write_bytes(pickle.dumps(Payload(folder.parent / "UNPICKLED")))


def _remove_a_file(folder: Path) -> None:
    (folder / "head.json").unlink()


@pytest.mark.parametrize(
    ("damage", "needles"),
    [
        (_flip_a_bit_in_the_head, ("head.safetensors does not match its checksum",)),
        (_edit_the_card, ("card.json does not match its checksum", "edited")),
        (_drop_a_pickle, ("unexpected file extra.pkl", "nothing pickled")),
        (_remove_a_file, ("lacks head.json",)),
    ],
)
def test_a_damaged_edited_or_foreign_directory_is_refused_in_one_line_before_anything_runs(world, tmp_path, monkeypatch, damage, needles):
    import stitchcli.encoders

    def no_model(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("a model was built for a refused directory")

    monkeypatch.setattr(stitchcli.encoders, "build_encoder", no_model)
    folder = tmp_path / "model"
    shutil.copytree(world.model, folder)
    damage(folder)
    for args in ([world.images / "test"], ["-d", world.images, "--split", "test"]):
        result = invoke("predict", folder, *args, "--cache-dir", tmp_path / "cache")
        one_error_line(result, 2, *needles)
        assert result.stdout == "" and "loading" not in result.stderr
    with pytest.raises(UsageError):
        load_stitched(folder)
    assert not (tmp_path / "UNPICKLED").exists() and not (tmp_path / "cache").exists()


def test_what_a_file_manager_leaves_in_a_copied_model_is_not_a_reason_to_refuse_it(world, tmp_path):
    copy = shutil.copytree(world.model, tmp_path / "copied")
    for junk in (".DS_Store", "._head.safetensors", "Thumbs.db", "desktop.ini"):
        (copy / junk).write_bytes(b"\x00junk")
    assert load_stitched(copy).classes == load_stitched(world.model).classes
    (copy / "notes.pkl").write_bytes(b"\x80\x04junk")
    with pytest.raises(UsageError, match="unexpected file notes.pkl"):
        load_stitched(copy)


def test_folders_that_are_not_stitched_models_are_refused(world, tmp_path):
    one_error_line(invoke("predict", tmp_path, world.images / "test"), 2, "is not a stitched model (no manifest.json)")
    one_error_line(invoke("predict", tmp_path / "missing", world.images / "test"), 2, "is not a folder")
    (tmp_path / "notes.txt").write_text("mine\n")
    result = invoke("stitch", "vit", "cnx", "-d", world.images, "--save", tmp_path, "--cache-dir", world.cache)
    one_error_line(result, 2, "is a folder of other files")
    assert result.stdout == ""  # refused before the sweep


def test_a_model_whose_encoder_weights_are_not_on_this_machine_says_so_in_one_line_exit_1(world, tmp_path):
    from stitchcli.stitched import save_stitched

    model = load_stitched(world.model)
    card = {key: value for key, value in model.card.items() if key not in ("format", "format_version", "pipeline")}
    card["encoder"] = {**card["encoder"], "spec": {**card["encoder"]["spec"], "weights": str(tmp_path / "gone.safetensors"),
                                                  "weights_fingerprint": "ab" * 32}}
    save_stitched(tmp_path / "far", model.parts, card)
    one_error_line(invoke("predict", tmp_path / "far", world.images / "test", "--cache-dir", world.cache), 1, "gone.safetensors", "not on this machine")


def test_a_model_whose_encoder_weights_changed_at_their_path_says_they_differ_from_the_stitched_ones(world, tmp_path):
    """Other weights saved over the encoder's file (or model folder) gave the encoder check's 'changed since the model
    was resolved; resolve or register it again' with exit 2: advice that cannot help a model trained on the old ones."""
    from stitchcli.stitched import save_stitched

    (tmp_path / "weights.safetensors").write_bytes(b"other weights")
    model = load_stitched(world.model)
    card = {key: value for key, value in model.card.items() if key not in ("format", "format_version", "pipeline")}
    card["encoder"] = {**card["encoder"], "spec": {**card["encoder"]["spec"], "weights": str(tmp_path / "weights.safetensors"),
                                                  "weights_fingerprint": "ab" * 32}}
    save_stitched(tmp_path / "changed", model.parts, card)
    line = one_error_line(invoke("predict", tmp_path / "changed", world.images / "test", "--cache-dir", world.cache), 1,
                          "weights.safetensors differs from the one it was stitched with", "abababababab", "put back")
    assert "register" not in line


# ----- --min-accuracy ------------------------------------------------------------------------------------


def test_min_accuracy_exits_3_with_one_line_naming_the_row_below_the_bar_and_0_above(world, tmp_path):
    accuracy = world.card["accuracy"]["stitched"]
    label = world.card["row"]["label"]
    above, below = f"{100 * accuracy + 1:.1f}%", f"{max(accuracy - 0.01, 0):.4f}"
    args = ["-d", world.images, "--split", "test", "--cache-dir", world.cache]
    one_error_line(invoke("predict", world.model, *args, "--min-accuracy", above), 3, label, "below --min-accuracy")
    assert invoke("predict", world.model, *args, "--min-accuracy", below).exit_code == 0
    stitch = ["stitch", "vit", "cnx", "-d", world.images, *FAST, "--cache-dir", world.cache, "--json"]
    failed = invoke(*stitch, "--min-accuracy", above)
    one_error_line(failed, 3, f"vit→cnx {label}", "below --min-accuracy")
    assert json.loads(failed.stdout)["rows"]  # the result is printed before the gate fails
    assert invoke(*stitch, "--min-accuracy", below).exit_code == 0
    one_error_line(invoke("predict", world.model, world.images / "test", "--min-accuracy", "0.5"), 2, "needs labelled rows")
    one_error_line(invoke("predict", world.model, *args, "--min-accuracy", "fast"), 2, "not a number")


def _relabelled(world, root: Path, names: dict[str, str]) -> Path:
    """Copy the test split of the world's images with class folders renamed by ``names`` (others kept)."""
    for cls in CLASSES:
        shutil.copytree(world.images / "test" / cls, root / "test" / names.get(cls, cls))
    return root


def test_labels_that_are_none_of_the_models_classes_give_predictions_without_an_accuracy(world, tmp_path):
    """A folder naming the same classes otherwise (zero … against 0 …) would read 0% whatever the predictions:
    the rows are predicted without an accuracy, with a warning, and --min-accuracy is refused, not failed."""
    renamed = _relabelled(world, tmp_path / "renamed", {cls: f"renamed-{cls}" for cls in CLASSES})
    args = ["-d", renamed, "--split", "test", "--cache-dir", world.cache]
    result = invoke("predict", world.model, *args, "--json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert "accuracy" not in document and all("label" not in p for p in document["predictions"])
    assert "are none of the model's classes" in result.stderr and "renamed-" in result.stderr
    inputs = sorted(p["input"] for p in document["predictions"])  # an image folder's rows are named by their files
    assert inputs == sorted(path.relative_to(renamed).as_posix() for path in (renamed / "test").rglob("*.png"))
    one_error_line(invoke("predict", world.model, *args, "--min-accuracy", "0.5"), 2, "none of the model's classes", "--label-column")

    partly = _relabelled(world, tmp_path / "partly", {CLASSES[0]: "stranger"})
    result = invoke("predict", world.model, "-d", partly, "--split", "test", "--cache-dir", world.cache, "--json")
    assert result.exit_code == 0, result.stderr
    assert "label(s) stranger of" in result.stderr and "their 6 row(s) count as errors" in result.stderr
    assert 0.0 <= json.loads(result.stdout)["accuracy"] <= 1.0


def test_a_split_read_without_labels_gets_predictions_without_accuracy_and_min_accuracy_refuses_it(world):
    args = ["-d", world.images, "--split", "test", "--label-column", "none", "--cache-dir", world.cache]
    document = predict_json(world.model, *args)
    assert "accuracy" not in document and document["rows"] == 18
    assert all("label" not in row and row["class"] in world.card["classes"] for row in document["predictions"])
    one_error_line(invoke("predict", world.model, *args, "--min-accuracy", "0.5"), 2, "has no labels", "--label-column NAME")


# ----- text -----------------------------------------------------------------------------------------------


@pytest.mark.slow  # builds and runs a (tiny) BERT: transformers' import alone takes seconds
def test_a_text_model_predicts_one_class_per_line_of_a_text_file(tiny_bert, text_table, tmp_path):
    store = EmbeddingStore(tmp_path / "cache")
    for name, pooling in (("bcls", "cls"), ("bmean", "mean")):
        embed([ModelRef(str(tiny_bert), {"pooling": pooling})], str(text_table), ["train", "test"], store=store, options=EmbedOptions(num_workers=0),
              register_as=name)
    saved = invoke("stitch", "bcls", "bmean", "-d", text_table, *FAST, "--save", tmp_path / "model", "--cache-dir", store.root, "--quiet")
    assert saved.exit_code == 0, saved.stderr
    articles = tmp_path / "articles.txt"
    articles.write_text("the striker scored twice\n\na new phone has a faster chip\nfans cheered the keeper\n")
    document = predict_json(tmp_path / "model", articles, "--cache-dir", store.root)
    assert [p["input"] for p in document["predictions"]] == [f"{articles}:1", f"{articles}:3", f"{articles}:4"]
    assert {p["class"] for p in document["predictions"]} <= {"sport", "tech"}
    piped = invoke("predict", tmp_path / "model", "-", "--cache-dir", store.root, "--json", stdin="\ufeff" + articles.read_text())
    assert piped.exit_code == 0, piped.stderr
    lines = json.loads(piped.stdout)["predictions"]  # a byte-order mark, as Windows tools write, is not part of the first text
    assert [p["input"] for p in lines] == ["stdin:1", "stdin:3", "stdin:4"]
    assert [p["class"] for p in lines] == [p["class"] for p in document["predictions"]]
    # a table: its input column is found as embed finds it (a `text` column beside a label), or asked for
    import pandas as pd

    texts = [line for line in articles.read_text().splitlines() if line]
    pd.DataFrame({"text": texts, "label": ["sport", "tech", "sport"]}).to_csv(tmp_path / "new.csv", index=False)
    table = predict_json(tmp_path / "model", tmp_path / "new.csv", "--cache-dir", store.root)
    assert [p["class"] for p in table["predictions"]] == [p["class"] for p in document["predictions"]]
    two = pd.DataFrame({"title": texts, "body": ["goal", "chip", "keeper"], "label": ["sport", "tech", "sport"]})
    two.to_csv(tmp_path / "two.csv", index=False)
    joined = predict_json(tmp_path / "model", tmp_path / "two.csv", "--input-column", "title,body", "--cache-dir", store.root)
    repeated = predict_json(tmp_path / "model", tmp_path / "two.csv", "--input-column", "title", "--input-column", "body", "--cache-dir", store.root)
    assert joined["predictions"] == repeated["predictions"]  # a repeat is the comma list, not only its last column
    last_only = predict_json(tmp_path / "model", tmp_path / "two.csv", "--input-column", "body", "--cache-dir", store.root)
    assert [p["probability"] for p in last_only["predictions"]] != [p["probability"] for p in joined["predictions"]]
    pd.DataFrame({"score": [1, 2], "weight": [0.5, 0.25]}).to_csv(tmp_path / "numbers.csv", index=False)
    one_error_line(invoke("predict", tmp_path / "model", tmp_path / "numbers.csv", "--cache-dir", store.root), 2, "--input-column")
    model = load_stitched(tmp_path / "model")
    texts = [line for line in articles.read_text().splitlines() if line]
    assert model.predict(texts, store=store) == [p["class"] for p in document["predictions"]]


def test_the_weights_tensors_digest_ignores_the_file_layout_and_sees_every_tensor(tmp_path):
    import torch
    from safetensors.torch import save_file

    from stitchcli.stitched.encoding import weights_tensors_digest

    tensors = {"b.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3), "a.bias": torch.ones(3, dtype=torch.bfloat16)}
    save_file(tensors, str(tmp_path / "one.safetensors"), metadata={"x": "1", "y": "2"})
    save_file(dict(reversed(list(tensors.items()))), str(tmp_path / "two.safetensors"), metadata={"y": "2", "x": "1", "z": "3"})
    changed = {**tensors, "a.bias": torch.tensor([1.0, 1.0, 1.0078125], dtype=torch.bfloat16)}
    save_file(changed, str(tmp_path / "three.safetensors"))
    one, two, three = (weights_tensors_digest(tmp_path / f"{name}.safetensors") for name in ("one", "two", "three"))
    assert one == two and one != three and one is not None
    assert weights_tensors_digest(tmp_path / "missing.safetensors") is None


# ----- values handed over in Python -----------------------------------------------------------------------


def test_collections_of_texts_are_one_input_per_item_whatever_their_type():
    """A pandas Series, a NumPy array or a generator of texts was str()-ed into ONE text: one prediction for all."""
    import pandas as pd

    from stitchcli.stitched.inputs import inputs_from_values

    texts = ["the striker scored", "a faster chip", "fans cheered"]
    for values in (texts, tuple(texts), pd.Series(texts), np.array(texts), (t for t in texts)):
        inputs = inputs_from_values(values, "text")
        assert inputs.split.fetch(range(3)) == texts, type(values)
    assert inputs_from_values("one text", "text").split.fetch([0]) == ["one text"]
    assert len(inputs_from_values([], "text").names) == 0
    for bad, needle in (([texts[0], None], "input #1 is missing"), (pd.Series([texts[0], np.nan]), "input #1 is missing"),
                        ([b"bytes"], "decode it first"), (pd.DataFrame({"text": texts}), "give one column")):
        with pytest.raises(UsageError, match=needle):
            inputs_from_values(bad, "text")


def test_an_n_h_w_stack_of_grey_images_is_one_input_per_image():
    """An (N, H, W) stack of grey digits was taken as ONE (H, W, C) image with C = W channels, and refused with
    'cannot read an image from an array of shape' only once the encoder had loaded."""
    from stitchcli.stitched.inputs import inputs_from_values

    digits = np.zeros((5, 28, 28), np.uint8)
    inputs = inputs_from_values(digits, "image")
    assert len(inputs.names) == 5 and [image.size for image in inputs.split.fetch(range(5))] == [(28, 28)] * 5
    # 3 or 4 first: torch's (C, H, W) layout of one image as much as a stack, so neither is guessed
    with pytest.raises(UsageError, match=r"either one \(3, H, W\) image or 3 grey \(H, W\) images"):
        inputs_from_values(np.zeros((3, 28, 28), np.uint8), "image")
    assert len(inputs_from_values(list(np.zeros((3, 28, 28), np.uint8)), "image").names) == 3  # as a list: no doubt
    for one in (np.zeros((28, 28), np.uint8), np.zeros((28, 28, 1), np.uint8), np.zeros((28, 28, 3), np.uint8),
                np.zeros((28, 28, 4), np.uint8)):
        assert len(inputs_from_values(one, "image").names) == 1, one.shape
    assert len(inputs_from_values(np.zeros((2, 28, 28, 3), np.uint8), "image").names) == 2
    with pytest.raises(UsageError, match=r"input #0 is an array of shape \(28, 28, 28\), not an image"):
        inputs_from_values([np.zeros((28, 28, 28), np.uint8)], "image")


def test_a_stack_of_image_arrays_bytes_and_no_input_are_predicted_as_a_list_of_images(world, monkeypatch):
    """An (N, H, W, C) stack was refused as one image, encoded bytes were read as N ints, and no input reached the
    encoder and failed with '0-d latents'."""
    from PIL import Image

    model = load_stitched(world.model)
    store = EmbeddingStore(world.cache)
    files = sorted(str(p) for p in (world.images / "test").rglob("*.png"))[:4]
    arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    expected = model.predict(files, store=store)
    assert model.predict(np.stack(arrays), store=store) == expected
    assert model.predict(Path(files[0]).read_bytes(), store=store) == expected[:1]
    assert model.predict(arrays[0], store=store) == expected[:1]
    with pytest.raises(UsageError, match="input #1 is a int, not an image"):
        model.predict([arrays[0], 7], store=store)
    import stitchcli.encoders

    monkeypatch.setattr(stitchcli.encoders, "build_encoder", lambda *a, **k: pytest.fail("an encoder was built for no input"))
    assert model.predict([], store=store) == []
    assert model.predict_proba(np.zeros((0, 16, 16, 3), np.uint8), store=store).shape == (0, len(CLASSES))


def test_top_k_above_the_number_of_classes_keeps_every_csv_cell_under_its_header(world, tmp_path):
    """--top-k 5 on a 3-class model wrote columns up to class_5 while a row held three classes: the label landed
    under class_4 and the label column read empty."""
    import pandas as pd

    result = invoke("predict", world.model, "-d", world.images, "--split", "test", "--top-k", "5", "--csv", tmp_path / "out.csv",
                    "--cache-dir", world.cache, "--quiet")
    assert result.exit_code == 0, result.stderr
    table = pd.read_csv(tmp_path / "out.csv")
    assert list(table.columns) == ["input", "class", "probability", "class_2", "probability_2", "class_3", "probability_3", "label"]
    truth = {row.input: row.input.split("/")[1] for row in table.itertuples()}  # test/<class>/file.png
    assert list(table["label"]) == [truth[name] for name in table["input"]]
    assert (table[["probability", "probability_2", "probability_3"]].sum(axis=1) - 1).abs().max() < 1e-5


def test_a_dataset_of_the_other_modality_is_one_error_line_before_its_labels_are_compared(world, text_table, monkeypatch):
    """An image model on a text dataset warned that the labels (sport, tech) are none of its classes, then failed on
    the modality: two lines for one mistake, the first of them beside the point."""
    import stitchcli.encoders

    monkeypatch.setattr(stitchcli.encoders, "build_encoder", lambda *a, **k: pytest.fail("an encoder was built for the wrong modality"))
    for extra in ([], ["--min-accuracy", "0.5"]):
        result = invoke("predict", world.model, "-d", text_table, "--split", "test", "--cache-dir", world.cache, "--quiet", *extra)
        one_error_line(result, 2, "text", "reads image")
        assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1, result.stderr


@pytest.mark.slow  # a stitch of its own (about 12 s on two busy cores)
def test_the_dataset_it_was_stitched_on_is_read_with_the_columns_it_was_stitched_with(world, tmp_path):
    """`stitch --input-column shuffled --label-column topic --save`, then `predict -d` on the same data without
    those options read the other columns (inferred: image, label): other inputs, other labels, another accuracy."""
    import pandas as pd

    files = {split: sorted((world.images / split).rglob("*.png")) for split in ("train", "test")}
    rng = np.random.default_rng(3)
    data = tmp_path / "table"
    data.mkdir()
    for split, paths in files.items():
        topic = [CLASSES[i] for i in rng.integers(0, 3, len(paths))]  # another labelling of the same images
        pd.DataFrame({"image": [str(p) for p in paths], "shuffled": [str(p) for p in rng.permutation(paths)],
                      "label": [p.parent.name for p in paths], "topic": topic}).to_csv(data / f"{split}.csv", index=False)
    cache = shutil.copytree(world.cache, tmp_path / "cache")  # its own embeddings: the world's cache stays as other tests find it
    columns = ["--input-column", "shuffled", "--label-column", "topic"]
    saved = invoke("stitch", "vit", "cnx", "-d", data, *FAST, *columns, "--save", tmp_path / "model", "--cache-dir", cache, "--quiet")
    assert saved.exit_code == 0, saved.stderr
    card = json.loads((tmp_path / "model" / "card.json").read_text())
    result = invoke("predict", tmp_path / "model", "-d", data, "--split", "test", "--cache-dir", cache, "--json", "--recompute")
    assert result.exit_code == 0, result.stderr
    assert "read as the model was stitched on it: --input-column shuffled, --label-column topic" in result.stderr
    document = json.loads(result.stdout)
    assert document["same_as_saved_row"] is True and document["accuracy"] == pytest.approx(card["accuracy"]["stitched"], abs=1e-6)
    assert [p["label"] for p in document["predictions"]] == list(pd.read_csv(data / "test.csv")["topic"])
    given = predict_json(tmp_path / "model", "-d", data, "--split", "test", "--cache-dir", cache, *columns[:2])
    assert [p["class"] for p in given["predictions"]] == [p["class"] for p in document["predictions"]]
    # a table of new inputs that holds the column the model read: that column, not the one inference picks
    table = predict_json(tmp_path / "model", data / "test.csv", "--cache-dir", cache)
    assert [p["class"] for p in table["predictions"]] == [p["class"] for p in document["predictions"]]
    other = predict_json(tmp_path / "model", data / "test.csv", "--input-column", "image", "--cache-dir", cache)
    assert len(other["predictions"]) == len(document["predictions"])


def test_a_model_stitched_in_fp16_on_a_cpu_machine_says_it_needs_a_gpu_not_an_option_predict_lacks(world, tmp_path):
    """The line was check_precision's '--precision fp16 needs a GPU; on the CPU use bf16 or fp32' (exit 2): predict
    has no --precision, and the precision is the stitched encoder's, so no input of the user's was wrong."""
    from stitchcli.stitched import save_stitched

    model = load_stitched(world.model)
    card = {key: value for key, value in model.card.items() if key not in ("format", "format_version", "pipeline")}
    card["encoder"] = {**card["encoder"], "spec": {**card["encoder"]["spec"], "precision": "fp16"}}
    save_stitched(tmp_path / "fp16", model.parts, card)
    line = one_error_line(invoke("predict", tmp_path / "fp16", world.images / "test", "--device", "cpu", "--cache-dir", world.cache), 1,
                          "stitched in fp16", "GPU", "--device cuda")
    assert "--precision fp16 needs" not in line


def test_text_inputs_with_no_line_name_standard_input_and_files_as_given(tmp_path, monkeypatch):
    import io

    from stitchcli.stitched.inputs import inputs_from_paths

    monkeypatch.setattr("sys.stdin", io.StringIO("\n  \n"))
    with pytest.raises(UsageError, match=r"^standard input \(-\) holds no non-empty line"):
        inputs_from_paths(["-"], "text")
    (tmp_path / "a.txt").write_text("\n")
    (tmp_path / "b.txt").write_text(" \n")
    with pytest.raises(UsageError, match=r"a\.txt, .*b\.txt hold no non-empty line"):
        inputs_from_paths([tmp_path / "a.txt", tmp_path / "b.txt"], "text")
