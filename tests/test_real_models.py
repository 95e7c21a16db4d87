"""Real pretrained weights through the whole embed pipeline: results only a correct pipeline gives."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from stitchcli.embedding import EmbedOptions, embed, load_embeddings
from stitchcli.store import EmbeddingStore

pytestmark = pytest.mark.real

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


def test_efficientnet_lite0_features_beat_random_weights_on_real_mnist(cache_dir):
    from stitchcli.demo import prepare_demo_assets

    store = EmbeddingStore(cache_dir)
    paths = prepare_demo_assets(store)
    accuracy = {}
    for name, weights in (("lite0", None), ("timm:tf_efficientnet_lite0", "random")):
        embed([name], paths["mnist5k"], ["train", "test"], store=store, weights=weights, options=EmbedOptions(limit=300))
        train = load_embeddings(store, name, paths["mnist5k"], "train", weights=weights, limit=300)
        test = load_embeddings(store, name, paths["mnist5k"], "test", weights=weights, limit=300)
        assert train.embeddings.shape == (300, 1280)
        accuracy[name] = _ridge_probe_accuracy(train, test, 10)
    # measured: pretrained 0.77, the same architecture with random weights 0.60 (300 train / 300 test rows)
    assert accuracy["lite0"] > 0.65
    assert accuracy["lite0"] > accuracy["timm:tf_efficientnet_lite0"] + 0.08, accuracy


def test_demo_command_embeds_the_packaged_assets_then_hits_the_cache(cache_dir):
    import json

    from conftest import run_cli

    first = run_cli("demo", "--limit", "20", "--json", env={"STITCHCLI_CACHE": str(cache_dir)})
    assert first.returncode == 0, first.stderr
    entries = json.loads(first.stdout)["entries"]
    assert [(e["model"], e["dataset"], e["split"]) for e in entries] == [
        (m, d, s) for m, d in (("minilm", "bbc-news"), ("lite0", "mnist5k"), ("lite2", "mnist5k")) for s in ("train", "test")
    ]
    assert {e["dim"] for e in entries} == {384, 1280} and all(e["rows"] == 20 for e in entries)
    assert not any(e["cache_hit"] for e in entries)
    second = run_cli("demo", "--limit", "20", "--json", env={"STITCHCLI_CACHE": str(cache_dir)})
    assert second.returncode == 0, second.stderr
    assert all(e["cache_hit"] for e in json.loads(second.stdout)["entries"])
