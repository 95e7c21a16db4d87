"""Length-sorted text batches (what `stitchcli embed` does) against the plain padded loop, on BBC News.

Both encode the same rows of BBC News (the packaged copy, ../shared/ASSETS.md) with all-MiniLM-L6-v2 (the
packaged copy), mean pooling, the same batch size, truncation length and threads, in the same run:

- plain: transformers tokenizer + model over the rows in their order, each batch padded to its longest text;
- stitchcli: `stitchcli.embedding.embed` into a fresh cache (texts sorted by length within each shard, so
  each batch pads to a similar length; the rows are put back in order before they are written).

Prints one JSON line: rows, seconds of each (wall clock, tokenization included), the speed-up, the largest
absolute difference between the two sets of embeddings and how many tokens each padded.

    python benchmarks/text_batching.py --cache-dir CACHE --rows 500 --max-length 256
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", type=Path, required=True, help="a cache holding (or to hold) the packaged BBC News")
    parser.add_argument("--rows", type=int, default=500, help="rows of the training split (seeded, class-stratified)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=256, help="truncation in tokens (MiniLM's own limit is 256)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoModel, AutoTokenizer

    from stitchcli.assets import packaged_minilm_path
    from stitchcli.data import load_split, resolve_dataset
    from stitchcli.demo import packaged_dataset
    from stitchcli.embedding import EmbedOptions, embed, load_embeddings
    from stitchcli.store import EmbeddingStore

    dataset = packaged_dataset(EmbeddingStore(args.cache_dir), "packaged:bbc-news")
    model_path = str(packaged_minilm_path())
    split = load_split(resolve_dataset(dataset), "train", limit=args.rows, seed=0)
    texts = split.get_inputs(list(range(len(split))))

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModel.from_pretrained(model_path).eval()
    started = time.perf_counter()
    plain, padded_tokens = [], 0
    with torch.inference_mode():
        for b in range(0, len(texts), args.batch_size):
            batch = tokenizer(texts[b : b + args.batch_size], padding="longest", truncation=True,
                              max_length=args.max_length, return_tensors="pt")
            padded_tokens += int(batch["input_ids"].numel())
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            plain.append(((hidden * mask).sum(1) / mask.sum(1)).numpy())
    plain_seconds = time.perf_counter() - started
    plain_embeddings = np.concatenate(plain)

    with tempfile.TemporaryDirectory() as scratch:
        store = EmbeddingStore(Path(scratch))
        options = EmbedOptions(batch_size=args.batch_size, num_workers=0, limit=args.rows, seed=0)
        started = time.perf_counter()
        embed([model_path], dataset, ["train"], store=store, pooling="mean", max_length=args.max_length, options=options)
        sorted_seconds = time.perf_counter() - started
        entry = load_embeddings(store, model_path, dataset, "train", pooling="mean", max_length=args.max_length, limit=args.rows)
        assert np.array_equal(entry.ids, split.ids)
        sorted_embeddings = entry.embeddings
    order = np.argsort([-len(t) for t in texts], kind="stable")  # what a single shard does (the default shard holds 1024 rows)
    sorted_tokens = sum(
        int(tokenizer([texts[i] for i in order[b : b + args.batch_size]], padding="longest", truncation=True,
                      max_length=args.max_length, return_tensors="pt")["input_ids"].numel())
        for b in range(0, len(texts), args.batch_size)
    )
    print(json.dumps({
        "benchmark": "text_batching", "model": "all-MiniLM-L6-v2 (packaged)", "dataset": "BBC News train (packaged)",
        "rows": len(texts), "batch_size": args.batch_size, "max_length": args.max_length, "threads": args.threads,
        "plain_seconds": round(plain_seconds, 2), "sorted_seconds": round(sorted_seconds, 2),
        "speedup": round(plain_seconds / sorted_seconds, 3),
        "max_abs_difference": float(np.abs(plain_embeddings - sorted_embeddings).max()),
        "padded_tokens_plain": padded_tokens, "padded_tokens_sorted": sorted_tokens,
        "torch": torch.__version__, "python": platform.python_version(),
    }))


if __name__ == "__main__":
    main()
