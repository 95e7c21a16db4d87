"""`stitchcli stitch ENCODER DECODER`: ENCODER's latents through DECODER's head, next to DECODER→DECODER."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Mapping, Optional

import typer

from stitchcli import defaults
from stitchcli.cli import options as opt
from stitchcli.errors import UsageError

if TYPE_CHECKING:
    from stitchcli.stitching import StitchSettings


def split_list(value: str | None, option: str) -> tuple[str, ...] | None:
    """Give the comma-separated names of an option (None when not given); UsageError when empty."""
    if value is None:
        return None
    names = tuple(part.strip() for part in value.split(","))
    if not any(names):
        raise UsageError(f"{option} is empty: give comma-separated values")
    if not all(names):
        raise UsageError(f"{option} {value!r} has an empty value between commas")
    return names


def parse_seeds(value: str, option: str = "--seeds") -> tuple[int, ...]:
    """Give the comma-separated integers of ``--seeds``."""
    try:
        return tuple(int(part) for part in split_list(value, option) or ())
    except ValueError:
        raise UsageError(f"{option} must be comma-separated integers like 0,1,2, not {value!r}") from None


SETTINGS_OPTIONS = (
    "dataset", "split", "train_split", "limit", "embed_seed", "anchors", "num_anchors", "anchor_strategy", "anchor_seed",
    "anchor_model", "projection", "aggregation", "transform", "seeds", "baselines", "ridge", "metrics", "k", "device",
    "embed_batch_size", "input_column", "label_column", "dataset_revision", "trust_remote_code",
)
HEAD_OPTIONS = ("hidden", "dropout", "epochs", "lr", "batch_size", "weight_decay", "val_fraction", "patience")


def build_settings(options: Mapping[str, Any], **overrides: Any) -> "StitchSettings":
    """Give the StitchSettings of a command's options (its ``locals()``), ``overrides`` applied on top.

    Only the names in :data:`SETTINGS_OPTIONS` and :data:`HEAD_OPTIONS` are read. Values that were not given
    (None) keep the library's defaults; ``all`` names every projection (or aggregation), ``none`` no baseline
    or metric.
    """
    from stitchcli.heads import HeadSettings
    from stitchcli.relative import DEFAULT_PROJECTIONS, list_aggregations
    from stitchcli.stitching import StitchSettings

    given = {key: value for key, value in {**options, **overrides}.items() if key in SETTINGS_OPTIONS + HEAD_OPTIONS}
    head = HeadSettings(**{key: given.pop(key) for key in HEAD_OPTIONS if key in given})
    lists: dict[str, Any] = {}
    for option, field_name, every in (
        ("projection", "projections", DEFAULT_PROJECTIONS),
        ("aggregation", "aggregations", tuple(list_aggregations())),
        ("baselines", "baselines", None),
        ("metrics", "metrics", None),
    ):
        names = split_list(given.pop(option, None), f"--{option}")
        if names == ("all",) and every is not None:
            names = every
        if names == ("none",) and every is None:
            names = ()
        if names is not None:
            lists[field_name] = tuple(names)
    dataset_options = {key: given.pop(key) for key in ("input_column", "label_column", "dataset_revision") if key in given}
    if "seeds" in given:
        given["seeds"] = parse_seeds(given["seeds"])
    settings = StitchSettings(
        head=head,
        dataset_options={key: value for key, value in dataset_options.items() if value is not None},
        **lists,
        **{key: value for key, value in given.items() if value is not None},
    )
    settings.check()
    return settings


# What a head file fixes: its anchors' draw, its training settings and its seed (--anchors is checked against it).
HEAD_FIXES = (
    "seeds", "limit", "embed_seed", "num_anchors", "anchor_strategy", "anchor_seed", "anchor_model", "train_split",
    *HEAD_OPTIONS,
)


def _refuse_options_the_head_fixes(given: Mapping[str, Any]) -> None:
    """Refuse options that a --head file decides itself (rather than ignoring them silently)."""
    import inspect

    defaults = {name: p.default for name, p in inspect.signature(stitch_command).parameters.items()}
    changed = [name for name in HEAD_FIXES if given.get(name) != defaults[name]]
    if changed:
        flags = ", ".join("--" + name.replace("_", "-") for name in changed)
        raise UsageError(f"--head fixes the anchors, training settings and seed of the head: drop {flags}")


def stitch_command(
    encoder: Annotated[str, typer.Argument(help="Model whose latents are stitched in (any embed --model name, or a saved --name).", show_default=False)],
    decoder: Annotated[str, typer.Argument(help="Model whose head reads them.", show_default=False)],
    dataset: opt.Dataset,
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
        Optional[str], typer.Option("--aggregation", "-a", help=f"Comma-separated aggregations: concat, sum, mlp-sum, self-attention, or all. (default: {defaults.AGGREGATION})", show_default=False)
    ] = None,
    transform: opt.Transform = None,
    seeds: opt.Seeds = "0,1,2",
    head: Annotated[
        Optional[Path],
        typer.Option("--head", help="Use this head (from `fit-head --out`) as DECODER's; its anchors, projections and aggregation apply.", show_default=False),
    ] = None,
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
    device: opt.Device = "auto",
    embed_batch_size: opt.EmbedBatchSize = None,
    trust_remote_code: opt.TrustRemoteCode = False,
    cache_dir: opt.CacheDir = None,
    json_output: opt.Json = False,
    quiet: opt.Quiet = False,
) -> None:
    """Stitch ENCODER into DECODER's head: each projection and their product, beside DECODER→DECODER and the baselines.

    Whatever is missing (embeddings of both splits, anchors, heads) is built with the defaults and cached,
    so a second call only reads the cache.
    """
    from stitchcli.cli.output import progress_and_store
    from stitchcli.cli.report import render_stitch
    from stitchcli.models import ModelRef
    from stitchcli.stitching import stitch

    explicit = {"projections": split_list(projection, "--projection"), "aggregation": aggregation, "transform": transform}
    settings = build_settings(locals())
    if head is not None:
        _refuse_options_the_head_fixes(locals())
    if head is not None and explicit["projections"] == ("all",):
        from stitchcli.relative import DEFAULT_PROJECTIONS

        explicit["projections"] = DEFAULT_PROJECTIONS
    progress, store, reporter = progress_and_store(cache_dir, quiet)
    report = stitch(store, ModelRef(encoder), ModelRef(decoder), settings, head_file=head, explicit=explicit, reporter=reporter)
    progress.info(f"{report.heads_trained} head(s) trained, {report.heads_cached} read from the cache, in {report.seconds:.1f} s")
    render_stitch(report, json_output=json_output)
