"""Issue 18, acceptance 1, on every row: the packaged BBC News articles written by Python's csv module (paragraph
breaks kept) against ``packaged:bbc-news``, both embedded with MiniLM (the demo's ``minilm``: 128 tokens).

    python scripts/bbc_csv_check.py [CACHE_DIR]

Prints one JSON document: per split, the rows and whether ids, labels and class names are equal, and the largest
absolute difference between the two entries' embeddings. Needs the demo extra; about 4,500 MiniLM rows in all.
"""

from __future__ import annotations

import csv
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from stitchcli.assets import register_packaged_models
from stitchcli.data.packaged import packaged_dataset
from stitchcli.embedding import EmbedOptions, embed, load_embeddings
from stitchcli.store import EmbeddingStore


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="bbc-csv-check-"))
    store = EmbeddingStore(root / "cache")
    packaged = Path(packaged_dataset("packaged:bbc-news", store.root / "assets"))
    as_csv = root / "bbc-csv"
    as_csv.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        records = [json.loads(line) for line in (packaged / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
        with open(as_csv / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows((r["text"], r["label"]) for r in records)
    register_packaged_models(store, ["minilm"])
    report = {}
    for split in ("train", "test"):
        want, got = (
            (embed(["minilm"], str(folder), [split], store=store, options=EmbedOptions(num_workers=0)),
             load_embeddings(store, "minilm", str(folder), split))[1]
            for folder in (packaged, as_csv)
        )
        report[split] = {
            "rows": int(want.rows),
            "ids_equal": bool(np.array_equal(want.ids, got.ids)),
            "labels_equal": bool(np.array_equal(want.labels, got.labels)),
            "class_names_equal": want.metadata["class_names"] == got.metadata["class_names"],
            "max_abs_diff": float(np.abs(want.embeddings - got.embeddings).max()),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
