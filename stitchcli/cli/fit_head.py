"""`stitchcli fit-head`: train aggregation + head on one model's product space and save it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from stitchcli.cli import options as opt
from stitchcli.cli.settings_options import GivenSettings, takes_settings
from stitchcli.settings import FIT_HEAD


@takes_settings(FIT_HEAD)
def fit_head_command(
    model: Annotated[str, typer.Option("--model", "-m", help="Model whose training latents the head reads (any embed --model name, or a saved --name).", show_default=False)],
    dataset: opt.Dataset,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the initial weights, the validation part, shuffling and dropout.")] = 0,
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="Also write the head here (FILE.safetensors plus FILE.json); `stitch --head FILE` reads it.", show_default=False)
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Train again even when the cache holds this head.")] = False,
    cache_dir: opt.CacheDir = None,
    json_output: opt.Json = False,
    quiet: opt.Quiet = False,
    *,
    given: GivenSettings,
) -> None:
    """Train aggregation + head on MODEL's training split (a validation part picks the epoch) and save it.

    Missing embeddings and anchors are built with the defaults. The head is cached, so `stitch` reuses it.
    """
    from stitchcli.cli.output import check_output_path, print_json, print_table, progress_and_store
    from stitchcli.models import ModelRef

    check_output_path(out, "--out")
    settings = given.settings(dataset, anchor_model=model, seeds=(seed,))
    progress, store, reporter = progress_and_store(cache_dir, quiet)
    from stitchcli.stitching import fit_head  # torch: after the options are checked, so a bad one is refused at once

    head, cached, written = fit_head(store, ModelRef(model), settings, seed=seed, out=out, force=force, reporter=reporter)
    if cached:
        progress.info(f"read the head from the cache: {head.path} (--force trains it again)")
    else:
        progress.info(f"saved the head: {head.path}")
    if written is not None:
        progress.info(f"wrote {written} and {written.with_suffix('.json')}")
    config = head.config
    training = head.training
    if json_output:
        anchors = {key: config["anchors"][key] for key in ("name", "num", "strategy", "seed", "split", "limit")}
        print_json({**config, "anchors": anchors, "path": str(head.path), "out": str(written) if written is not None else None, "cached": cached})
        return
    # a reconstruction head's record holds mean squared errors where a classifier's holds accuracies
    scores = ("train MSE", "val MSE", "train_mse", "val_mse", "{:.4f}", 1) if head.task == "reconstruction" else \
        ("train acc", "val acc", "train_accuracy", "val_accuracy", "{:.1f}", 100)
    print_table(
        f"{'Reconstruction head' if head.task == 'reconstruction' else 'Head'} of {model} on {dataset} ({config['num_anchors']} anchors {config['anchors']['name']!r}; seed {seed})",
        ["projections", "aggregation", "transform", scores[0], scores[1], "epochs", "best epoch", "rows (train/val)", "path"],
        [[
            "+".join(config["projections"]),
            config["aggregation"],
            config["transform"],
            scores[4].format(scores[5] * training[scores[2]]),
            scores[4].format(scores[5] * training[scores[3]]),
            training["epochs_run"],
            training["best_epoch"],
            f"{training['train_rows']}/{training['val_rows']}",
            str(written or head.path),
        ]],
        justify={scores[0]: "right", scores[1]: "right", "epochs": "right", "best epoch": "right"},
        trailing="path",
    )
