"""Length-sorted text batches (what `stitchcli embed` does) against the plain padded loop, on BBC News.

Both encode the same rows of BBC News (the packaged copy, `packaged:bbc-news`) with all-MiniLM-L6-v2 (the
packaged copy), mean pooling, the same batch size, truncation length and threads, in the same run:

- plain: transformers tokenizer + model over the rows in their order, each batch padded to its longest text;
- stitchcli: `stitchcli.embedding.embed` into a fresh cache (texts sorted by length within each shard, so
  each batch pads to a similar length; the rows are put back in order before they are written).

Prints one JSON line: rows, seconds of each (tokenization and model; stitchcli's from the entry's own timing
of its encode loop, the model's loading apart), the speed-up, the largest absolute difference between the two
sets of embeddings and how many tokens each padded.

``--texts paragraphs`` embeds the paragraphs of the same articles instead (blank-line separated: headlines,
one-sentence paragraphs and long ones), a corpus whose lengths vary under the truncation limit, written as a
local CSV dataset (text, label) for `stitchcli embed`.

    python benchmarks/text_batching.py --cache-dir CACHE --rows 500 --max-length 256
    python benchmarks/text_batching.py --cache-dir CACHE --rows 2000 --texts paragraphs
"""

from __future__ import annotations

from stitchcli.models import ModelRef
import argparse
import csv
import json
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import processor  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", type=Path, required=True, help="a cache holding (or to hold) the packaged BBC News")
    parser.add_argument("--rows", type=int, default=500, help="rows of the training split (seeded, class-stratified)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=256, help="truncation in tokens (MiniLM's own limit is 256)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--texts", choices=("articles", "paragraphs"), default="articles",
                        help="whole articles, or the paragraphs of the training articles (the first --rows of them)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoModel, AutoTokenizer

    from stitchcli.assets import packaged_minilm_path
    from stitchcli.data import load_split, resolve_dataset
    from stitchcli.data.packaged import packaged_dataset
    from stitchcli.embedding import EmbedOptions, embed, load_embeddings
    from stitchcli.store import EmbeddingStore

    scratch = Path(tempfile.mkdtemp(prefix="text-batching-"))
    dataset = packaged_dataset("packaged:bbc-news", EmbeddingStore(args.cache_dir).root / "assets")
    limit: int | None = args.rows
    if args.texts == "paragraphs":
        dataset, limit = paragraphs_dataset(dataset, scratch / "paragraphs", args.rows), None
    model_path = str(packaged_minilm_path())
    split = load_split(resolve_dataset(dataset), "train", limit=limit, seed=0)
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

    store = EmbeddingStore(scratch / "cache")
    options = EmbedOptions(batch_size=args.batch_size, num_workers=0, limit=limit, seed=0)
    started = time.perf_counter()
    embed([ModelRef(name, {"pooling": "mean", "max_length": args.max_length}) for name in [model_path]], dataset, ["train"], store=store, options=options)
    sorted_wall = time.perf_counter() - started
    entry = load_embeddings(store, ModelRef(model_path, {"pooling": "mean", "max_length": args.max_length}), dataset, "train", limit=limit)
    assert np.array_equal(entry.ids, split.ids)
    sorted_embeddings = entry.embeddings
    sorted_seconds = float(entry.metadata["seconds"])  # the encode loop: tokenization and model, as the plain loop's
    shutil.rmtree(scratch)
    lengths = np.array([len(t) for t in texts])
    order = np.argsort(-lengths, kind="stable")  # what a single shard does (the default shard holds 1024 rows)
    sorted_tokens = sum(
        int(tokenizer([texts[i] for i in order[b : b + args.batch_size]], padding="longest", truncation=True,
                      max_length=args.max_length, return_tensors="pt")["input_ids"].numel())
        for b in range(0, len(texts), args.batch_size)
    )
    print(json.dumps({
        "benchmark": "text_batching", "model": "all-MiniLM-L6-v2 (packaged)",
        "dataset": "BBC News train (packaged)" + (", paragraphs" if args.texts == "paragraphs" else ""),
        "rows": len(texts), "batch_size": args.batch_size, "max_length": args.max_length, "threads": args.threads,
        "plain_seconds": round(plain_seconds, 2), "sorted_seconds": round(sorted_seconds, 2),
        "sorted_wall_seconds_with_model_loading": round(sorted_wall, 2),
        "speedup": round(plain_seconds / sorted_seconds, 3),
        "max_abs_difference": float(np.abs(plain_embeddings - sorted_embeddings).max()),
        "padded_tokens_plain": padded_tokens, "padded_tokens_sorted": sorted_tokens,
        "characters_min_median_max": [int(np.min(lengths)), int(np.median(lengths)), int(np.max(lengths))],
        "torch": torch.__version__, "python": platform.python_version(), "processor": processor(),
    }))


def paragraphs_dataset(articles: str, folder: Path, rows: int) -> str:
    """Write the first ``rows`` paragraphs of the training articles (in their order) as folder/train.csv; give the folder."""
    from stitchcli.data import load_split, resolve_dataset

    split = load_split(resolve_dataset(articles), "train")
    texts = split.get_inputs(list(range(len(split))))
    folder.mkdir(parents=True)
    written = 0
    with open(folder / "train.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for text, label in zip(texts, split.labels):
            for paragraph in (p.strip() for p in re.split(r"\n\s*\n", text)):
                if paragraph and written < rows:
                    writer.writerow([paragraph, split.class_names[int(label)]])
                    written += 1
    return str(folder)


if __name__ == "__main__":
    main()
