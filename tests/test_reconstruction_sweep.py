"""``--task reconstruction`` through the sweep and the command line: rows, invariance, grids, files, CSV, refusals.

Generated data only: an image folder of 8×8 grey pictures (a bright block placed by the class), and two
"models" whose latents are imported arrays: A reads the pixels through a random linear map, B is A rotated,
rescaled and shifted (an invariance of the centred cosine and Euclidean projections).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from stitchcli.cli import app
from stitchcli.embedding import embed
from stitchcli.errors import UsageError
from stitchcli.models import ModelRef
from stitchcli.settings import HeadSettings, StitchSettings
from stitchcli.stitching import stitch
from stitchcli.store import EmbeddingStore
from tests.conftest import make_text_table

SIDE, DIM, CLASSES = 8, 24, 4
PER_SPLIT = {"train": 30, "test": 10}  # images per class
HEAD = HeadSettings(epochs=15, hidden=64, batch_size=16, lr=3e-3)
FLAGS = ["--task", "reconstruction", "--seeds", "0", "--num-anchors", "40", "--epochs", "15", "--hidden", "64", "--batch-size", "16", "--lr", "0.003"]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Train on one thread: on a busy machine torch's thread pool runs tiny steps far slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Give the block-image dataset, a cache holding models A and B (B = A rotated, rescaled and shifted), a text table."""
    from PIL import Image

    from stitchcli.reconstruction.targets import load_pixel_targets

    root = tmp_path_factory.mktemp("reconstruction-sweep")
    rng = np.random.default_rng(0)
    data = root / "blocks"
    for split, count in PER_SPLIT.items():
        for label in range(CLASSES):
            folder = data / split / f"c{label}"
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.uniform(0, 25, size=(SIDE, SIDE))
                top, left = 2 * (label // 2) + rng.integers(0, 3), 2 * (label % 2) + rng.integers(0, 3)
                pixels[top : top + 3, left : left + 3] = 230
                Image.fromarray(pixels.astype(np.uint8), mode="L").save(folder / f"{i:03d}.png")
    mixing = rng.normal(size=(SIDE * SIDE, DIM)) / 4
    latents = {}
    for split in PER_SPLIT:
        images = load_pixel_targets(str(data), split).images  # row i is row i of the split
        latents[split] = images.reshape(len(images), -1).numpy() @ mixing + 0.05 * rng.normal(size=(len(images), DIM))
    rotation, _ = np.linalg.qr(rng.normal(size=(DIM, DIM)))
    twin = {split: z @ rotation * 3 + 2.0 for split, z in latents.items()}
    store = EmbeddingStore(root / "cache")
    for name, values in (("A", latents), ("B", twin)):
        files = []
        for split, array in values.items():
            np.save(root / f"{name}-{split}.npy", array.astype(np.float32))
            files.append(f"{split}={root / f'{name}-{split}.npy'}")
        embed([name], str(data), list(values), store=store, from_array=files)
    return {"root": root, "data": data, "cache": store.root, "text": make_text_table(root / "texts")}


@pytest.fixture(scope="module")
def report(world):
    """The library sweep A → B with every reconstruction kept (its heads are cached for the CLI tests)."""
    settings = StitchSettings(dataset=str(world["data"]), task="reconstruction", seeds=(0,), num_anchors=40, head=HEAD)
    return stitch(EmbeddingStore(world["cache"]), ModelRef("A"), ModelRef("B"), settings, keep="all")


def rows_by(report) -> dict[tuple, object]:
    return {(row.encoder, row.decoder, row.method, tuple(row.projections)): row for row in report.rows}


@pytest.mark.slow
def test_reconstruction_rows_carry_the_task_and_pixel_scores_and_no_accuracy(report):
    # 3 projection sets, 3 baselines and the auto bridge (chosen by held-out retrieval: a decoder has no logits), 2 directions
    assert report.task == "reconstruction" and len(report.rows) == 2 * (3 + 3 + 1)
    assert all(row.chosen for row in report.rows if row.method == "auto" and row.stitched)
    for row in report.rows:
        document = row.to_dict()
        assert document["task"] == "reconstruction" and document["accuracy"] is None and document["macro_f1"] is None
        assert 0.0 <= document["mse"] < 0.2 and document["psnr"] > 5 and -1.0 <= document["ssim"] <= 1.0
        assert 0.0 <= document["pixel_accuracy"] <= 1.0
        assert set(document["per_seed"][0]) == {"seed", "mse", "psnr", "ssim", "pixel_accuracy"}
    rows = rows_by(report)
    reference = rows[("B", "B", "relative", ("cosine", "euclidean"))]
    assert reference.mse < 0.02 and reference.ssim > 0.8  # the decoder learned the pictures, not their mean
    assert report.pixel_classifier["accuracy_on_originals"] > 0.5
    summary = report.to_dict()["summary"][0]
    assert {"reference_mse", "stitched_ssim", "stitched_pixel_accuracy"} <= set(summary) and "reference_accuracy" not in summary


def test_a_rotated_and_rescaled_twin_reconstructs_with_the_models_own_mse(report):
    rows = rows_by(report)
    for subset in (("cosine",), ("euclidean",), ("cosine", "euclidean")):
        reference, stitched = rows[("B", "B", "relative", subset)], rows[("A", "B", "relative", subset)]
        assert stitched.mse == pytest.approx(reference.mse, rel=1e-3, abs=1e-6), subset
        assert stitched.ssim == pytest.approx(reference.ssim, abs=1e-3) and stitched.pixel_accuracy == reference.pixel_accuracy
    absolute = rows[("B", "B", "absolute", ())]
    assert rows[("A", "B", "translation", ())].mse == pytest.approx(absolute.mse, rel=1e-3)  # the orthogonal map undoes the twin
    assert rows[("A", "B", "absolute", ())].mse > 3 * absolute.mse  # raw latents of another space are not B's


def test_kept_reconstructions_become_one_grid_and_one_file_per_row(report, tmp_path):
    from safetensors.numpy import load_file

    from stitchcli.stitching.reconstruction import write_grids, write_outputs

    grids = write_grids(tmp_path / "plots", report)
    assert [path.name for path in grids] == ["A--B.png"] and grids[0].stat().st_size > 1000
    files = write_outputs(tmp_path / "outputs", report)
    assert len(files) == len(report.rows)
    assert (tmp_path / "outputs" / "A--B--relative-cosine+euclidean.safetensors") in files
    tensors = load_file(str(tmp_path / "outputs" / "A--B--affine.safetensors"))
    assert tensors["images"].shape == (CLASSES * PER_SPLIT["test"], 1, SIDE, SIDE) and len(tensors["ids"]) == len(tensors["images"])
    assert 0.0 <= tensors["images"].min() and tensors["images"].max() <= 1.0


def invoke(*argv: str, cache: Path):
    return CliRunner().invoke(app, [*argv, "--cache-dir", str(cache), "--quiet"])


@pytest.mark.slow
def test_stitch_command_prints_reconstruction_rows_and_writes_the_grid(world, report, tmp_path):
    result = invoke("stitch", "A", "B", "-d", str(world["data"]), *FLAGS, "--json", "--plot", str(tmp_path / "grids"), cache=world["cache"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["heads_trained"] == 0  # the library sweep's heads, read from the cache: the task is in their identity
    assert document["task"] == "reconstruction" and document["settings"]["task"] == "reconstruction"
    assert {"task", "mse", "psnr", "ssim", "pixel_accuracy"} <= set(document["rows"][0]) and document["rows"][0]["accuracy"] is None
    assert (tmp_path / "grids" / "A--B.png").is_file()
    table = invoke("stitch", "A", "B", "-d", str(world["data"]), *FLAGS, cache=world["cache"])
    assert table.exit_code == 0 and "B→B MSE" in table.stdout and "A→B pixel acc %" in table.stdout


@pytest.mark.slow
def test_eval_csv_writes_the_reconstruction_columns(world, report, tmp_path):
    out = tmp_path / "rows.csv"
    result = invoke("eval", "-d", str(world["data"]), "-m", "A,B", *FLAGS, "--metrics", "none", "--csv", str(out), cache=world["cache"])
    assert result.exit_code == 0, result.output
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {"task", "mse", "psnr", "ssim", "pixel_accuracy", "accuracy"} <= set(rows[0])
    assert all(row["task"] == "reconstruction" and row["accuracy"] == "" and float(row["mse"]) >= 0 for row in rows)
    assert len(rows) == 4 * 7  # every ordered pair (A→A, A→B, B→A, B→B) of 3 projection sets, 3 baselines and auto


def test_a_text_dataset_is_refused_in_one_line_before_any_work(world):
    result = invoke("stitch", "A", "B", "-d", str(world["text"]), "--task", "reconstruction", cache=world["cache"])
    assert result.exit_code == 2
    message = result.output.strip()
    assert "\n" not in message and "--task reconstruction" in message and "image dataset" in message


def test_reconstruction_outputs_without_the_task_are_refused(world, tmp_path):
    result = invoke("stitch", "A", "B", "-d", str(world["data"]), "--plot", str(tmp_path / "p"), cache=world["cache"])
    assert result.exit_code == 2 and "--task reconstruction" in result.output


def test_fit_head_trains_a_reconstruction_head(world, tmp_path):
    result = invoke("fit-head", "-m", "A", "-d", str(world["data"]), *FLAGS[:2], *FLAGS[4:], "--json", "--out", str(tmp_path / "head"), cache=world["cache"])
    assert result.exit_code == 0, result.output
    config = json.loads(result.stdout)
    assert config["task"] == "reconstruction" and config["image_shape"] == [1, SIDE, SIDE] and "val_mse" in config["training"]
    from stitchcli.heads import load_head

    assert load_head(tmp_path / "head.safetensors").task == "reconstruction"
    head = str(tmp_path / "head.safetensors")
    stitched = invoke("stitch", "B", "A", "-d", str(world["data"]), "--task", "reconstruction", "--head", head, "--baselines", "none", "--bridge", "none", "--json",
                      cache=world["cache"])
    assert stitched.exit_code == 0, stitched.output
    rows = json.loads(stitched.stdout)["rows"]
    assert [row["method"] for row in rows] == ["relative", "relative"] and rows[0]["mse"] == pytest.approx(rows[1]["mse"], rel=1e-3)
    refused = invoke("stitch", "B", "A", "-d", str(world["data"]), "--head", head, cache=world["cache"])
    assert refused.exit_code == 2 and "is a reconstruction head, not a classification head" in refused.output


def test_the_task_default_batch_size_applies_unless_given():
    from stitchcli.settings import with_task_defaults

    settings = StitchSettings(dataset="d", task="reconstruction")
    assert with_task_defaults(settings).head.batch_size == 64
    assert with_task_defaults(settings, {"batch_size"}).head.batch_size == 256  # given on the command line
    assert with_task_defaults(StitchSettings(dataset="d")).head.batch_size == 256
    with pytest.raises(UsageError, match="--task"):
        StitchSettings(dataset="d", task="segmentation").check()
