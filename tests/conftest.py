"""Shared fixtures: every test runs offline, with its own cache folder."""

from __future__ import annotations

import os
from pathlib import Path

import json
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from stitchcli.store import EmbeddingStore

# No test may reach a hub: the real code paths must fail fast and clearly, as on an offline machine.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: two workers more than the cores, as memory allows (about 3 GB a worker at the peak of the real tests).

    Many tests spend part of their time waiting on a process they started (a killed run, torchrun's ranks, an
    array job); the extra workers fill the cores meanwhile (measured in docs/PERFORMANCE.md, "The test suite").
    """
    cores = os.cpu_count() or 1
    try:
        memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        memory_gb = 3.0 * (cores + 2)
    return max(1, min(cores + 2, int(memory_gb // 3)))


# Under pytest-xdist every worker (and every process a test starts, which inherits this) gets its share of
# the cores for torch's threads: workers at all the cores' threads each oversubscribe the cores, and torch's
# spinning thread pool then spends time waiting (measured in docs/PERFORMANCE.md, "The test suite"). A value
# the user set is kept; tests that need several threads set them themselves.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Give a fresh cache folder, also set as $STITCHCLI_CACHE."""
    path = tmp_path / "cache"
    monkeypatch.setenv("STITCHCLI_CACHE", str(path))
    return path


def make_image_folder(root: Path, *, per_class: dict[str, int] | None = None, classes: tuple[str, ...] = ("cat", "dog", "frog"), size: int = 24, seed: int = 0) -> Path:
    """Write an image folder (split/class/file.png) whose classes differ visibly, and give its root."""
    import numpy as np
    from PIL import Image

    per_class = per_class or {"train": 6, "test": 3}
    rng = np.random.default_rng(seed)
    for split, count in per_class.items():
        for c, cls in enumerate(classes):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                base = np.zeros((size, size, 3), np.float32)
                base[..., c % 3] = 180.0  # one colour channel per class
                base[:: c + 2, :, :] += 60.0  # and a stripe period per class
                pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return root


def make_text_table(root: Path, *, rows_per_class: int = 4) -> Path:
    """Write a folder with train.csv and test.csv (columns text, label as strings), and give it."""
    import csv

    topics = {
        "sport": ["the team won the match", "a late goal decided the final", "the striker scored twice", "fans cheered the keeper"],
        "tech": ["the new phone has a faster chip", "software update fixes the bug", "the laptop battery lasts longer", "a startup released an app"],
    }
    root.mkdir(parents=True, exist_ok=True)
    for split, start in (("train", 0), ("test", 2)):
        with open(root / f"{split}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            for label, sentences in topics.items():
                for i in range(rows_per_class if split == "train" else 2):
                    writer.writerow([f"{sentences[(start + i) % len(sentences)]} ({i})", label])
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Give a small image folder dataset: train 3x6, test 3x3 images."""
    return make_image_folder(tmp_path / "images")


@pytest.fixture
def text_table(tmp_path: Path) -> Path:
    """Give a small text dataset folder with train.csv and test.csv."""
    return make_text_table(tmp_path / "texts")


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> "subprocess.CompletedProcess[str]":
    """Run `python -m stitchcli ARGS` in a real subprocess and give the finished process."""
    import subprocess
    import sys

    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "stitchcli", *args], capture_output=True, text=True, env=full_env, timeout=timeout
    )


def make_tiny_bert(folder: Path) -> Path:
    """Save a randomly initialised 2-layer, 32-d BERT with its own word-level vocabulary, and give the folder."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = sorted(
        {w for line in ("the team won the match a late goal decided final striker scored twice fans cheered keeper "
                        "new phone has faster chip software update fixes bug laptop battery lasts longer startup released app "
                        "paraphrase sentence one more").split() for w in [line]}
    )
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "(", ")", *[str(i) for i in range(10)], *words]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Give a local folder holding a tiny random BERT and its tokenizer."""
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


REAL_MNIST_ROWS = 300
"""Rows per split of the packaged MNIST that the real tests sharing :func:`real_mnist` embed."""


@pytest.fixture(scope="session")
def real_mnist(tmp_path_factory: pytest.TempPathFactory) -> tuple[EmbeddingStore, str]:
    """Give (a cache, the packaged MNIST folder) shared by the real tests of this run: it holds Lite0's and Lite2's
    embeddings of the 300-row train and test subsets (seed 0), built once under a lock by whichever test (or
    xdist worker: they share the session's temporary folder) asks first, so each real test does not embed the
    same digits with the same models again."""
    from stitchcli.assets import register_packaged_models
    from stitchcli.data.packaged import packaged_dataset
    from stitchcli.embedding import EmbedOptions, embed
    from stitchcli.store import EmbeddingStore, file_lock

    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "real-mnist-cache"
    root.mkdir(exist_ok=True)
    store = EmbeddingStore(root)
    with file_lock(root / "prepare.lock"):
        mnist = packaged_dataset("packaged:mnist5k", root / "assets")
        register_packaged_models(store, ["lite0", "lite2"])
        embed(["lite0", "lite2"], mnist, ["train", "test"], store=store, options=EmbedOptions(limit=REAL_MNIST_ROWS))
    return store, mnist


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Register a tiny open_clip architecture (no pretrained tags) and give its name."""
    import open_clip

    path = tmp_path_factory.mktemp("openclip") / "stitchcli-tiny-clip.json"
    path.write_text(
        json.dumps(
            {
                "embed_dim": 16,
                "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
                "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
            }
        )
    )
    open_clip.add_model_config(path)
    return "stitchcli-tiny-clip"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every `real` test is also `slow`: the fast lane (`pytest -m "not slow"`) loads no pretrained weights."""
    for item in items:
        if item.get_closest_marker("real") is not None:
            item.add_marker(pytest.mark.slow)
