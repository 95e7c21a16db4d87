"""`stitchcli demo`: the offline demo, stitching real packaged models on real packaged data."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from stitchcli.cli import options as opt


def demo_command(
    limit: Annotated[
        Optional[int],
        typer.Option(help="Rows per split: a seeded, class-stratified subset, the same for every model. (default: the recipe's 300)", show_default=False),
    ] = None,
    full: Annotated[bool, typer.Option("--full", help="Use every row (BBC News 1780/445, MNIST 4000/1000; MPNet makes this take about an hour on 2 cores).")] = False,
    embed_batch_size: opt.EmbedBatchSize = None,
    device: opt.Device = "auto",
    cache_dir: opt.CacheDir = None,
    json_output: opt.Json = False,
    quiet: opt.Quiet = False,
) -> None:
    """Stitch MiniLM <-> MPNet on BBC News and EfficientNet-Lite0 <-> Lite2 on MNIST, offline (needs the `demo` extra).

    Runs recipes/offline-demo.toml: the packaged weights and data become cache entries on first use,
    then both directions of each pair are stitched (each projection, their product, the baselines) and
    the similarity table is printed. A second run reads everything from the cache.
    """
    from stitchcli.cli.output import progress_and_store
    from stitchcli.cli.report import render_eval, work_line
    from stitchcli.demo import demo_recipe_path
    from stitchcli.errors import UsageError
    from stitchcli.recipes import load_recipe, recipe_sweeps
    from stitchcli.stitching import evaluate

    if full and limit is not None:
        raise UsageError("--full uses every row and --limit a subset: give one of the two")
    progress, store, reporter = progress_and_store(cache_dir, quiet)
    recipe = load_recipe(demo_recipe_path())
    sweeps = recipe_sweeps(recipe, {"device": device, "embed_batch_size": embed_batch_size}, limit=None if full else (limit or "recipe"))
    reports = []
    for models, settings in sweeps:
        progress.info(f"demo: {' <-> '.join(m.name for m in models)} on {settings.dataset}")
        reports.append(evaluate(store, models, settings, reporter=reporter))
    progress.info(work_line(reports))
    render_eval(reports, json_output=json_output, recipe=str(recipe.path))
    if not json_output and not quiet:
        progress.info("next: `stitchcli stitch lite0 lite2 -d packaged:mnist5k --limit 300` (cached now), or `stitchcli eval --recipe recipes/offline-demo.toml --plot plots/`")
