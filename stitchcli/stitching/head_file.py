"""``fit-head``: one model's relative head, trained (or read from the cache) and optionally written to a file."""

from __future__ import annotations

from pathlib import Path

import torch

from stitchcli.errors import UsageError, out_of_space_as_work_error
from stitchcli.heads import FittedHead, head_digest, load_head, save_head
from stitchcli.models import ModelRef
from stitchcli.progress import Reporter
from stitchcli.settings import StitchSettings
from stitchcli.stitching.data import prepare, resolve_sweep_dataset
from stitchcli.stitching.features import product_values
from stitchcli.stitching.reconstruction import require_image_task
from stitchcli.stitching.heads_cache import HeadRequest, head_identity, obtain_head
from stitchcli.store import EmbeddingStore


def fit_head(
    store: EmbeddingStore,
    model: ModelRef,
    settings: StitchSettings,
    *,
    seed: int = 0,
    out: str | Path | None = None,
    force: bool = False,
    reporter: Reporter | None = None,
) -> tuple[FittedHead, bool, Path | None]:
    """Give (the relative head of ``model``, whether it came from the cache, the file it was also written to).

    The head reads all of ``settings.projections`` with ``settings.aggregations[0]``; it is cached like the
    heads ``stitch`` trains (so ``stitch`` reuses it) and also written to ``out`` (``.safetensors`` added
    when missing, the config beside it as ``.json``) when given. With ``settings.task`` reconstruction the head is
    a decoder that rebuilds the training images (:mod:`stitchcli.stitching.reconstruction`).
    """
    from stitchcli.device import resolve_device

    reporter = reporter or Reporter()
    if len(settings.aggregations) != 1:
        raise UsageError("fit-head trains one head: give one --aggregation")
    dataset = resolve_sweep_dataset(store, settings, [model.name], reporter)
    require_image_task(settings, dataset)
    data = prepare(store, [model], settings, dataset, reporter=reporter, evaluation=False)
    view = data.models[model.name]
    device = resolve_device(settings.device)
    projections = tuple(settings.projections)

    def features() -> torch.Tensor:
        return product_values(view.train.embeddings, view.anchors, projections, settings.transform, device)

    def train_features() -> torch.Tensor:
        reporter.info(
            f"training a {settings.aggregations[0]} {settings.task} head on {model.name}'s {','.join(projections)} product space "
            f"({view.train.rows} rows, {data.manifest.num} anchors)"
        )
        return features()

    request = HeadRequest("relative", projections, settings.aggregations[0], seed)
    if out is not None:
        _check_out_file(Path(out), head_digest(head_identity(data, view, request, settings)), force=force)
    head, hit = obtain_head(store, data, view, request, settings, train_features, device, reporter=reporter, force=force)
    written = None
    if out is not None:
        cached_path = head.path
        with out_of_space_as_work_error(out):
            written = save_head(out, head)
        head.path = cached_path
    return head, hit, written


def _check_out_file(out: Path, digest: str, *, force: bool) -> None:
    """Refuse an ``--out`` that is a folder, or a file holding another head (unless ``force``)."""
    if str(out).endswith(("/", "\\")) or out.expanduser().is_dir():
        raise UsageError(f"--out {out} is a folder: give a file name such as {Path(out) / 'head'}")
    target = out.expanduser()
    target = target if target.suffix == ".safetensors" else target.with_name(target.name + ".safetensors")
    if not target.exists() or force:
        return
    try:
        existing = load_head(target)
    except UsageError:
        raise UsageError(f"{target} exists and is not a stitchcli head: choose another --out, or pass --force to replace it") from None
    if existing.config.get("identity_digest") != digest:
        raise UsageError(
            f"{target} holds another head ({existing.config.get('model')} on {existing.config.get('dataset')}): "
            "choose another --out, or pass --force to replace it"
        )


