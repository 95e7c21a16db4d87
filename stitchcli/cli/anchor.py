"""`stitchcli anchor`: choose anchor rows from a training split and save the anchor manifest."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from stitchcli.cli import options as opt

if TYPE_CHECKING:
    from stitchcli.anchors import AnchorManifest


def anchor_command(
    dataset: opt.Dataset,
    split: Annotated[
        str, typer.Option("--split", "-s", help="Training split to draw from (names like test, validation, val, eval, dev are refused).")
    ] = "train",
    num: Annotated[int, typer.Option("--num", "-k", help="Number of anchors.")] = 1280,
    strategy: Annotated[
        str,
        typer.Option(
            "--strategy",
            help="uniform (seeded draw), class-balanced (equal per class), fps (farthest points) or kmeans "
            "(rows nearest k-means centroids); fps and kmeans read --model's cached embeddings.",
        ),
    ] = "uniform",
    model: Annotated[
        Optional[str],
        typer.Option("--model", "-m", help="fps/kmeans: the model whose cached embeddings of the split choose the anchors.", show_default=False),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the anchor choice.")] = 0,
    limit: Annotated[
        Optional[int],
        typer.Option(help="Draw from the seeded class-stratified (uniform without labels) subset of N rows that `embed --limit N` encodes.", show_default=False),
    ] = None,
    embed_seed: Annotated[
        int, typer.Option("--embed-seed", help="The --seed given to embed: it picks the --limit subset and seeds --weights random.")
    ] = 0,
    name: Annotated[
        Optional[str],
        typer.Option(
            "--name",
            help="Save under this name (default: DATASET-SPLIT-STRATEGY-NUM-sSEED, plus limit and model).",
            show_default=False,
        ),
    ] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Also write the manifest to this file.", show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace anchors saved under the same name with another choice.")] = False,
    # fps/kmeans: the options the model was embedded with, so its cache entry is found.
    weights: opt.Weights = None,
    pooling: opt.Pooling = None,
    max_length: opt.MaxLength = None,
    precision: opt.Precision = None,
    revision: opt.Revision = None,
    dataset_revision: opt.DatasetRevision = None,
    input_column: opt.InputColumn = None,
    label_column: opt.LabelColumn = None,
    cache_dir: opt.CacheDir = None,
    json_output: opt.Json = False,
    quiet: opt.Quiet = False,
) -> None:
    """Choose anchor rows from the training split and save the manifest in the cache (and --out)."""
    from stitchcli.anchors import choose_anchors, save_anchor_manifest
    from stitchcli.cli.output import check_output_path, progress_and_store
    from stitchcli.cli.settings_options import given_dataset_options
    from stitchcli.errors import UsageError
    from stitchcli.models import ModelRef

    check_output_path(out, "--out")
    given = {"weights": weights, "pooling": pooling, "max_length": max_length, "precision": precision, "revision": revision}
    model_options = {key: value for key, value in given.items() if value is not None}
    if model is None and model_options:
        flags = ", ".join(f"--{key.replace('_', '-')}" for key in model_options)
        raise UsageError(f"{flags} describe how --model was embedded (fps and kmeans): pass --model M with them, or drop them")
    progress, store, reporter = progress_and_store(cache_dir, quiet)
    manifest = choose_anchors(
        store,
        dataset,
        split=split,
        num=num,
        strategy=strategy,
        seed=seed,
        model=ModelRef(model, model_options) if model is not None else None,
        limit=limit,
        embed_seed=embed_seed,
        dataset_options=given_dataset_options(input_column, label_column, dataset_revision),
        name=name,
        reporter=reporter,
    )
    path = save_anchor_manifest(store, manifest, out=out, force=force)
    progress.info(f"saved anchors {manifest.name!r}: {path}" + (f" and {out}" if out is not None else ""))
    render_manifest(manifest, path, json_output=json_output, given_dataset=dataset)


def render_manifest(manifest: "AnchorManifest", path: Path, *, json_output: bool, given_dataset: str | None = None) -> None:
    """Print the manifest with --json (exactly as saved), else a one-row summary table (a ``packaged:`` dataset by
    that name, as given, rather than the cache folder the manifest records)."""
    from stitchcli.cli.output import print_json, print_table
    from stitchcli.data.packaged import PACKAGED_PREFIX

    if json_output:
        print_json(manifest.to_dict())
        return
    counts = list(manifest.class_counts().values())
    covered = sum(1 for c in counts if c)
    print_table(
        "Anchors",
        ["name", "dataset", "split", "strategy", "num", "classes", "per class", "path"],
        [
            [
                manifest.name,
                given_dataset if given_dataset is not None and given_dataset.startswith(PACKAGED_PREFIX) else manifest.dataset,
                manifest.split,
                manifest.strategy if manifest.model is None else f"{manifest.strategy} ({manifest.model})",
                manifest.num,
                f"{covered}/{len(counts)}" if counts else "no labels",
                f"{min(counts)}-{max(counts)}" if counts else "",
                str(path),
            ]
        ],
        justify={"num": "right", "classes": "right", "per class": "right"},
        trailing="path",
    )
