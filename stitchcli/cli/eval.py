"""`stitchcli eval`: the N×N stitching matrix and the similarity tables for a set of models, or a recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from stitchcli import defaults
from stitchcli.cli import options as opt
from stitchcli.errors import UsageError


def eval_command(
    dataset: Annotated[Optional[str], typer.Option("--dataset", "-d", help="Dataset, as for embed (or give --recipe).", show_default=False)] = None,
    models: Annotated[
        Optional[str], typer.Option("--models", "-m", help="Comma-separated models (at least two): embed --model names or saved --name names.", show_default=False)
    ] = None,
    recipe: Annotated[
        Optional[Path], typer.Option("--recipe", "-r", help="A TOML recipe (recipes/*.toml): datasets, models, projections, aggregations, anchors, seeds.", show_default=False)
    ] = None,
    split: opt.EvalSplit = "test",
    train_split: opt.TrainSplit = "train",
    limit: opt.Limit = None,
    embed_seed: opt.EmbedSeed = 0,
    anchors: opt.Anchors = None,
    num_anchors: opt.NumAnchors = None,
    anchor_strategy: opt.AnchorStrategy = "uniform",
    anchor_seed: opt.AnchorSeed = 0,
    anchor_model: opt.AnchorModel = None,
    projection: opt.Projection = None,
    aggregation: Annotated[
        Optional[str],
        typer.Option("--aggregations", "--aggregation", "-a", help=f"Comma-separated aggregations: concat, sum, mlp-sum, self-attention, or all. (default: {defaults.AGGREGATION})", show_default=False),
    ] = None,
    transform: opt.Transform = None,
    seeds: opt.Seeds = "0,1,2",
    metrics: Annotated[str, typer.Option("--metrics", help="Comma-separated similarity measures: cka, jaccard, mrr, cosine (or none).")] = "cka,jaccard,mrr,cosine",
    k: Annotated[int, typer.Option("--k", help="Neighbours for Jaccard@k and MRR@k.")] = 10,
    baselines: opt.Baselines = None,
    ridge: opt.Ridge = None,
    epochs: opt.Epochs = 40,
    lr: opt.Lr = 1e-3,
    batch_size: opt.HeadBatchSize = 256,
    hidden: opt.Hidden = 512,
    dropout: opt.Dropout = 0.1,
    patience: opt.Patience = 5,
    weight_decay: opt.WeightDecay = 0.0,
    val_fraction: opt.ValFraction = 0.1,
    input_column: opt.InputColumn = None,
    label_column: opt.LabelColumn = None,
    dataset_revision: opt.DatasetRevision = None,
    csv_file: Annotated[Optional[Path], typer.Option("--csv", help="Also write the rows as CSV (and the similarity rows to FILE's stem + .similarity.csv).", show_default=False)] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write heatmap PNGs of every matrix and similarity measure into this folder.", show_default=False)] = None,
    device: opt.Device = "auto",
    embed_batch_size: opt.EmbedBatchSize = None,
    trust_remote_code: opt.TrustRemoteCode = False,
    cache_dir: opt.CacheDir = None,
    json_output: opt.Json = False,
    quiet: opt.Quiet = False,
) -> None:
    """Stitch every model into every other's head (N×N, per projection set and aggregation) and compare their spaces.

    Prints a summary (mean ± std over model pairs, as the paper reports), one matrix per setting (rows
    encoder, columns decoder) and the similarity table (CKA, Jaccard@k, MRR@k, cosine per projection, and
    the absolute latents' CKA). Missing embeddings, anchors and heads are built and cached.
    """
    from stitchcli.cli.output import progress_and_store
    from stitchcli.cli.report import render_eval, write_csv
    from stitchcli.cli.stitch import build_settings, split_list
    from stitchcli.models import ModelRef
    from stitchcli.stitching import evaluate

    options = dict(locals())
    from stitchcli.cli.output import check_output_path

    check_output_path(csv_file, "--csv")
    check_output_path(plot, "--plot", folder=True)
    if plot is not None:
        from stitchcli.plots import require_matplotlib

        require_matplotlib()  # before any work, not after it
        if plot.exists() and not plot.is_dir():
            raise UsageError(f"--plot {plot} is a file: give a folder for the heatmap PNGs")
    progress, store, reporter = progress_and_store(cache_dir, quiet)
    if recipe is not None:
        if dataset is not None or models is not None:
            raise UsageError("--recipe names the datasets and models itself: drop --dataset and --models (or drop --recipe)")
        from stitchcli.recipes import load_recipe, recipe_sweeps, validate_recipe

        loaded = load_recipe(recipe)
        validate_recipe(loaded, store)
        runs = recipe_sweeps(loaded, device=device, embed_batch_size=embed_batch_size, trust_remote_code=trust_remote_code)
    else:
        if dataset is None or models is None:
            raise UsageError("eval needs --dataset D and --models A,B (at least two), or --recipe FILE")
        refs = [ModelRef(name) for name in split_list(models, "--models") or ()]
        runs = [(refs, build_settings(options))]
    reports = []
    for refs, settings in runs:
        progress.info(f"eval: {len(refs)} models on {settings.dataset}")
        reports.append(evaluate(store, refs, settings, reporter=reporter))
    trained = sum(r.heads_trained for r in reports)
    cached = sum(r.heads_cached for r in reports)
    progress.info(f"{trained} head(s) trained, {cached} read from the cache, in {sum(r.seconds for r in reports):.1f} s")
    if csv_file is not None:
        for path in write_csv(csv_file, reports):
            progress.info(f"wrote {path}")
    if plot is not None:
        from stitchcli.plots import write_plots

        written = write_plots(plot, reports)
        progress.info(f"wrote {len(written)} heatmap(s) to {plot}")
    render_eval(reports, json_output=json_output, recipe=str(recipe) if recipe is not None else None)
