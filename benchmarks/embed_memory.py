"""Peak memory of `stitchcli embed` as the dataset grows (the same model, more rows).

Writes CSV text tables of N rows and a random 2-layer BERT of the given width (its own small vocabulary),
then runs `stitchcli embed` on each table in a fresh process under `/usr/bin/time` and reports the peak
resident memory (max RSS) of that process. One JSON line per N.

    python benchmarks/embed_memory.py --rows 2000,20000,200000 --hidden 384
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cache_hit import write_model, write_table  # noqa: E402  (the same synthetic table and model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="2000,20000,200000", help="dataset sizes (comma-separated)")
    parser.add_argument("--hidden", type=int, default=384, help="the model's width (the entry's dimension)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        model = write_model(root / "bert", args.hidden)
        env = {**os.environ, "STITCHCLI_CACHE": str(root / "cache"), "HF_HUB_OFFLINE": "1"}
        for rows in (int(n) for n in args.rows.split(",")):
            data = write_table(root / f"table-{rows}", rows)
            command = ["/usr/bin/time", "-f", "%M", sys.executable, "-m", "stitchcli", "embed", "--model", str(model),
                       "--dataset", str(data), "--split", "train", "--batch-size", "256", "-q"]
            started = time.perf_counter()
            run = subprocess.run(command, capture_output=True, text=True, env=env)
            if run.returncode != 0:
                raise SystemExit(run.stderr)
            peak_kb = int(run.stderr.strip().splitlines()[-1])
            print(json.dumps({"benchmark": "embed_memory", "rows": rows, "dim": args.hidden,
                              "entry_mb": round(rows * args.hidden * 4 / 1e6, 1), "peak_rss_mb": round(peak_kb / 1024, 1),
                              "seconds": round(time.perf_counter() - started, 1), "python": platform.python_version()}), flush=True)


if __name__ == "__main__":
    main()
