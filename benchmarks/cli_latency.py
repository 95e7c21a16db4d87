"""Wall time of `stitchcli --help`, `stitchcli embed --help` and a cache-hit `embed`, as whole processes.

Prints one JSON line: median and max seconds over --repeat runs of each command. The cache hit embeds a
small generated image folder with timm's tiny random `test_vit` once, then times the same command again.

    python benchmarks/cli_latency.py --repeat 5
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


def _time(cmd: list[str], env: dict[str, str], repeat: int) -> dict[str, float]:
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        runs.append(time.perf_counter() - start)
    return {"median_s": round(statistics.median(runs), 3), "max_s": round(max(runs), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="runs of each command (default 5)")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import make_image_folder

    cli = [sys.executable, "-m", "stitchcli"]
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "STITCHCLI_CACHE": str(Path(tmp) / "cache"), "HF_HUB_OFFLINE": "1"}
        data = make_image_folder(Path(tmp) / "images")
        embed = [*cli, "embed", "-m", "test_vit", "--weights", "random", "-d", str(data), "--json"]
        subprocess.run(embed, env=env, check=True, capture_output=True)  # fill the cache
        result = {
            "benchmark": "cli_latency",
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "help": _time([*cli, "--help"], env, args.repeat),
            "embed_help": _time([*cli, "embed", "--help"], env, args.repeat),
            "embed_cache_hit": _time(embed, env, args.repeat),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
