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

# How a model was (or is to be) embedded: the same options name the same cache entries in every command.
Weights = Annotated[
    Optional[str],
    typer.Option(help="Local weights file for a timm architecture (safetensors or state dict), or 'random' for a seeded random init.", show_default=False),
]
Pooling = Annotated[
    Optional[str], typer.Option(help="Text pooling: cls or mean (default: the model's sentence-transformers config, else cls).", show_default=False)
]
MaxLength = Annotated[Optional[int], typer.Option(help="Text truncation in tokens (default: the tokenizer's, at most 512).", show_default=False)]
Revision = Annotated[Optional[str], typer.Option(help="Hub revision of the model.", show_default=False)]
DatasetRevision = Annotated[Optional[str], typer.Option(help="Hub revision of the dataset.", show_default=False)]
InputColumn = Annotated[Optional[str], typer.Option(help="Input column(s); comma-separated text columns are joined.", show_default=False)]
LabelColumn = Annotated[Optional[str], typer.Option(help="Label column.", show_default=False)]
