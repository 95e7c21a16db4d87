"""Options shared by several subcommands, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from stitchcli.cli.settings_options import declared_option

CacheDir = Annotated[
    Optional[Path],
    typer.Option(
        "--cache-dir",
        help="Cache folder (default: $STITCHCLI_CACHE, else $XDG_CACHE_HOME/stitchcli, else ~/.cache/stitchcli).",
        show_default=False,
    ),
]
Precision = Annotated[
    Optional[str],
    typer.Option("--precision", help="fp32, bf16 or fp16 (GPU). bf16 on the CPU casts a transformer's weights once and uses autocast for batch-norm models; GPUs use autocast; the cache stores float32 either way. (default: fp32, or a saved name's own)", show_default=False),
]
BatchSize = Annotated[
    Optional[int],
    typer.Option(
        "--batch-size",
        help="Rows per batch; a batch that runs out of memory is encoded in smaller slices, and later batches use the size that fitted. "
        "(default: 256 on a GPU, 32 on the CPU)",
        show_default=False,
    ),
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
    Optional[str], typer.Option(help="Text pooling: cls, mean or last (default: the model's sentence-transformers config, else what its config calls for: last for a causal model, mean for T5, else cls).", show_default=False)
]
MaxLength = Annotated[Optional[int], typer.Option(help="Text truncation in tokens (default: the tokenizer's, at most 512).", show_default=False)]
Revision = Annotated[Optional[str], typer.Option(help="Hub revision of the model.", show_default=False)]

# The dataset every stitching command names (not a setting: the subject of the command).
Dataset = Annotated[
    str,
    typer.Option(
        "--dataset",
        "-d",
        help="Dataset, as for embed: an alias, a hub id, a save_to_disk folder, an image folder, a folder of table files, "
        "or packaged:bbc-news / packaged:mnist5k.",
        show_default=False,
    ),
]

# Declared in stitchcli.settings (the stitching commands take them from there too).
Device = declared_option("device")
TrustRemoteCode = declared_option("trust_remote_code")
EmbedBatchSize = declared_option("embed_batch_size")
InputColumn = declared_option("input_column")
LabelColumn = declared_option("label_column")
DatasetRevision = declared_option("dataset_revision")
# The data, anchors and transform of `similarity` (declared settings of the stitching commands).
Split = declared_option("split", "Split whose rows are compared (any split: nothing is trained).")
TrainSplit = declared_option("train_split", "Split the anchors of --projection are drawn from.")
Limit = declared_option("limit")
EmbedSeed = declared_option("embed_seed")
Anchors = declared_option("anchors")
NumAnchors = declared_option("num_anchors")
AnchorStrategy = declared_option("anchor_strategy")
AnchorSeed = declared_option("anchor_seed")
AnchorModel = declared_option("anchor_model")
Transform = declared_option("transform")
