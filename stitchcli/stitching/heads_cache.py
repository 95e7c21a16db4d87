"""Heads of a sweep: each identified by what it reads and how it was trained, cached, trained once when missing."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from stitchcli.errors import UsageError, out_of_space_as_work_error
from stitchcli.heads import DEFAULT_TASK, HEAD_FORMAT, FittedHead, build_classifier, head_digest, load_head, save_head, train_classifier
from stitchcli.progress import Reporter
from stitchcli.provenance import library_versions
from stitchcli.settings import StitchSettings
from stitchcli.stitching.data import ModelView, SweepData
from stitchcli.store import EmbeddingStore, file_lock, remove_interrupted_writes, slug

if TYPE_CHECKING:
    from stitchcli.reconstruction.targets import PixelTargets

HEADS_FOLDER = "heads"
@dataclass
class HeadRequest:
    """What one head is: the decoder, its inputs (relative or absolute) and the training seed."""

    kind: str
    projections: tuple[str, ...]
    aggregation: str | None
    seed: int


def head_identity(data: SweepData, view: ModelView, request: HeadRequest, settings: StitchSettings) -> dict[str, Any]:
    identity: dict[str, Any] = {
        "kind": request.kind,
        "model_entry": view.train.metadata.get("key_digest"),
        "settings": settings.head.to_dict(),
        "seed": request.seed,
    }
    if settings.task != DEFAULT_TASK:  # classification identities stay as they were, so cached heads still match
        from stitchcli.stitching.reconstruction import decoder_identity

        identity.update(decoder_identity())
    if request.kind == "relative":
        identity.update(
            anchors={k: v for k, v in data.manifest.selection().items() if k not in ("notes", "params", "name")},
            projections=list(request.projections),
            aggregation=request.aggregation,
            transform=settings.transform,
        )
    return identity


def head_cache_path(store: EmbeddingStore, model: str, dataset_id: str, kind: str, digest: str) -> Path:
    """Give where a head with this identity digest is cached."""
    return store.root / HEADS_FOLDER / slug(model) / slug(dataset_id) / f"{kind}-{digest}.safetensors"


def obtain_head(
    store: EmbeddingStore,
    data: SweepData,
    view: ModelView,
    request: HeadRequest,
    settings: StitchSettings,
    features: Callable[[], torch.Tensor],
    device: torch.device,
    *,
    reporter: Reporter,
    force: bool = False,
    targets: Callable[[], PixelTargets] | None = None,
) -> tuple[FittedHead, bool]:
    """Give (the head, whether it came from the cache): read when cached, else trained and saved.

    ``features`` gives the decoder's training features the head reads ((N, n, k) or (N, D)); it is called
    only when the head must be trained. The head is a classifier or, for ``settings.task`` reconstruction, a
    decoder trained to rebuild the training rows' images, which ``targets`` gives (default: read from the dataset).
    """
    identity = head_identity(data, view, request, settings)
    digest = head_digest(identity)
    path = head_cache_path(store, view.name, data.dataset_id, request.kind, digest)
    cached = None if force else _cached_head(path, digest, device, reporter)
    if cached is not None:
        return cached, True
    # One process trains a head at a time: another that needs it waits, then reads it (a read-only cache
    # that holds the head never gets here, so it is never locked).
    lock = path.with_suffix(".lock")
    with file_lock(lock, on_wait=lambda: reporter.info(f"waiting for another process training the same head ({lock})")) as locked:
        cached = None if force else _cached_head(path, digest, device, reporter, quiet=True)
        if cached is not None:
            return cached, True
        if locked:  # temporary files of a killed training; every writer holds the lock, so none is live
            remove_interrupted_writes(path)
            remove_interrupted_writes(path.with_suffix(".json"))
        x = features()
        what = "+".join(request.projections) + f" [{request.aggregation}]" if request.kind == "relative" else "absolute"
        extra: dict[str, Any] = {}
        if settings.task != DEFAULT_TASK:
            from stitchcli.stitching.reconstruction import train_reconstruction_head, train_targets

            module, record, extra = train_reconstruction_head(
                data, view, request, settings, x, targets() if targets is not None else train_targets(data, view, settings.train_split), device,
                reporter=reporter, what=what,
            )
        else:
            module, record = _train_classification_head(data, view, request, settings, x, device, reporter=reporter, what=what)
        train_key = view.train.metadata["key"]
        config = {
            "format": HEAD_FORMAT,
            "kind": request.kind,
            "identity_digest": digest,
            "model": view.name,
            "model_options": dict(view.ref.options),
            "model_entry": view.train.metadata.get("key_digest"),
            "model_key": train_key,
            "dataset": settings.dataset,
            "dataset_id": data.dataset_id,
            "dataset_fingerprint": data.dataset_fingerprint,
            "train_split": settings.train_split,
            "limit": settings.limit,
            "num_classes": data.num_classes,
            "class_names": data.class_names,
            "anchors": data.manifest.to_dict() if request.kind == "relative" else None,
            "projections": list(request.projections),
            "aggregation": request.aggregation,
            "transform": settings.transform if request.kind == "relative" else None,
            "num_anchors": data.manifest.num if request.kind == "relative" else None,
            "input_dim": view.dim if request.kind == "absolute" else None,
            **extra,
            "settings": settings.head.to_dict(),
            "seed": request.seed,
            "training": record,
            "versions": library_versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        head = FittedHead(module, config)
        with out_of_space_as_work_error(path):
            save_head(path, head)
        return head, False


def head_shape(data: SweepData, request: HeadRequest, x: torch.Tensor) -> dict[str, Any]:
    """Give the shape arguments of a head (classifier or decoder) for ``request`` reading the features ``x``."""
    return {
        "input_dim": int(x.shape[-1]) if request.kind == "absolute" else None,
        "aggregation": request.aggregation,
        "num_subspaces": len(request.projections) or None,
        "num_anchors": data.manifest.num if request.kind == "relative" else None,
        "seed": request.seed,
    }


def _train_classification_head(
    data: SweepData, view: ModelView, request: HeadRequest, settings: StitchSettings, x: torch.Tensor, device: torch.device, *, reporter: Reporter, what: str
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Give (the trained classifier, its training record) of one head request."""
    module = build_classifier(request.kind, data.num_classes, settings.head, **head_shape(data, request, x))
    record = train_classifier(
        module, x, data.train_labels, settings.head, seed=request.seed, device=device,
        progress=lambda epoch, point: reporter.status(
            f"training {view.name}'s {what} head, seed {request.seed}: epoch {epoch} of at most {settings.head.epochs}, "
            f"validation accuracy {100 * point['val_accuracy']:.1f}%"
        ),
    )
    return module, record.to_dict()


def _cached_head(path: Path, digest: str, device: torch.device, reporter: Reporter, *, quiet: bool = False) -> FittedHead | None:
    """Give the head cached at ``path`` when it is there, intact and made for ``digest``; else None (with a
    warning why, unless ``quiet``: the caller has looked once already)."""
    if not path.is_file():
        return None
    try:
        head = load_head(path, device=device)
    except UsageError as exc:
        if not quiet:
            reporter.warn(f"{exc}; training it again")
        return None
    if head.config.get("identity_digest") == digest:
        return head
    if not quiet:
        reporter.warn(f"cached head {path} was made for other inputs; training it again")
    return None


