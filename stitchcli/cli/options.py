"""Options shared by several subcommands, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from stitchcli import defaults

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
TrustRemoteCode = Annotated[
    bool,
    typer.Option(
        "--trust-remote-code",
        help="Let a transformers model run the Python code it ships (auto_map in its config.json). Off, such a model "
        "is refused: read its code first. Not part of any cache key.",
    ),
]

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

# Stitching: the dataset, the anchors, the product space and the heads (fit-head, stitch, eval).
Dataset = Annotated[
    str,
    typer.Option(
        "--dataset",
        "-d",
        help="Dataset, as for embed: an alias, a hub id, a save_to_disk folder, an image folder or a folder of table files.",
        show_default=False,
    ),
]
EvalSplit = Annotated[str, typer.Option("--split", "-s", help="Evaluation split (never used for training or model selection).")]
TrainSplit = Annotated[str, typer.Option("--train-split", help="Split heads are trained on and anchors drawn from.")]
Limit = Annotated[
    Optional[int],
    typer.Option(help="Use the seeded class-stratified subset of N rows of each split (as `embed --limit N`).", show_default=False),
]
EmbedSeed = Annotated[int, typer.Option("--embed-seed", help="embed's --seed: picks the --limit subset and seeds --weights random.")]
Anchors = Annotated[
    Optional[str],
    typer.Option("--anchors", help="Anchor manifest: a name saved by `stitchcli anchor`, or a manifest file. (default: draw --num-anchors)", show_default=False),
]
NumAnchors = Annotated[
    Optional[int],
    typer.Option("--num-anchors", "-k", help="Anchors to draw from the training split. (default: 1280, or every training row when fewer)", show_default=False),
]
AnchorStrategy = Annotated[str, typer.Option("--anchor-strategy", help="uniform, class-balanced, fps or kmeans (fps/kmeans need --anchor-model).")]
AnchorSeed = Annotated[int, typer.Option("--anchor-seed", help="Seed of the anchor draw.")]
AnchorModel = Annotated[
    Optional[str], typer.Option("--anchor-model", help="fps/kmeans: which of the models' embeddings choose the anchors.", show_default=False)
]
Projection = Annotated[
    Optional[str],
    typer.Option("--projection", "-p", help=f"Comma-separated projections, or all: cosine, euclidean, l1, linf. (default: {','.join(defaults.PROJECTIONS)})", show_default=False),
]
Transform = Annotated[
    Optional[str],
    typer.Option("--transform", help=f"Absolute transform fitted on each model's anchors: none, center, standardize, l2. (default: {defaults.TRANSFORM})", show_default=False),
]
Epochs = Annotated[int, typer.Option("--epochs", help="Most training epochs (early stopping on the validation part).")]
Lr = Annotated[float, typer.Option("--lr", help="Adam learning rate.")]
HeadBatchSize = Annotated[int, typer.Option("--batch-size", help="Head training batch size.")]
Hidden = Annotated[int, typer.Option("--hidden", help="Hidden layer size of the head.")]
Dropout = Annotated[float, typer.Option("--dropout", help="Dropout of the head.")]
Patience = Annotated[int, typer.Option("--patience", help="Epochs without a better validation accuracy before stopping.")]
WeightDecay = Annotated[float, typer.Option("--weight-decay", help="Adam weight decay.")]
ValFraction = Annotated[float, typer.Option("--val-fraction", help="Class-stratified part of the training split held out for early stopping.")]
Seeds = Annotated[str, typer.Option("--seeds", help="Comma-separated head seeds; results are mean ± std over them.")]
Baselines = Annotated[
    Optional[str],
    typer.Option(
        "--baselines",
        help=f"Baselines beside the relative rows: absolute, translation (orthogonal), affine (ridge), or none. (default: {','.join(defaults.BASELINES)})",
        show_default=False,
    ),
]
Ridge = Annotated[
    Optional[float],
    typer.Option("--ridge", help=f"Ridge strength of the affine baseline, relative to the anchors' variance. (default: {defaults.RIDGE:g})", show_default=False),
]
EmbedBatchSize = Annotated[
    Optional[int], typer.Option("--embed-batch-size", help="Batch size when missing embeddings are computed (default: embed's).", show_default=False)
]
