"""`stitchcli stitch ENCODER DECODER`: ENCODER's latents through DECODER's head, next to DECODER→DECODER."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from stitchcli.cli import options as opt
from stitchcli.cli.predict import MinAccuracy, SaveDir, SaveRow
from stitchcli.cli.settings_options import GivenSettings, takes_settings
from stitchcli.errors import UsageError
from stitchcli.settings import STITCH


@takes_settings(STITCH)
def stitch_command(
    encoder: Annotated[str, typer.Argument(metavar="ENCODER", help="Model whose latents are stitched in (any embed --model name, or a saved --name).", show_default=False)],
    decoder: Annotated[str, typer.Argument(metavar="DECODER", help="Model whose head reads them.", show_default=False)],
    dataset: opt.Dataset,
    head: Annotated[
        Optional[Path],
        typer.Option("--head", help="Use this head (from `fit-head --out`) as DECODER's; its anchors, projections, aggregation, seed and "
                     "training settings apply (options that differ from the head's are refused).", show_default=False),
    ] = None,
    plot: Annotated[
        Optional[Path],
        typer.Option("--plot", help="--task reconstruction: write a PNG grid into this folder: the original images, DECODER's own "
                     "reconstruction, then one row per stitched method (the same seeded test images in every row).", show_default=False),
    ] = None,
    save_outputs: Annotated[
        Optional[Path],
        typer.Option("--save-outputs", help="--task reconstruction: write every row's reconstructions (first seed) into this folder as "
                     "ENCODER--DECODER--METHOD.safetensors (images N×C×H×W in [0, 1], ids).", show_default=False),
    ] = None,
    save: SaveDir = None,
    save_row: SaveRow = None,
    min_accuracy: MinAccuracy = None,
    cache_dir: opt.CacheDir = None,
    json_output: opt.Json = False,
    quiet: opt.Quiet = False,
    *,
    given: GivenSettings,
) -> None:
    """Stitch ENCODER into DECODER's head: each projection and their product, beside DECODER→DECODER and the baselines.

    Whatever is missing (embeddings of both splits, anchors, heads) is built with the defaults and cached,
    so a second call only reads the cache.
    """
    from stitchcli.cli.output import progress_and_store
    from stitchcli.cli.report import check_reconstruction_outputs, write_reconstruction_outputs
    from stitchcli.cli.predict import check_stitch_outputs, save_and_check
    from stitchcli.cli.report import render_stitch, work_line
    from stitchcli.models import ModelRef

    settings = given.settings(dataset)
    keep = check_reconstruction_outputs(settings.task, plot, save_outputs)
    bar = check_stitch_outputs(save, save_row, min_accuracy, settings, head)
    if settings.task != "classification" and (save is not None or min_accuracy is not None):
        raise UsageError(f"--save and --min-accuracy apply to classification: drop them with --task {settings.task}")
    progress, store, reporter = progress_and_store(cache_dir, quiet)
    from stitchcli.stitching import stitch  # torch: after the options are checked, so a bad one is refused at once

    report = stitch(store, ModelRef(encoder), ModelRef(decoder), settings, head_file=head, explicit=given.explicit, reporter=reporter, keep=keep)
    progress.info(work_line([report]))
    write_reconstruction_outputs([report], plot, save_outputs, progress)
    render_stitch(report, json_output=json_output)
    save_and_check(store, ModelRef(encoder), ModelRef(decoder), settings, report, save=save, save_row=save_row, bar=bar, head_file=head,
                   explicit=given.explicit, progress=progress, reporter=reporter)
