"""`stitchcli eval`: the N×N stitching matrix and the similarity tables for a set of models, or a recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from stitchcli.cli import options as opt
from stitchcli.cli.settings_options import REPEATABLE, GivenSettings, names_a_path, split_list, takes_settings
from stitchcli.settings import EVAL
from stitchcli.errors import UsageError


@takes_settings(EVAL)
def eval_command(
    dataset: Annotated[Optional[str], typer.Option("--dataset", "-d", help="Dataset, as for embed (or give --recipe).", show_default=False)] = None,
    models: Annotated[
        Optional[List[str]],
        typer.Option("--models", "-m", help=f"Comma-separated models (at least two): embed --model names or saved --name names. {REPEATABLE}", show_default=False),
    ] = None,
    recipe: Annotated[
        Optional[Path], typer.Option("--recipe", "-r", help="A TOML recipe (recipes/*.toml): datasets, models, projections, aggregations, anchors, seeds.", show_default=False)
    ] = None,
    csv_file: Annotated[Optional[Path], typer.Option("--csv", help="Also write the rows as CSV (and the similarity rows to FILE's stem + .similarity.csv).", show_default=False)] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write heatmap PNGs of every matrix and similarity measure into this folder "
                                                 "(--task reconstruction: also one grid of reconstructions per encoder→decoder pair).", show_default=False)] = None,
    save_outputs: Annotated[
        Optional[Path],
        typer.Option("--save-outputs", help="--task reconstruction: write every row's reconstructions (first seed) into this folder as "
                     "ENCODER--DECODER--METHOD.safetensors (images N×C×H×W in [0, 1], ids).", show_default=False),
    ] = None,
    cache_dir: opt.CacheDir = None,
    json_output: opt.Json = False,
    quiet: opt.Quiet = False,
    *,
    given: GivenSettings,
) -> None:
    """Stitch every model into every other's head (N×N, per projection set and aggregation) and compare their spaces.

    Prints a summary (mean ± std over model pairs, as the paper reports), one matrix per setting (rows
    encoder, columns decoder) and the similarity table (CKA, Jaccard@k, MRR@k, cosine per projection, and
    the absolute latents' CKA). Missing embeddings, anchors and heads are built and cached.
    """
    from stitchcli.cli.output import check_output_path, progress_and_store
    from stitchcli.cli.report import check_reconstruction_outputs, render_eval, work_line, write_csv, write_reconstruction_outputs
    from stitchcli.models import ModelRef
    from stitchcli.settings import by_name

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
        in_recipes = sorted(by_name(name).flag for name in given.explicit if by_name(name).option.recipe is not None)
        if in_recipes:
            raise UsageError(f"--recipe decides {', '.join(in_recipes)}: write them in the recipe, or drop --recipe")
        from stitchcli.recipes import load_recipe, recipe_sweeps, validate_recipe

        loaded = load_recipe(recipe)
        validate_recipe(loaded, store)
        runtime = {name: value for name, value in given.values.items() if by_name(name).option.recipe is None}
        runs = recipe_sweeps(loaded, runtime)
    else:
        if dataset is None or models is None:
            raise UsageError("eval needs --dataset D and --models A,B (at least two), or --recipe FILE")
        refs = [ModelRef(name) for name in split_list(models, "--models", whole=names_a_path) or ()]
        runs = [(refs, given.settings(dataset))]
    keeps = [check_reconstruction_outputs(settings.task, plot, save_outputs, plot_is_heatmaps=True) for _, settings in runs]
    from stitchcli.stitching import evaluate  # torch: after the options are checked, so a bad one is refused at once

    reports = []
    for (refs, settings), keep in zip(runs, keeps):
        progress.info(f"eval: {len(refs)} models on {settings.dataset}")
        reports.append(evaluate(store, refs, settings, reporter=reporter, keep=keep))
    progress.info(work_line(reports))
    if csv_file is not None:
        for path in write_csv(csv_file, reports):
            progress.info(f"wrote {path}")
    if plot is not None:
        from stitchcli.plots import write_plots

        written = write_plots(plot, reports)
        progress.info(f"wrote {len(written)} heatmap(s) to {plot}")
    write_reconstruction_outputs(reports, plot, save_outputs, progress)
    render_eval(reports, json_output=json_output, recipe=str(recipe) if recipe is not None else None)
