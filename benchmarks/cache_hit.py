"""What a cache hit costs as the dataset grows: `stitchcli embed` run again on an entry that is already cached.

Writes a text table of N rows (train.csv: a short text and one of 10 labels per row) and a tiny random
2-layer, 32-d BERT with its own vocabulary, embeds the table once (real work, batch 512), then times the
second `stitchcli embed` of the same model and dataset (a cache hit: nothing is encoded) as a whole process,
several times, and the library call `stitchcli.embedding.embed` in-process. One JSON line per N.

    python benchmarks/cache_hit.py --rows 1000,100000,1000000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write_table(folder: Path, rows: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta"]
    with open(folder / "train.csv", "w") as f:
        f.write("text,label\n")
        for i in range(rows):
            f.write(f"{words[i % 8]} {words[(i // 8) % 8]} {words[(i // 64) % 8]},c{i % 10}\n")
    return folder


def write_model(folder: Path, hidden: int = 32) -> Path:
    """Save a random 2-layer BERT of this width with a vocabulary of the table's words, and give the folder."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=max(1, hidden // 64),
                        intermediate_size=2 * hidden, max_position_embeddings=16)
    BertModel(config).save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1000,100000,1000000", help="dataset sizes (comma-separated)")
    parser.add_argument("--repeats", type=int, default=5, help="timed cache hits per size")
    args = parser.parse_args()
    from stitchcli.embedding import EmbedOptions, embed
    from stitchcli.store import EmbeddingStore

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        model = write_model(root / "tiny-bert")
        env = {**os.environ, "STITCHCLI_CACHE": str(root / "cache"), "HF_HUB_OFFLINE": "1"}
        for rows in (int(n) for n in args.rows.split(",")):
            data = write_table(root / f"table-{rows}", rows)
            command = [sys.executable, "-m", "stitchcli", "embed", "--model", str(model), "--dataset", str(data),
                       "--split", "train", "--batch-size", "512", "-q", "--json"]
            started = time.perf_counter()
            first = subprocess.run(command, capture_output=True, text=True, env=env)
            if first.returncode != 0:
                raise SystemExit(first.stderr)
            embed_seconds = time.perf_counter() - started
            hits = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                again = subprocess.run(command, capture_output=True, text=True, env=env)
                hits.append(time.perf_counter() - started)
                assert again.returncode == 0 and json.loads(again.stdout)["entries"][0]["cache_hit"], again.stdout + again.stderr
            store = EmbeddingStore(root / "cache")
            started = time.perf_counter()
            result = embed([str(model)], str(data), ["train"], store=store, options=EmbedOptions(batch_size=512))[0]
            library_seconds = time.perf_counter() - started
            assert result.cache_hit
            print(json.dumps({
                "benchmark": "cache_hit", "rows": rows, "dim": 32, "first_embed_seconds": round(embed_seconds, 1),
                "cli_hit_seconds_median": round(statistics.median(hits), 3), "cli_hit_seconds_max": round(max(hits), 3),
                "library_hit_seconds": round(library_seconds, 3), "python": platform.python_version(),
            }), flush=True)


if __name__ == "__main__":
    main()
