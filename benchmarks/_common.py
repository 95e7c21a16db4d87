"""What the benchmark scripts share (run as `python benchmarks/NAME.py`, so this folder is on sys.path)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def emit(record: dict[str, Any], output: Path | None) -> None:
    """Print the run's one JSON line on stdout and, with --output, write it to that file too."""
    line = json.dumps(record)
    print(line)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(line + "\n")
