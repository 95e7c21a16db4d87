"""What the cache's SHA-256 checksums cost on 200,000 x 768 float32 embeddings (614 MB), each step in a fresh process.

    python benchmarks/checksum_cost.py [--rows 200000] [--dim 768]

Prints one JSON line: write_entry (streamed, hashed, fsynced) against a plain write + fsync of the same bytes,
lookup (header + header digest), store.read (read + data digest) against safetensors' load_file (no check),
and hashlib.sha256 alone on the bytes in memory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

STEP = r"""
import hashlib, json, os, sys, time
import numpy as np
from pathlib import Path
from stitchcli.store import EmbeddingStore, EntryKey
root, step, rows, dim = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
store = EmbeddingStore(root)
key = EntryKey(model={"m": 1}, dataset_id="ds", dataset_fingerprint="fp", split="train")
emb = lambda: np.random.default_rng(0).standard_normal((rows, dim), dtype=np.float32)
if step == "write_entry":
    x = emb(); t = time.perf_counter()
    store.write_entry("m", key, embeddings=x, labels=np.zeros(rows, np.int64), ids=np.arange(rows), metadata={})
elif step == "plain_write":
    x = emb(); t = time.perf_counter()
    with open(root / "plain.bin", "wb") as f:
        f.write(memoryview(x.reshape(-1).view(np.uint8))); f.flush(); os.fsync(f.fileno())
elif step == "lookup":
    t = time.perf_counter(); assert store.lookup("m", key) is not None
elif step == "read":
    t = time.perf_counter(); store.read(store.lookup("m", key))
elif step == "load_file":
    from safetensors.numpy import load_file
    path = store.entry_path("m", key); t = time.perf_counter(); load_file(str(path))
elif step == "sha256":
    x = emb(); t = time.perf_counter(); hashlib.sha256(memoryview(x.reshape(-1).view(np.uint8))).hexdigest()
print(time.perf_counter() - t)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    seconds: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as root:
        for step in ("write_entry", "plain_write", "lookup", "read", "load_file", "sha256"):
            for _ in range(args.repeats):
                out = subprocess.run([sys.executable, "-c", STEP, root, step, str(args.rows), str(args.dim)],
                                     capture_output=True, text=True, check=True).stdout
                seconds.setdefault(step, []).append(round(float(out), 4))
    print(json.dumps({"rows": args.rows, "dim": args.dim, "best_seconds": {k: min(v) for k, v in seconds.items()}, "all": seconds}))


if __name__ == "__main__":
    main()
