"""What the benchmark scripts share (run as `python benchmarks/NAME.py`, so this folder is on sys.path)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def emit(record: dict[str, Any], output: Path | None) -> None:
    """Print the run's one JSON line on stdout and, with --output, write it to that file too."""
    line = json.dumps(record)
    print(line)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(line + "\n")


def load() -> list[float]:
    """Give the 1, 5 and 15 minute load averages, recorded beside timings taken on a shared machine."""
    return [round(value, 2) for value in os.getloadavg()]


def processor() -> str:
    """Give the CPU's model name (from /proc/cpuinfo on Linux; the machines these benchmarks run on change)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            name = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "")
    except OSError:
        name = ""
    return name or platform.processor() or platform.machine()


def run_child(script: str, job: dict[str, Any]) -> dict[str, Any]:
    """Run ``python SCRIPT --child JOB`` in a fresh process (its imports and peak memory are its own) and give
    the JSON record on the last line of its stdout, with its wall time and the load averages around it. The
    record is echoed on stderr as progress; a failing child ends the benchmark with the tail of its stderr."""
    load_before = load()
    started = time.perf_counter()
    result = subprocess.run([sys.executable, script, "--child", json.dumps(job)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"child failed ({json.dumps(job)[:300]}):\n{result.stderr[-4000:]}")
    record = json.loads(result.stdout.strip().splitlines()[-1])
    record["wall_s"] = round(time.perf_counter() - started, 1)
    record["load_before"], record["load_after"] = load_before, load()
    print(json.dumps(record), file=sys.stderr, flush=True)
    return record
