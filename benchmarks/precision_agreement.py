"""What reduced precision costs in accuracy: the cosine of each row's embedding to its fp32 embedding.

Runs `stitchcli embed` for each (model, dataset) pair in fp32 and in each other precision on the same
class-stratified subset (--limit), in a scratch cache unless --cache-dir is given, and reports the mean and
minimum cosine per row, with each run's rows/s. One JSON line. The defaults are the packaged real weights and
data (offline): EfficientNet-Lite0 on MNIST, MiniLM on BBC News.

    python benchmarks/precision_agreement.py --limit 256 --precisions bf16
    python benchmarks/precision_agreement.py --pair vit_small_patch16_224=./images --weights random
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def embed(model: str, dataset: str, precision: str, args: argparse.Namespace, cache: str) -> dict:
    command = [sys.executable, "-m", "stitchcli", "embed", "-m", model, "-d", dataset, "--split", args.split,
               "--limit", str(args.limit), "--precision", precision, "--cache-dir", cache, "--json", "-q"]
    if args.weights:
        command += ["--weights", args.weights]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode:
        raise SystemExit(f"{model} {precision}: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout)["entries"][0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", action="append", help="MODEL=DATASET (repeatable; default lite0 on packaged:mnist5k, minilm on packaged:bbc-news)")
    parser.add_argument("--precisions", default="bf16", help="compared with fp32 (comma-separated)")
    parser.add_argument("--limit", type=int, default=256, help="rows (a class-stratified subset)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--weights", default=None, help="--weights for every model (e.g. random)")
    parser.add_argument("--cache-dir", default=None, help="reuse this cache (fp32 entries already there are not recomputed)")
    args = parser.parse_args()
    from safetensors.numpy import load_file

    pairs = [p.split("=", 1) for p in (args.pair or ["lite0=packaged:mnist5k", "minilm=packaged:bbc-news"])]
    result: dict[str, object] = {"benchmark": "precision_agreement", "limit": args.limit, "split": args.split,
                                 "python": platform.python_version(), "cpus": os.cpu_count(), "pairs": {}}
    with tempfile.TemporaryDirectory() as scratch:
        cache = args.cache_dir or scratch
        for model, dataset in pairs:
            reference = embed(model, dataset, "fp32", args, cache)
            a = load_file(reference["path"])["embeddings"].astype(np.float64)
            record = {"fp32_rows_per_s": reference["rows_per_s"], "rows": reference["rows"]}
            for precision in args.precisions.split(","):
                entry = embed(model, dataset, precision, args, cache)
                b = load_file(entry["path"])["embeddings"].astype(np.float64)
                cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
                record[precision] = {"cosine_mean": round(float(cos.mean()), 6), "cosine_min": round(float(cos.min()), 6),
                                     "rows_per_s": entry["rows_per_s"], "cache_hit": entry["cache_hit"]}
            result["pairs"][f"{model}={dataset}"] = record  # type: ignore[index]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
