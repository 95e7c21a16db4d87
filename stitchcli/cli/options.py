"""Options shared by several subcommands, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

CacheDir = Annotated[
    Optional[Path],
    typer.Option(
        "--cache-dir",
        help="Cache folder (default: $STITCHCLI_CACHE, else $XDG_CACHE_HOME/stitchcli, else ~/.cache/stitchcli).",
        show_default=False,
    ),
]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
Precision = Annotated[
    Optional[str],
    typer.Option("--precision", help="fp32, bf16 or fp16 (autocast; the cache stores float32). [default: fp32, or a saved name's own]", show_default=False),
]
BatchSize = Annotated[
    Optional[int], typer.Option("--batch-size", help="Rows per batch (default: 64 on a GPU, 32 on the CPU).", show_default=False)
]
Seed = Annotated[int, typer.Option("--seed", help="Seed for --limit subsets and --weights random.")]
Json = Annotated[bool, typer.Option("--json", help="Print exactly one JSON document on stdout.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or log lines on stderr (warnings still).")]
