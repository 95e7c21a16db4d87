"""Real pretrained weights through the whole embed pipeline: results only a correct pipeline gives."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import REAL_MNIST_ROWS
from stitchcli.models import ModelRef
from stitchcli.embedding import EmbedOptions, embed, load_embeddings
from stitchcli.store import EmbeddingStore

pytestmark = [pytest.mark.real, pytest.mark.slow]

PARAPHRASES = [
    ("A man is playing a guitar on stage.", "Someone performs a song on the guitar in front of a crowd."),
    ("The stock market fell sharply today.", "Share prices dropped steeply on the exchange this afternoon."),
    ("The cat is sleeping on the sofa.", "A kitten naps on the couch."),
    ("Heavy rain flooded the streets of the city.", "The town's roads were under water after a downpour."),
    ("The government announced a new tax on fuel.", "Ministers unveiled a levy on petrol and diesel."),
]


def _ridge_probe_accuracy(train, test, num_classes: int) -> float:
    """Give the test accuracy of a closed-form ridge classifier on standardised features."""
    mu, sd = train.embeddings.mean(0), train.embeddings.std(0) + 1e-6
    xtr, xte = (train.embeddings - mu) / sd, (test.embeddings - mu) / sd
    targets = np.eye(num_classes)[train.labels]
    w = np.linalg.solve(xtr.T @ xtr + 10.0 * np.eye(xtr.shape[1]), xtr.T @ targets)
    return float(((xte @ w).argmax(1) == test.labels).mean())


def test_minilm_puts_paraphrases_closer_than_unrelated_sentences(cache_dir, tmp_path):
    from stitchcli.assets import packaged_minilm_path

    folder = tmp_path / "pairs"
    folder.mkdir()
    with open(folder / "test.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for i, (a, b) in enumerate(PARAPHRASES):
            writer.writerow([a, f"pair{i}"])
            writer.writerow([b, f"pair{i}"])
    store = EmbeddingStore(cache_dir)
    model = str(packaged_minilm_path())
    result = embed([model], str(folder), ["test"], store=store, options=EmbedOptions(num_workers=0))[0]
    assert result.dim == 384 and result.rows == 10
    entry = load_embeddings(store, model, str(folder), "test")
    assert entry.metadata["pooling"] == "mean"  # read from the model's sentence-transformers config
    e = entry.embeddings / np.linalg.norm(entry.embeddings, axis=1, keepdims=True)
    first, second = e[0::2], e[1::2]
    sims = first @ second.T
    for i in range(len(PARAPHRASES)):
        others = np.delete(sims[i], i)
        assert sims[i, i] > others.max() + 0.1, (i, sims[i])


@pytest.mark.real
@pytest.mark.slow
def test_a_packaged_dataset_is_named_as_given_and_read_by_that_name(real_mnist):
    """The packaged digits are written to a folder of the cache, which keys their entries; messages, the embed table
    and JSON show `packaged:mnist5k` as the user typed it (they showed the folder), and the library reads the entries
    by that name too."""
    from conftest import run_cli

    store, mnist = real_mnist
    by_path = load_embeddings(store, "lite0", mnist, "test", limit=REAL_MNIST_ROWS)
    by_name = load_embeddings(store, "lite0", "packaged:mnist5k", "test", limit=REAL_MNIST_ROWS)
    assert by_name.path == by_path.path
    result = run_cli("embed", "--model", "lite0", "-d", "packaged:mnist5k", "--split", "test", "--limit", str(REAL_MNIST_ROWS),
                     "--json", env={"STITCHCLI_CACHE": str(store.root)})
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)["entries"]
    assert (row["dataset"], row["cache_hit"]) == ("packaged:mnist5k", True)
    table = run_cli("embed", "--model", "lite0", "-d", "packaged:mnist5k", "--split", "test", "--limit", str(REAL_MNIST_ROWS),
                    env={"STITCHCLI_CACHE": str(store.root), "COLUMNS": "300"})
    assert "packaged:mnist5k" in table.stdout and str(mnist) not in table.stdout + table.stderr, table.stdout


def test_efficientnet_lite0_features_beat_random_weights_on_real_mnist(real_mnist):
    store, mnist = real_mnist  # the packaged Lite0 has embedded these 300 + 300 digits already
    accuracy = {}
    for name, weights in (("lite0", None), ("timm:tf_efficientnet_lite0", "random")):
        embed([ModelRef(name, {"weights": weights})], mnist, ["train", "test"], store=store, options=EmbedOptions(limit=REAL_MNIST_ROWS))
        train = load_embeddings(store, ModelRef(name, {"weights": weights}), mnist, "train", limit=REAL_MNIST_ROWS)
        test = load_embeddings(store, ModelRef(name, {"weights": weights}), mnist, "test", limit=REAL_MNIST_ROWS)
        assert train.embeddings.shape == (REAL_MNIST_ROWS, 1280)
        accuracy[name] = _ridge_probe_accuracy(train, test, 10)
    # measured: pretrained 0.77, the same architecture with random weights 0.60 (300 train / 300 test rows)
    assert accuracy["lite0"] > 0.65
    assert accuracy["lite0"] > accuracy["timm:tf_efficientnet_lite0"] + 0.08, accuracy


def test_demo_stitches_both_real_pairs_offline_then_reads_the_cache(cache_dir):
    """A reduced demo (30 rows per split): MiniLM <-> MPNet on BBC News, Lite0 <-> Lite2 on MNIST."""
    import json
    import time

    from conftest import run_cli

    first = run_cli("demo", "--limit", "30", "--json", env={"STITCHCLI_CACHE": str(cache_dir)}, timeout=1200)
    assert first.returncode == 0, first.stderr
    document = json.loads(first.stdout)
    assert document["datasets"] == ["packaged:bbc-news", "packaged:mnist5k"]
    pairs = {(row["dataset"], row["encoder"], row["decoder"]) for row in document["rows"]}
    assert pairs == {
        (d, e, c) for d, models in (("packaged:bbc-news", ("minilm", "mpnet")), ("packaged:mnist5k", ("lite0", "lite2")))
        for e in models for c in models
    }
    dims = {model["name"]: model["dim"] for run in document["runs"] for model in run["models"]}
    assert dims == {"minilm": 384, "mpnet": 768, "lite0": 1280, "lite2": 1280}
    relative = [row for row in document["rows"] if row["method"] == "relative"]
    assert all(0.0 <= row["accuracy"] <= 1.0 for row in relative)
    # real pretrained encoders on real data: the non-stitched product head is well above chance (5 and 10 classes)
    product = {(row["dataset"], row["encoder"]): row["accuracy"] for row in relative
               if not row["stitched"] and row["projections"] == ["cosine", "euclidean"]}
    assert product[("packaged:bbc-news", "mpnet")] > 0.5 and product[("packaged:mnist5k", "lite2")] > 0.3
    assert {s["projection"] for s in document["similarity"]} == {"cosine", "euclidean", "absolute"}
    assert {row["method"] for row in document["rows"]} == {"relative", "absolute", "translation", "affine", "auto"}
    from stitchcli.stitching.bridges import AUTO_CANDIDATES

    assert all(row["chosen"] in AUTO_CANDIDATES for row in document["rows"] if row["method"] == "auto" and row["stitched"])
    assert sum(run["heads_trained"] for run in document["runs"]) > 0

    started = time.perf_counter()
    second = run_cli("demo", "--limit", "30", "--json", env={"STITCHCLI_CACHE": str(cache_dir)})
    assert second.returncode == 0, second.stderr
    again = json.loads(second.stdout)
    assert sum(run["heads_trained"] for run in again["runs"]) == 0
    assert sum(run["bridges_fitted"] for run in again["runs"]) == 0 and sum(run["bridges_cached"] for run in again["runs"]) > 0
    assert [row["accuracy"] for row in again["rows"]] == [row["accuracy"] for row in document["rows"]]
    assert time.perf_counter() - started < 120  # seconds, not minutes: nothing is embedded or trained again


def test_the_demo_recipe_in_the_package_is_the_one_in_recipes():
    from stitchcli.demo import demo_recipe_path

    root = Path(__file__).resolve().parent.parent
    assert demo_recipe_path().read_text() == (root / "recipes" / "offline-demo.toml").read_text()
